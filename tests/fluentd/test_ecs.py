"""The ECS side of fluentd-config/: which fields it writes, and what its Ruby expressions produce.

The field-name checks run everywhere. The expression checks run the record_transformer
expressions with a real Ruby (record_transformer.rb mirrors Fluentd's evaluation) and are
skipped, with the reason, when `ruby` is not on the PATH.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
from fluentd_conf import CONFIG_DIR, HERE, Directive, effective, parse_file

from rpcscope import schema

ECS_FIELDS = {
    line.strip()
    for line in (HERE / "ecs_fields.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
}
# Non-ECS trees the input plugins and kubernetes_metadata add; the config must drop them.
NON_ECS_KEYS = {"kubernetes", "docker", "stream", "logtag"}


def _transformers(root: Directive) -> dict[str, Directive]:
    """record_transformers that shape documents (not the dead-letter's, on Fluentd's own log)."""
    return {
        d.params["@id"]: d
        for d in root.walk()
        if d.name == "filter"
        and d.type == "record_transformer"
        and not d.arg.startswith("fluent.")
    }


def _written_fields(root: Directive) -> set[str]:
    fields: set[str] = set()
    for t in _transformers(root).values():
        record = t.child("record")
        assert record is not None
        fields |= set(record.params)
    for d in root.walk():
        if d.type == "elasticsearch_genid":
            fields.add(d.params["hash_id_key"])
        if d.type == "tail" and "path_key" in d.params:
            fields.add(d.params["path_key"])
        if d.type == "elasticsearch" and d.params.get("include_timestamp") == "true":
            fields.add("@timestamp")
    return fields


def test_config_writes_exactly_the_listed_ecs_fields() -> None:
    written = _written_fields(parse_file(CONFIG_DIR / "daemonset.conf")) | _written_fields(
        parse_file(CONFIG_DIR / "aggregator.conf")
    )
    assert written - ECS_FIELDS == set(), "fields written that are not in ecs_fields.txt"
    assert ECS_FIELDS - written == set(), "ecs_fields.txt lists fields the config no longer writes"


def test_kubernetes_trees_are_removed_after_mapping() -> None:
    t = _transformers(parse_file(CONFIG_DIR / "daemonset.conf"))["filter_kubernetes_to_ecs"]
    assert set(t.params["remove_keys"].split(",")) == NON_ECS_KEYS


def test_no_record_key_uses_fluentds_reserved_at_prefix() -> None:
    """Fluentd warns on (and a later Fluentd rejects) parameters named "@..." it does not know;
    @timestamp comes from the Elasticsearch output's include_timestamp instead."""
    for entry in ("daemonset.conf", "aggregator.conf"):
        root = parse_file(CONFIG_DIR / entry)
        for t in _transformers(root).values():
            record = t.child("record")
            assert record is not None
            assert not [k for k in record.params if k.startswith("@")], t.source
        [es] = [d for d in root.walk() if d.name == "match" and d.type == "elasticsearch"]
        assert es.params["include_timestamp"] == "true"


def test_cri_time_string_is_not_kept_as_a_field() -> None:
    root = parse_file(CONFIG_DIR / "daemonset.conf")
    [tail] = [d for d in root.walk() if d.name == "source" and d.type == "tail"]
    parse = tail.child("parse")
    assert parse is not None and parse.type == "cri"
    assert parse.params["keep_time_key"] == "false"


def test_defaults_follow_the_frozen_schema() -> None:
    t = _transformers(parse_file(CONFIG_DIR / "aggregator.conf"))["filter_data_stream_fields"]
    record = t.child("record")
    assert record is not None
    assert f'"{schema.ECS_VERSION}"' in record.params["ecs.version"]
    assert f'== "{schema.ACCESS_LOGGER}"' in record.params["data_stream.dataset"]
    assert record.params["event.dataset"] == record.params["data_stream.dataset"]


# --- evaluating the expressions ------------------------------------------------------------------

RUBY = shutil.which("ruby")
needs_ruby = pytest.mark.skipif(
    RUBY is None,
    reason="ruby is not installed: the record_transformer expressions are not evaluated",
)
needs_ruby_msgpack = pytest.mark.skipif(
    RUBY is None
    or subprocess.run([RUBY, "-rmsgpack", "-e", ""], capture_output=True, check=False).returncode,
    reason="ruby or its msgpack library (Debian ruby-msgpack) is missing: the document-id "
    "expression is not evaluated",
)


