"""Optional: fluentd-config/ end to end in a real Fluentd, into an Elasticsearch `_bulk` stand-in.

Real access-log lines (written by a real Scope around a real grpc server) are tailed in CRI
format through daemonset.conf, and the same records are sent over Forward (TLS, shared key, acks)
to aggregator.conf, both into one HTTPS `_bulk` stand-in (fluentd_run.BulkStandIn). Skipped
unless RPCSCOPE_FLUENTD_CMD is set (fluentd_run.py says how).
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fluentd_run import (
    CMD,
    SHARED_KEY,
    SKIP_REASON,
    BulkStandIn,
    Fluentd,
    ForwardClient,
    TestPKI,
    aggregator_env,
    container_log,
    cri_line,
    free_port,
    make_pki,
    tailer_env,
    wait_for,
)
from prometheus_client import CollectorRegistry

import rpcscope
from rpcscope import schema

pytestmark = [pytest.mark.fluentd, pytest.mark.skipif(not CMD, reason=SKIP_REASON)]

#: Fields the tail input and kubernetes_metadata add; none may reach Elasticsearch.
NON_ECS = {"time", "stream", "logtag", "kubernetes", "docker"}
ACCESS = f"logs-{schema.ACCESS_LOGGER}-default"
APP = "logs-rpcscope.app-default"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def es(pki: TestPKI) -> Iterator[BulkStandIn]:
    stand_in = BulkStandIn(pki)
    yield stand_in
    stand_in.close()


@pytest.fixture
def fluentd(tmp_path: Path) -> Iterator[Callable[[str, dict[str, str]], Fluentd]]:
    started: list[Fluentd] = []

    def start(entry: str, env: dict[str, str]) -> Fluentd:
        f = Fluentd(entry, env, tmp_path / f"{entry}.{len(started)}.log").start()
        started.append(f)
        return f

    yield start
    for f in started:
        f.kill()


@pytest.fixture
def access_lines(
    tmp_path: Path,
    serve_sync: Callable[..., int],
    sync_channel: Callable[..., grpc.Channel],
) -> list[str]:
    """Three access-log lines exactly as rpcscope writes them (one OK, one error, one OK)."""
    path = tmp_path / "access.jsonl"
    with rpcscope.Scope(service="shop", access_log=str(path), registry=CollectorRegistry()) as s:
        channel = sync_channel(serve_sync(s.server_interceptors()))
        unary = channel.unary_unary("/test.v1.Echo/Unary")
        unary(b"ok")
        with pytest.raises(grpc.RpcError):
            unary(b"abort:NOT_FOUND")
        unary(b"ok")
        s.flush()
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    return lines


def _by_id(es: BulkStandIn) -> dict[str, dict[str, Any]]:
    return {d["_id"]: d for d in es.all_documents()}


def _dead_letters(state: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for f in sorted((state / "dead-letter" / "rejected").glob("rejected.*"))
        for line in f.read_text().splitlines()
    ]


def test_tailed_cri_lines_become_ecs_documents(
    tmp_path: Path,
    es: BulkStandIn,
    pki: TestPKI,
    fluentd: Callable[[str, dict[str, str]], Fluentd],
    access_lines: list[str],
) -> None:
    containers = tmp_path / "var" / "log" / "containers"
    log = container_log(containers, "shop-7d9f", "default", "shop")
    half = len(access_lines[2]) // 2
    log.write_text(
        cri_line(access_lines[0])
        + cri_line(access_lines[1])
        # A line the runtime split in two (P, then F), with a stderr line written in between:
        # the parts are joined back per stream before parsing.
        + cri_line(access_lines[2][:half], partial=True)
        + cri_line("Traceback (most recent call last):", "stderr", at="2026-11-26T04:06:41.5Z")
        + cri_line(access_lines[2][half:])
    )
    state = tmp_path / "tailer"
    tailer = fluentd("daemonset.conf", tailer_env(state, es, pki, containers))
    docs = wait_for("4 documents", lambda: len(es.all_documents()) >= 4 and es.all_documents())
    tailer.stop()
    assert len(docs) == 4
    access = sorted((d for d in docs if d["_index"] == ACCESS), key=lambda d: d["@timestamp"])
    [plain] = [d for d in docs if d["_index"] == APP]

    expected = [json.loads(line) for line in access_lines]
    assert len(access) == 3
    for doc, line in zip(access, sorted(expected, key=lambda d: d["@timestamp"]), strict=True):
        assert NON_ECS.isdisjoint(doc), sorted(NON_ECS & set(doc))
        assert doc["labels.stream"] == "stdout"
        assert doc["_id"] == doc["event.id"]
        assert doc["orchestrator.namespace"] == "default"
        assert doc["orchestrator.resource.name"] == "shop-7d9f"
        assert doc["container.name"] == "shop"
        assert doc["data_stream.dataset"] == doc["event.dataset"] == schema.ACCESS_LOGGER
        # The application's own fields arrive unchanged, @timestamp included.
        for key, value in line.items():
            if key != "host.name":  # the node's name replaces it (README: ECS mapping)
                assert doc[key] == value, key
    assert access[1]["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]

    assert NON_ECS.isdisjoint(plain), sorted(NON_ECS & set(plain))
    assert plain["message"] == "Traceback (most recent call last):"
    assert plain["labels.stream"] == "stderr"
    # No @timestamp of its own: the CRI time, to the nanosecond.
    assert plain["@timestamp"] == "2026-11-26T04:06:41.500000000+00:00"
    assert "'@' is the system reserved prefix" not in tailer.log()

    # A replaced tailer pod re-reads the node's files from the start (no position file): every
    # record is sent again with the same _id, answered 409, and stored once.
    shutil.rmtree(state / "pos")
    fluentd("daemonset.conf", tailer_env(state, es, pki, containers))
    wait_for("the re-read", lambda: sum(es.creates.values()) >= 8)
    assert sorted(es.creates.values()) == [2, 2, 2, 2]
    assert len(es.all_documents()) == 4


def test_forwarded_and_tailed_copies_of_a_record_are_one_document(
    tmp_path: Path,
    es: BulkStandIn,
    pki: TestPKI,
    fluentd: Callable[[str, dict[str, str]], Fluentd],
    access_lines: list[str],
) -> None:
    port = free_port()
    fluentd("aggregator.conf", aggregator_env(tmp_path / "aggregator", es, pki, port))
    records = [json.loads(line) for line in access_lines]
    app_record = {
        "@timestamp": "2026-11-26T04:06:42.000001Z",
        "log.level": "info",
        "log.logger": "shop.orders",
        "message": "order 42 placed",
        "service.name": "shop",
        "ecs.version": schema.ECS_VERSION,
    }
    client = ForwardClient(port, pki)
    chunk = client.send("rpcscope.access", records)
    client.send("rpcscope.app", [app_record])
    wait_for("4 documents", lambda: len(es.all_documents()) >= 4)
    forwarded = _by_id(es)
    assert {d["_index"] for d in forwarded.values()} == {ACCESS, APP}
    [app_doc] = [d for d in forwarded.values() if d["_index"] == APP]
    assert app_doc["message"] == "order 42 placed"
    assert app_doc["data_stream.dataset"] == "rpcscope.app"

    # The same batch again, with the same chunk id (a resend after a lost ack): same ids.
    client.send("rpcscope.access", records, chunk=chunk)
    client.close()
    wait_for("the resend", lambda: sum(es.creates.values()) >= 7)

    # The same lines tailed from the container's stdout by the node tailer.
    containers = tmp_path / "var" / "log" / "containers"
    container_log(containers, "shop-7d9f", "default", "shop").write_text(
        "".join(cri_line(line) for line in access_lines)
    )
    fluentd("daemonset.conf", tailer_env(tmp_path / "tailer", es, pki, containers))
    wait_for("the tailed copies", lambda: sum(es.creates.values()) >= 10)

    access_ids = {i for i, d in forwarded.items() if d["_index"] == ACCESS}
    assert len(access_ids) == 3
    # Three sends of each access record (forward, resend, tail), one document each.
    assert {i: es.creates[i] for i in access_ids} == {i: 3 for i in access_ids}
    assert _by_id(es).keys() == forwarded.keys()
    for doc_id in access_ids:
        assert forwarded[doc_id]["event.id"] == doc_id


def test_every_record_arrives_once_across_an_outage_and_an_aggregator_sigkill(
    tmp_path: Path,
    es: BulkStandIn,
    pki: TestPKI,
    fluentd: Callable[[str, dict[str, str]], Fluentd],
) -> None:
    port = free_port()
    env = aggregator_env(tmp_path / "aggregator", es, pki, port)
    es.down = True
    aggregator = fluentd("aggregator.conf", env)

    def batch(start: int, n: int) -> list[dict[str, Any]]:
        return [
            {
                "@timestamp": f"2026-11-26T04:06:40.{i:06d}Z",
                "log.logger": schema.ACCESS_LOGGER,
                "message": f"record {i}",
                "labels": {"seq": str(i)},
            }
            for i in range(start, start + n)
        ]

    client = ForwardClient(port, pki)
    for start in range(0, 200, 20):
        client.send("rpcscope.access", batch(start, 20))  # acked: in the aggregator's buffer
    client.close()
    # Acked records live in the file buffer only; Elasticsearch is still down.
    aggregator.kill()
    assert es.all_documents() == []

    fluentd("aggregator.conf", env)
    client = ForwardClient(port, pki)
    for start in range(200, 300, 20):
        client.send("rpcscope.access", batch(start, 20))
    client.close()
    es.down = False
    docs = wait_for("300 documents", lambda: len(es.all_documents()) >= 300 and es.all_documents(),
                    timeout=240)  # fmt: skip
    seqs = sorted(int(d["labels"]["seq"]) for d in docs)
    assert seqs == list(range(300)), "records lost or stored twice"
    duplicates = sum(n - 1 for n in es.creates.values())
    print(f"creates answered 409 (re-sent after the SIGKILL, stored once): {duplicates}")


def test_rejected_records_are_dead_lettered_with_elasticsearchs_reason(
    tmp_path: Path,
    es: BulkStandIn,
    pki: TestPKI,
    fluentd: Callable[[str, dict[str, str]], Fluentd],
) -> None:
    port = free_port()
    state = tmp_path / "aggregator"
    aggregator = fluentd("aggregator.conf", aggregator_env(state, es, pki, port))
    good = {"@timestamp": "2026-11-26T04:06:40Z", "log.logger": "shop", "message": "fine"}
    bad = {"@timestamp": "2026-11-26T04:06:41Z", "log.logger": "shop", "message": "REJECT-ME"}
    client = ForwardClient(port, pki)
    client.send("rpcscope.app", [good, bad])
    client.close()
    wait_for("the rejection", lambda: es.rejected)
    wait_for("the accepted record", es.all_documents)
    aggregator.stop()  # flush_at_shutdown writes the dead-letter buffer out

    [letter] = _dead_letters(state)
    assert letter["record"]["message"] == "REJECT-ME"
    assert letter["record"]["event.id"] == es.rejected[0]["event.id"]
    assert "400" in letter["error"] and "mapper_parsing_exception" in letter["error"]
    assert BulkStandIn.REJECT_REASON in letter["error"]
    assert letter["error_class"] == "Fluent::Plugin::ElasticsearchErrorHandler::ElasticsearchError"
    assert [d["message"] for d in es.all_documents()] == ["fine"]


def test_a_full_aggregator_buffer_withholds_the_ack_and_loses_nothing(
    tmp_path: Path,
    es: BulkStandIn,
    pki: TestPKI,
    fluentd: Callable[[str, dict[str, str]], Fluentd],
) -> None:
    """Acked means buffered: when the output buffer is full (Elasticsearch down) the aggregator
    refuses the batch (no ack) instead of acking it into the dead letter, so the sender keeps it."""
    port = free_port()
    state = tmp_path / "aggregator"
    env = aggregator_env(state, es, pki, port) | {"FLUENT_BUFFER_TOTAL_LIMIT_SIZE": "64KB"}
    es.down = True
    fluentd("aggregator.conf", env)

    def batch(n: int) -> list[dict[str, Any]]:
        return [
            {
                "@timestamp": f"2026-11-26T04:06:{n:02d}.{i:06d}Z",
                "log.logger": "shop",
                "message": f"batch {n} record {i} " + "x" * 400,
            }
            for i in range(20)
        ]

    acked: list[int] = []
    refused: int | None = None
    for n in range(40):  # 40 x ~9 KB: far more than 64 KB
        client = ForwardClient(port, pki)
        try:
            client.send("rpcscope.app", batch(n))
            acked.append(n)
        except (ConnectionError, TimeoutError, OSError):
            refused = n
            break
        finally:
            client.close()
    assert refused is not None, "every batch was acked although the buffer holds 64 KB"
    assert not (state / "dead-letter").exists() or not any((state / "dead-letter").rglob("*.*"))

    # The sender retries the refused batch once Elasticsearch is back: everything arrives once.
    es.down = False
    wait_for("the buffer to drain", lambda: len(es.all_documents()) >= 20 * len(acked), 240)
    client = ForwardClient(port, pki)
    client.send("rpcscope.app", batch(refused))
    client.close()
    expected = 20 * (len(acked) + 1)
    docs = wait_for(f"{expected} documents", lambda: len(es.all_documents()) >= expected
                    and es.all_documents(), 240)  # fmt: skip
    assert sorted(d["message"] for d in docs) == sorted(
        r["message"] for n in [*acked, refused] for r in batch(n)
    )


def test_the_charts_client_secret_ships_to_the_aggregator_it_renders(
    tmp_path: Path,
    es: BulkStandIn,
    pki: TestPKI,
    fluentd: Callable[[str, dict[str, str]], Fluentd],
) -> None:
    """fluentd.aggregator.forward.external: the aggregator runs with the certificate and shared
    key the chart renders; a client holding only the chart's client Secret (endpoint, shared-key,
    ca.crt) connects, verifies the certificate for the endpoint's host name, and ships."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chart"))
    from chart_render import render

    r = render({"fluentd": {"aggregator": {"forward": {"external": {
        "enabled": True, "namespaces": ["batch"]}}}}})  # fmt: skip
    agg = r.name("fluentd-aggregator")
    client = next(
        s for s in r.of_kind("Secret")
        if s["metadata"]["name"] == f"{agg}-client" and s["metadata"]["namespace"] == "batch"
    )  # fmt: skip
    secret = {k: base64.b64decode(v) for k, v in client["data"].items()}
    tls = r.secret_data(f"{agg}-tls")
    files = tmp_path / "chart"
    files.mkdir()
    for name, data in (("tls.crt", tls["tls.crt"]), ("tls.key", tls["tls.key"]),
                       ("ca.crt", secret["ca.crt"])):  # fmt: skip
        (files / name).write_bytes(data)
    chart_pki = TestPKI(files / "ca.crt", files / "tls.crt", files / "tls.key")

    port = free_port()
    env = aggregator_env(tmp_path / "aggregator", es, pki, port)
    (files / "shared-key").write_bytes(r.secret_data(f"{agg}-credentials")["shared-key"])
    env |= {
        "FLUENT_FORWARD_TLS_CERT_PATH": str(chart_pki.cert),
        "FLUENT_FORWARD_TLS_KEY_PATH": str(chart_pki.key),
        "FLUENT_FORWARD_SHARED_KEY_FILE": str(files / "shared-key"),
    }
    fluentd("aggregator.conf", env)
    host = secret["endpoint"].decode().rsplit(":", 1)[0]
    sender = ForwardClient(port, chart_pki, secret["shared-key"].decode(), server_hostname=host)
    sender.send("rpcscope.app", [{"log.logger": "batch.job", "message": "shipped directly"}])
    sender.close()
    [doc] = wait_for("the document", es.all_documents)
    assert (doc["_index"], doc["message"]) == (APP, "shipped directly")
    # A wrong key is refused in the handshake.
    with pytest.raises(AssertionError, match="PONG"):
        ForwardClient(port, chart_pki, "not-the-key", server_hostname=host)


