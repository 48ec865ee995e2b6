"""The Fluentd shipper behind a real gRPC server, configured as a user would (``RPCSCOPE_FLUENTD``
or ``Scope(access_log=ForwardSink(...))``): an outage costs no call and no record, and memory
stays under the sink's bound while the records wait on disk."""

from __future__ import annotations

import logging
from collections import Counter

import _svc

from rpcscope import schema
from rpcscope.exporters._forward import ForwardSink
from rpcscope.testing import ForwardReceiver, sample_value


def test_outage_during_traffic_loses_no_call_and_no_record(make_scope, serve_sync,
                                                           sync_channel, registry, tmp_path):
    receiver = ForwardReceiver().start()
    receiver.stop()  # Fluentd is down from the start
    bound = 64 << 10
    sink = ForwardSink(receiver.address, spill_dir=str(tmp_path / "spill"),
                       max_buffer_bytes=bound, batch_bytes=8 << 10, flush_interval=0.02,
                       connect_timeout=1.0, ack_timeout=2.0, backoff_base=0.01,
                       backoff_max=0.1)
    scope = make_scope(access_log=sink)  # registers the sink's self-metrics on its registry
    port = serve_sync(scope.server_interceptors())
    channel = sync_channel(port)
    unary = channel.unary_unary(_svc.path("Unary"))
    app_log = logging.getLogger("test_forward_grpc.app")
    app_log.addHandler(scope.logging_handler())
    app_log.setLevel(logging.INFO)
    try:
        calls = 400
        for i in range(calls):
            # Every call succeeds while nothing can be shipped.
            assert unary(b"ok", metadata=(("x-request-id", f"req-{i}"),), timeout=5) \
                == b"reply:ok"
            if i % 100 == 0:
                app_log.info("app record %d", i)
                scope.flush(5)
                assert sink.stats()["queue_bytes"] <= bound
        scope.flush(5)
        assert sink.stats()["queue_bytes"] <= bound
        assert sink.stats()["spilled"] > 0
        receiver.start()  # recovery
        assert sink.flush(30), sink.stats()
        access = [e for e in receiver.events if e.tag == "rpcscope.access"]
        ids = Counter(e.record["grpc.request.metadata"]["x-request-id"] for e in access)
        assert set(ids) == {f"req-{i}" for i in range(calls)}
        assert {e.record["log.logger"] for e in access} == {schema.ACCESS_LOGGER}
        app = [e.record["message"] for e in receiver.events if e.tag == "rpcscope.app"]
        assert sorted(app) == sorted(f"app record {i}" for i in range(0, calls, 100))
        assert sample_value(registry, schema.FORWARD_RECORDS, {"outcome": "replayed"}) > 0
        assert sample_value(registry, schema.FORWARD_DROPPED, {"reason": "buffer_full"}) == 0
    finally:
        app_log.handlers.clear()
        receiver.stop()


def test_rpcscope_fluentd_ships_access_and_app_logs_and_counts_acks(
        make_scope, serve_sync, sync_channel, monkeypatch, capsys):
    """Turned on without code: the access log and the application log ship under their tags
    as the same ECS documents, nothing goes to stdout (access_log left at its default), the
    shipper's metrics are on the scope's registry, and delivered means acknowledged."""
    with ForwardReceiver() as receiver:
        monkeypatch.setenv("RPCSCOPE_FLUENTD", receiver.address)
        scope = make_scope(access_log=None, log_client_calls=False)
        unary = sync_channel(serve_sync(scope.server_interceptors())).unary_unary(
            _svc.path("Unary"))
        app_log = logging.getLogger("test_forward_grpc.env")
        app_log.addHandler(scope.logging_handler())
        app_log.setLevel(logging.INFO)
        for _ in range(3):
            assert unary(b"ok") == b"reply:ok"
        app_log.info("shipped without code")
        scope.flush(timeout=10)
        receiver.wait_for(4)
        access = receiver.records("rpcscope.access")
        app = receiver.records("rpcscope.app")
        assert [d["log.logger"] for d in access] == [schema.ACCESS_LOGGER] * 3
        assert all(d["grpc.code"] == "OK" and d["trace.id"] for d in access)
        assert [d["message"] for d in app] == ["shipped without code"]
        assert scope.stats()["logs"] == {"emitted": 4, "delivered": 4, "dropped": 0}
        assert sample_value(scope.registry, "rpcscope_forward_records_total",
                            {"outcome": "acked"}) == 4
        scope.close()
    assert capsys.readouterr().out == ""
