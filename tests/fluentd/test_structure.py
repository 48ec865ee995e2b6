"""Structural checks of fluentd-config/: the guarantees README.md promises, checked on the files.

Each rule is also run against a copy of the config with the guarantee removed, so a rule that
silently stopped looking would fail here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from fluentd_checks import (
    all_problems,
    check_buffers,
    check_elasticsearch_outputs,
    check_file_outputs,
    check_forward_sources,
    check_labels,
    check_secondaries,
    check_tls_version_bounds,
)
from fluentd_conf import (
    CONFIG_DIR,
    ENTRY_FILES,
    ConfigSyntaxError,
    Directive,
    effective,
    env_names,
    parse_file,
    parse_text,
)


def test_shipped_config_has_no_structural_problems(parsed: Directive) -> None:
    assert all_problems(parsed) == []


def test_both_roles_write_to_elasticsearch_through_one_output(parsed: Directive) -> None:
    es = [m for m in parsed.walk() if m.name == "match" and m.type == "elasticsearch"]
    assert len(es) == 1
    assert es[0].params["@id"] == "out_elasticsearch"


def test_aggregator_listens_for_forward_with_tls_and_shared_key() -> None:
    root = parse_file(CONFIG_DIR / "aggregator.conf")
    forwards = [d for d in root.walk() if d.name == "source" and d.type == "forward"]
    assert len(forwards) == 1
    assert effective(forwards[0].params["port"]) == "24224"
    assert forwards[0].params["@label"] == "@FORWARDED"


def test_tailer_reads_cri_logs_and_excludes_itself() -> None:
    root = parse_file(CONFIG_DIR / "daemonset.conf")
    (tail,) = [d for d in root.walk() if d.name == "source" and d.type == "tail"]
    assert effective(tail.params["path"]) == "/var/log/containers/*.log"
    parse = tail.child("parse")
    assert parse is not None and parse.type == "cri"
    assert "fluentd" in effective(tail.params["exclude_path"])
    assert effective(tail.params["pos_file"]).startswith("/var/lib/fluentd/")


def test_both_roles_expose_prometheus_metrics_on_24231(parsed: Directive) -> None:
    types = {d.type for d in parsed.walk() if d.name == "source"}
    assert {"prometheus", "prometheus_output_monitor", "prometheus_monitor"} <= types
    (prom,) = [d for d in parsed.walk() if d.name == "source" and d.type == "prometheus"]
    assert effective(prom.params["port"]) == "24231"


def test_overflow_action_default_and_override_per_role() -> None:
    root = parse_file(CONFIG_DIR / "daemonset.conf")
    (es,) = [m for m in root.walk() if m.name == "match" and m.type == "elasticsearch"]
    buf = es.child("buffer")
    assert buf is not None
    assert effective(buf.params["overflow_action"]) == "block"
    # The chart runs the aggregator with throw_exception: the forward ack is withheld instead.
    assert (
        effective(
            buf.params["overflow_action"], {"FLUENT_BUFFER_OVERFLOW_ACTION": "throw_exception"}
        )
        == "throw_exception"
    )


def test_every_include_resolves_and_every_file_is_used() -> None:
    used: set[str] = set()
    pending = [CONFIG_DIR / name for name in ENTRY_FILES]
    while pending:  # includes are relative to the including file, as in Fluentd
        path = pending.pop()
        for inc in re.findall(r"^\s*@include\s+(\S+)", path.read_text(), flags=re.M):
            target = path.parent / inc
            assert target.is_file(), inc
            used.add(str(target.relative_to(CONFIG_DIR)))
            pending.append(target)
    on_disk = {str(p.relative_to(CONFIG_DIR)) for p in (CONFIG_DIR / "conf.d").glob("*.conf")}
    assert on_disk == used, "conf.d files that no entry file includes are dead config"


def test_every_environment_variable_is_documented() -> None:
    readme = (CONFIG_DIR / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", readme, flags=re.M))
    used: set[str] = set()
    for path in CONFIG_DIR.rglob("*.conf"):
        used |= env_names(path.read_text())
    assert used, "the config reads no environment variables at all?"
    assert used - documented == set()


# --- the rules catch what they claim to catch ----------------------------------------------------


def _mutated(tmp_path: Path, edit: tuple[str, str, str]) -> Directive:
    """A copy of fluentd-config/ with one textual edit applied to one file, parsed."""
    copy = tmp_path / "fluentd-config"
    shutil.copytree(CONFIG_DIR, copy)
    file, old, new = edit
    target = copy / file
    text = target.read_text()
    assert old in text, f"mutation anchor {old!r} not found in {file}"
    target.write_text(text.replace(old, new, 1))
    entry = "aggregator.conf" if "forward" in file else "daemonset.conf"
    return parse_file(copy / entry)


@pytest.mark.parametrize(
    ("check", "edit", "expected"),
    [
        (
            check_buffers,
            ("conf.d/output-elasticsearch.conf", "@type file\n", "@type memory\n"),
            "not file",
        ),
        (
            check_buffers,
            (
                "conf.d/output-elasticsearch.conf",
                "      total_limit_size",
                "      # total_limit_size",
            ),
            "total_limit_size",
        ),
        (
            check_buffers,
            (
                "conf.d/output-elasticsearch.conf",
                "      overflow_action",
                "      # overflow_action",
            ),
            "overflow_action",
        ),
        (
            check_buffers,
            (
                "conf.d/output-elasticsearch.conf",
                "      retry_timeout 72h",
                "      retry_forever true",
            ),
            "not bounded",
        ),
        (
            check_buffers,
            ("conf.d/output-elasticsearch.conf", "chunk_limit_size 8MB", "chunk_limit_size 200MB"),
            "100mb",
        ),
        (
            check_buffers,
            (
                "conf.d/dead-letter.conf",
                "      retry_type exponential_backoff",
                "      retry_type periodic",
            ),
            "exponential",
        ),
        (
            check_tls_version_bounds,
            ("conf.d/source-forward.conf", "    max_version TLSv1_3\n", ""),
            "together",
        ),
        (
            check_tls_version_bounds,
            ("conf.d/output-elasticsearch.conf", "    ssl_max_version TLSv1_3\n", ""),
            "together",
        ),
        (
            check_file_outputs,
            ("conf.d/dead-letter.conf", "      timekey 1d\n", "      timekey 1h\n"),
            "finer",
        ),
        (
            check_secondaries,
            ("conf.d/output-elasticsearch.conf", "@type secondary_file", "@type stdout"),
            "secondary_file",
        ),
        (
            check_elasticsearch_outputs,
            ("conf.d/output-elasticsearch.conf", "ssl_verify true", "ssl_verify false"),
            "ssl_verify",
        ),
        (
            check_elasticsearch_outputs,
            (
                "conf.d/output-elasticsearch.conf",
                "'https://localhost:9200'",
                "'http://localhost:9200'",
            ),
            "https",
        ),
        (
            check_elasticsearch_outputs,
            ("conf.d/output-elasticsearch.conf", "write_operation create", "write_operation index"),
            "create",
        ),
        (
            check_elasticsearch_outputs,
            (
                "conf.d/output-elasticsearch.conf",
                "data_stream.dataset,data_stream.namespace>",
                "data_stream.dataset>",
            ),
            "chunk key",
        ),
        (
            check_forward_sources,
            ("conf.d/source-forward.conf", "\n  <transport tls>\n", "\n  <transport tcp>\n"),
            "transport tls",
        ),
        (
            check_forward_sources,
            ("conf.d/source-forward.conf", "    shared_key", "    # shared_key"),
            "security",
        ),
        (
            check_labels,
            ("conf.d/enrich.conf", "@label @OUTPUT", "@label @OUTPUTS"),
            "never defined",
        ),
        (
            check_labels,
            ("conf.d/enrich.conf", "@id filter_data_stream_fields", "@id filter_document_id"),
            "used twice",
        ),
    ],
)
def test_rule_reports_a_broken_guarantee(tmp_path: Path, check, edit, expected: str) -> None:
    problems = check(_mutated(tmp_path, edit))
    assert any(expected in p for p in problems), problems


def test_missing_include_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        parse_text("@include conf.d/nope.conf\n", tmp_path)


@pytest.mark.parametrize(
    "text", ["<match **>\n  @type null\n", "</match>\n", "<match **>\n</filter>\n"]
)
def test_unbalanced_sections_are_syntax_errors(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigSyntaxError):
        parse_text(text, tmp_path)