def test_the_shipper_of_a_real_service_delivers_to_the_real_aggregator(
    tmp_path: Path,
    es: BulkStandIn,
    pki: TestPKI,
    fluentd: Callable[[str, dict[str, str]], Fluentd],
    serve_sync: Callable[..., int],
    sync_channel: Callable[..., grpc.Channel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """rpcscope's own shipper, configured as a user would (environment only), into the
    project's aggregator config in a real Fluentd, over TLS with the shared key: every access
    and application record becomes one document of the right data stream, with the
    shipper's acknowledgements counted as delivered."""
    port = free_port()
    fluentd("aggregator.conf", aggregator_env(tmp_path / "aggregator", es, pki, port))
    key = tmp_path / "shared-key"
    key.write_text(SHARED_KEY + "\n")
    monkeypatch.setenv("RPCSCOPE_FLUENTD", f"tls://localhost:{port}")
    monkeypatch.setenv("RPCSCOPE_FLUENTD_SHARED_KEY_FILE", str(key))
    monkeypatch.setenv("RPCSCOPE_FLUENTD_TLS_CA", str(pki.ca))
    scope = rpcscope.Scope(service="shop", registry=CollectorRegistry(), log_client_calls=False)
    try:
        unary = sync_channel(serve_sync(scope.server_interceptors())).unary_unary(
            "/test.v1.Echo/Unary")
        app = logging.getLogger("shop.orders")
        app.addHandler(scope.logging_handler())
        app.setLevel(logging.INFO)
        for _ in range(5):
            unary(b"ok")
        with pytest.raises(grpc.RpcError):
            unary(b"abort:NOT_FOUND")
        app.info("order 42 placed")
        scope.flush(timeout=30)
        assert scope.stats()["logs"] == {"emitted": 7, "delivered": 7, "dropped": 0}
    finally:
        scope.close(timeout=10)
    wait_for("7 documents", lambda: len(es.all_documents()) >= 7)
    docs = es.all_documents()
    by_index: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_index.setdefault(doc["_index"], []).append(doc)
    assert sorted(d["grpc.code"] for d in by_index[ACCESS]) == ["NotFound"] + ["OK"] * 5
    assert [d["message"] for d in by_index[APP]] == ["order 42 placed"]
    assert len({d["_id"] for d in docs}) == 7
