"""Sync server and client interceptors: every RPC kind x every outcome, exact telemetry.

One call per test through an instrumented sync client into an instrumented sync server (same
Scope), then the exact samples on both sides and both access-log records are asserted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
import pytest
from _calls import KINDS, OUTCOMES, STATUS, call_sync, check_log, check_metrics, labels

import rpcscope
from rpcscope.testing import CaptureSink, sample_value, wait_for_logs, wait_until


@pytest.mark.parametrize("outcome", list(OUTCOMES), ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_sync_call_telemetry(kind: str, outcome: str, scope: rpcscope.Scope,
                             serve_sync: Callable[..., int],
                             sync_channel: Callable[..., grpc.Channel],
                             handler_sleeping: threading.Event) -> None:
    o = OUTCOMES[outcome]
    port = serve_sync(scope.server_interceptors())
    channel = sync_channel(port, scope.client_interceptors())

    seen = call_sync(channel, kind, o, reached=handler_sleeping.is_set)

    assert seen.code is STATUS[o.code]
    for side in ("server", "client"):
        check_metrics(scope.registry, side, kind, o)
        [doc] = wait_for_logs(scope, 1, component=side, method=kind)
        check_log(doc, side, kind, o)


def test_unary_counts_accumulate_per_code(scope: rpcscope.Scope, serve_sync: Callable[..., int],
                                          sync_channel: Callable[..., grpc.Channel]) -> None:
    """Many calls: started = sum(handled) and each code counted separately (rate() inputs)."""
    port = serve_sync(scope.server_interceptors())
    unary = sync_channel(port).unary_unary("/test.v1.Echo/Unary")
    for _ in range(5):
        unary(b"ok")
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            unary(b"abort:INVALID_ARGUMENT")
    reg = scope.registry
    assert sample_value(reg, "grpc_server_started_total", labels("Unary")) == 8
    assert sample_value(reg, "grpc_server_handled_total", labels("Unary", grpc_code="OK")) == 5
    assert sample_value(reg, "grpc_server_handled_total",
                        labels("Unary", grpc_code="InvalidArgument")) == 3
    assert sample_value(reg, "grpc_server_handling_seconds_count", labels("Unary")) == 8
    assert sample_value(reg, "grpc_server_msg_received_total", labels("Unary")) == 8
    assert sample_value(reg, "grpc_server_msg_sent_total", labels("Unary")) == 5
    docs = wait_for_logs(scope, 8, component="server")
    assert sorted(d["log.level"] for d in docs) == ["info"] * 5 + ["warn"] * 3


def test_no_series_before_traffic_and_no_client_series_from_server(
        scope: rpcscope.Scope, serve_sync: Callable[..., int],
        sync_channel: Callable[..., grpc.Channel], sink: CaptureSink) -> None:
    """An uninstrumented client produces server telemetry only; nothing exists before a call."""
    reg = scope.registry
    port = serve_sync(scope.server_interceptors())
    assert sample_value(reg, "grpc_server_started_total", labels("Unary")) is None
    sync_channel(port).unary_unary("/test.v1.Echo/Unary")(b"ok")
    assert sample_value(reg, "grpc_server_started_total", labels("Unary")) == 1
    assert sample_value(reg, "grpc_client_started_total", labels("Unary")) is None
    wait_for_logs(scope, 1, component="server")
    assert sink.access_logs(component="client") == []


def test_abandoned_stream_is_handled_exactly_once(
        scope: rpcscope.Scope, serve_sync: Callable[..., int],
        sync_channel: Callable[..., grpc.Channel]) -> None:
    """A client reading 1 of 3 streamed messages then cancelling: one handled, no leak."""
    port = serve_sync(scope.server_interceptors())
    call = sync_channel(port).unary_stream("/test.v1.Echo/ServerStream")(b"ok")
    assert next(call) == b"0"
    call.cancel()
    reg = scope.registry

    def handled() -> float:
        return sum(s["value"] for s in _handled(reg, "ServerStream"))

    wait_until(handled, message="the abandoned stream to be handled")
    [only] = _handled(reg, "ServerStream")
    assert only["code"] in ("OK", "Canceled")  # it may have finished before the cancel arrived
    assert only["value"] == 1
    assert sample_value(reg, "grpc_server_started_total", labels("ServerStream")) == 1


def _handled(reg: object, method: str) -> list[dict[str, object]]:
    return [
        {"code": s.labels["grpc_code"], "value": s.value}
        for fam in reg.collect()  # type: ignore[attr-defined]
        for s in fam.samples
        if s.name == "grpc_server_handled_total" and s.labels["grpc_method"] == method and s.value
    ]