def _run(
    sample: str | dict[str, Any], filter_ids: list[str], env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run `sample` (a file in samples/ or a payload) through the named record_transformers."""
    root = parse_file(CONFIG_DIR / "daemonset.conf")
    transformers = _transformers(root)
    filters = []
    for fid in filter_ids:
        t = transformers[fid]
        record = t.child("record")
        assert record is not None
        filters.append(
            {
                # Config-time "#{ENV[...] || ...}" defaults are resolved first, as Fluentd does
                # when it reads the file; the ${...} placeholders run per record in Ruby.
                "map": {k: effective(v, env) for k, v in record.params.items()},
                "remove_keys": [k for k in t.params.get("remove_keys", "").split(",") if k],
            }
        )
    payload = dict(
        json.loads((HERE / "samples" / sample).read_text()) if isinstance(sample, str) else sample
    )
    payload["filters"] = filters
    assert RUBY is not None
    out = subprocess.run(
        [RUBY, str(HERE / "record_transformer.rb")],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


TAILER_CHAIN = ["filter_kubernetes_to_ecs", "filter_data_stream_fields"]


@needs_ruby
def test_access_log_record_maps_to_ecs_and_the_access_data_stream() -> None:
    sample = json.loads(
        (HERE / "samples" / "access_log_after_kubernetes_metadata.json").read_text()
    )
    out = _run(
        "access_log_after_kubernetes_metadata.json",
        TAILER_CHAIN,
        {"FLUENT_CLUSTER_NAME": "prod-eu"},
    )
    assert NON_ECS_KEYS.isdisjoint(out)
    assert out["orchestrator.type"] == "kubernetes"
    assert out["orchestrator.cluster.name"] == "prod-eu"
    assert out["orchestrator.namespace"] == "default"
    assert out["orchestrator.resource.type"] == "pod"
    assert out["orchestrator.resource.name"] == "shop-7d9f"
    assert out["orchestrator.resource.ip"] == "10.0.3.9"
    assert sorted(out["orchestrator.resource.label"]) == [
        "app_kubernetes_io/name:shop",
        "pod-template-hash:7d9f",
    ]
    assert out["container.name"] == "shop"
    assert out["container.id"] == sample["record"]["docker"]["container_id"]
    assert out["container.image.name"] == "registry.example/shop:1.4.2"
    assert out["host.name"] == "node-a"
    # The service's own ECS fields win over anything derived from Kubernetes.
    assert out["service.name"] == "shop"
    assert out["@timestamp"] == "2026-11-26T04:06:40.123456Z"
    assert out["ecs.version"] == schema.ECS_VERSION
    assert out["data_stream.dataset"] == out["event.dataset"] == schema.ACCESS_LOGGER
    assert (out["data_stream.type"], out["data_stream.namespace"]) == ("logs", "default")
    # Every access-log field survives untouched, and nothing outside ECS + the access log appears.
    for name in schema.ACCESS_LOG_FIELDS:
        if name != "host.name":
            assert out[name] == sample["record"][name], name
    assert set(out) <= ECS_FIELDS | set(schema.ACCESS_LOG_FIELDS)


@needs_ruby
def test_plain_text_line_gets_fallbacks_and_the_app_data_stream() -> None:
    out = _run(
        "plain_line_after_kubernetes_metadata.json",
        TAILER_CHAIN,
        {"FLUENT_DATA_STREAM_NAMESPACE": "prod"},
    )
    assert NON_ECS_KEYS.isdisjoint(out)
    assert out["message"] == "Traceback (most recent call last):"
    assert out["service.name"] == "legacy"  # from the pod's `app` label
    assert out["orchestrator.resource.label"] == ["app:legacy"]
    assert out["orchestrator.resource.ip"] is None  # no pod IP known: null, which ES skips
    assert out["data_stream.dataset"] == "rpcscope.app"
    assert out["data_stream.namespace"] == "prod"
    assert out["ecs.version"] == schema.ECS_VERSION
    assert out["labels.stream"] == "stderr"
    # No @timestamp in the line: the Elasticsearch output adds the event time (include_timestamp,
    # checked end to end in test_pipeline.py).
    assert "@timestamp" not in out
    assert set(out) - {"message"} <= ECS_FIELDS


@needs_ruby
def test_nested_ecs_logger_is_recognised_and_not_duplicated() -> None:
    """ecs-logging style records nest fields ({"log": {"logger": ...}}); both shapes route alike."""
    nested = {
        "tag": "rpcscope.access",
        "time": 1764130000,
        "record": {
            "@timestamp": "2026-11-26T04:06:40Z",
            "log": {"logger": schema.ACCESS_LOGGER, "level": "info"},
            "ecs": {"version": "8.11.0"},
            "service": {"name": "shop"},
        },
    }
    out = _run(nested, ["filter_data_stream_fields"])
    assert out["data_stream.dataset"] == schema.ACCESS_LOGGER
    assert out["ecs.version"] is None  # the nested ecs.version is kept; no second flat copy
    assert out["ecs"] == {"version": "8.11.0"}
    assert out["@timestamp"] == "2026-11-26T04:06:40Z"


@needs_ruby
def test_nested_service_name_is_not_duplicated_by_the_fallback() -> None:
    sample = json.loads(
        (HERE / "samples" / "plain_line_after_kubernetes_metadata.json").read_text()
    )
    sample["record"]["service"] = {"name": "payments-worker"}
    out = _run(sample, TAILER_CHAIN)
    assert out["service"] == {"name": "payments-worker"}
    assert out["service.name"] is None


@needs_ruby
def test_readme_example_is_what_the_config_produces() -> None:
    """The worked example in fluentd-config/README.md is checked, key by key, against a real run."""
    readme = (CONFIG_DIR / "README.md").read_text()
    section = readme.split("### Example", 1)[1]
    block = re.search(r"```json\n(.*?)```", section, flags=re.S)
    assert block is not None, "README lost its ### Example json block"
    example = json.loads(block.group(1))
    out = _run("access_log_after_kubernetes_metadata.json", TAILER_CHAIN)
    for key, value in example.items():
        assert out.get(key) == value, key
    assert f"logs-{out['data_stream.dataset']}-{out['data_stream.namespace']}" in section


# --- document ids ----------------------------------------------------------------------------

FORWARD_TAG = "rpcscope.access"
TAIL_ONLY = ("stream", "logtag", "log.file.path")


def _as_tailed_and_forwarded() -> tuple[dict[str, Any], dict[str, Any]]:
    """One access-log record as the document-id filter sees it on each path.

    Tailed: after JSON parsing, before Kubernetes metadata (so with the tail input's stream,
    logtag and log.file.path); forwarded: exactly what the application sent, under another tag
    and another event time.
    """
    sample = json.loads(
        (HERE / "samples" / "access_log_after_kubernetes_metadata.json").read_text()
    )
    record = {k: v for k, v in sample["record"].items() if k not in ("kubernetes", "docker")}
    tailed = {"tag": sample["tag"], "time": sample["time"], "record": record}
    app = {k: v for k, v in record.items() if k not in TAIL_ONLY}
    forwarded = {"tag": FORWARD_TAG, "time": sample["time"] + 0.25, "record": app}
    return tailed, forwarded


def _id(payload: dict[str, Any]) -> str:
    event_id: str = _run(payload, ["filter_document_id"])["event.id"]
    return event_id


def test_document_id_is_computed_before_anything_is_added() -> None:
    """Tailer: after JSON parsing, before kubernetes_metadata; aggregator: after in_forward."""
    order = [
        d.params.get("@id")
        for d in parse_file(CONFIG_DIR / "daemonset.conf").walk()
        if d.name == "filter"
    ]
    assert order.index("filter_parse_json_payload") < order.index("filter_document_id")
    assert order.index("filter_document_id") < order.index("filter_kubernetes_metadata")
    root = parse_file(CONFIG_DIR / "aggregator.conf")
    [forward] = [d for d in root.walk() if d.name == "source" and d.type == "forward"]
    [label] = [d for d in root.children if d.name == "label" and d.arg == forward.params["@label"]]
    assert [d.params["@id"] for d in label.children if d.name == "filter"] == ["filter_document_id"]
    assert not [d for d in root.walk() if d.type == "elasticsearch_genid"]


@needs_ruby_msgpack
def test_a_record_tailed_or_forwarded_or_resent_gets_one_document_id() -> None:
    tailed, forwarded = _as_tailed_and_forwarded()
    event_id = _id(tailed)
    assert re.fullmatch(r"[0-9a-f]{64}", event_id)
    assert _id(forwarded) == event_id
    # Key order does not matter, and an event.id sent by the sender is replaced.
    shuffled = dict(reversed(list(forwarded["record"].items())))
    assert _id(forwarded | {"record": shuffled | {"event.id": "chosen-by-sender"}}) == event_id


@needs_ruby_msgpack
def test_different_records_get_different_document_ids() -> None:
    _, forwarded = _as_tailed_and_forwarded()
    other = forwarded["record"] | {"span.id": "00f067aa0ba902b8"}
    assert _id(forwarded | {"record": other}) != _id(forwarded)
    # A line without its own @timestamp is told apart by its event time (the CRI time).
    line = {"tag": "kubernetes.x", "time": 1764130001.5, "record": {"message": "retrying"}}
    assert _id(line) == _id(line | {"tag": "kubernetes.y"})
    assert _id(line | {"time": 1764130001.500001}) != _id(line)
