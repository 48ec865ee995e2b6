"""Client interceptors on their own (uninstrumented servers): call styles, streams, failures."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Callable

import grpc
import pytest
from _calls import aio_server, labels

import rpcscope
from rpcscope.testing import CaptureSink, sample_value, wait_for_logs, wait_until


def _handled(scope: rpcscope.Scope, kind: str, code: str) -> float | None:
    return sample_value(scope.registry, "grpc_client_handled_total", labels(kind, grpc_code=code))


def test_sync_call_styles(scope: rpcscope.Scope, serve_sync: Callable[..., int],
                          sync_channel: Callable[..., grpc.Channel]) -> None:
    """__call__, with_call and future() are each one started and one handled call."""
    channel = sync_channel(serve_sync(), scope.client_interceptors())
    unary = channel.unary_unary("/test.v1.Echo/Unary")
    assert unary(b"ok") == b"reply:ok"
    response, call = unary.with_call(b"ok", timeout=30)
    assert response == b"reply:ok"
    assert call.code() is grpc.StatusCode.OK
    assert unary.future(b"ok").result() == b"reply:ok"
    wait_until(lambda: _handled(scope, "Unary", "OK") == 3)
    reg = scope.registry
    assert sample_value(reg, "grpc_client_started_total", labels("Unary")) == 3
    assert sample_value(reg, "grpc_client_msg_sent_total", labels("Unary")) == 3
    assert sample_value(reg, "grpc_client_msg_received_total", labels("Unary")) == 3
    assert sample_value(reg, "grpc_server_started_total", labels("Unary")) is None
    docs = wait_for_logs(scope, 3, side="client")
    with_deadline = [d for d in docs if "grpc.request.deadline_seconds" in d]
    assert len(with_deadline) == 1
    assert 0 < with_deadline[0]["grpc.request.deadline_seconds"] <= 30


def test_streams_read_to_the_end_count_every_message(scope: rpcscope.Scope,
                                                     serve_sync: Callable[..., int],
                                                     sync_channel: Callable[..., grpc.Channel]
                                                     ) -> None:
    """The status often arrives before the last messages are read: none may be missed."""
    channel = sync_channel(serve_sync(), scope.client_interceptors())
    stream = channel.unary_stream("/test.v1.Echo/ServerStream")
    bidi = channel.stream_stream("/test.v1.Echo/Bidi")
    for _ in range(25):
        assert list(stream(b"ok")) == [b"0", b"1", b"2"]
        assert len(list(bidi(iter([b"ok"] * 4)))) == 4
    wait_until(lambda: _handled(scope, "ServerStream", "OK") == 25
               and _handled(scope, "Bidi", "OK") == 25)
    reg = scope.registry
    assert sample_value(reg, "grpc_client_msg_received_total", labels("ServerStream")) == 75
    assert sample_value(reg, "grpc_client_msg_received_total", labels("Bidi")) == 100
    assert sample_value(reg, "grpc_client_msg_sent_total", labels("Bidi")) == 100
    docs = wait_for_logs(scope, 50, side="client")
    assert {d["grpc.msgs_received"] for d in docs if d["rpc.method"] == "ServerStream"} == {3}


def test_abandoned_stream_is_finished_once(scope: rpcscope.Scope, serve_sync: Callable[..., int],
                                           sync_channel: Callable[..., grpc.Channel]) -> None:
    """A stream the application cancels and drops mid-way still ends as one Canceled call."""
    channel = sync_channel(serve_sync(), scope.client_interceptors())
    call = channel.unary_stream("/test.v1.Echo/ServerStream")(b"sleep:0.3")
    assert next(call) == b"0"
    call.cancel()
    del call
    gc.collect()
    wait_until(lambda: _handled(scope, "ServerStream", "Canceled"))
    assert _handled(scope, "ServerStream", "Canceled") == 1
    assert sample_value(scope.registry, "grpc_client_msg_received_total",
                        labels("ServerStream")) == 1
    [doc] = wait_for_logs(scope, 1, side="client")
    assert doc["log.level"] == "warn"


def test_stream_dropped_without_reading(scope: rpcscope.Scope, serve_sync: Callable[..., int],
                                        sync_channel: Callable[..., grpc.Channel]) -> None:
    """A stream the application never reads and drops: handled once when grpc ends it.

    grpc keeps an unread stream open until its channel closes (the call object stays alive in
    grpc's own bookkeeping), so that is when the call ends, for rpcscope as without it.
    """
    channel = sync_channel(serve_sync(), scope.client_interceptors())
    # The handler sleeps before its second message: the stream is still open at close().
    call = channel.unary_stream("/test.v1.Echo/ServerStream")(b"sleep:1")
    del call
    gc.collect()
    channel.close()
    wait_until(lambda: _handled(scope, "ServerStream", "Canceled"))
    [doc] = wait_for_logs(scope, 1, side="client")
    assert doc["grpc.code"] == "Canceled"
    assert sample_value(scope.registry, "grpc_client_started_total",
                        labels("ServerStream")) == 1


def test_unreachable_server_is_unavailable(scope: rpcscope.Scope,
                                           sync_channel: Callable[..., grpc.Channel]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    channel = sync_channel(port, scope.client_interceptors())
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary("/test.v1.Echo/Unary")(b"ok", timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    wait_until(lambda: _handled(scope, "Unary", "Unavailable") == 1)
    [doc] = wait_for_logs(scope, 1, side="client")
    assert doc["log.level"] == "error"
    assert doc["error.type"] == "Unavailable"


def test_client_calls_not_logged_when_disabled(make_scope: Callable[..., rpcscope.Scope],
                                               sink: CaptureSink,
                                               serve_sync: Callable[..., int],
                                               sync_channel: Callable[..., grpc.Channel]) -> None:
    scope = make_scope(log_client_calls=False)
    channel = sync_channel(serve_sync(scope.server_interceptors()), scope.client_interceptors())
    channel.unary_unary("/test.v1.Echo/Unary")(b"ok")
    wait_for_logs(scope, 1, side="server")
    wait_until(lambda: _handled(scope, "Unary", "OK") == 1)  # client metrics still on
    scope.flush()
    assert sink.access_logs(side="client") == []


def test_aio_streams_count_every_message(scope: rpcscope.Scope) -> None:
    async def run() -> None:
        async with aio_server() as port, grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", interceptors=scope.aio_client_interceptors()) as ch:
            stream = ch.unary_stream("/test.v1.Echo/ServerStream")
            bidi = ch.stream_stream("/test.v1.Echo/Bidi")
            for _ in range(25):
                assert [r async for r in stream(b"ok")] == [b"0", b"1", b"2"]
                assert len([r async for r in bidi(iter([b"ok"] * 4))]) == 4
            for _ in range(500):
                if _handled(scope, "ServerStream", "OK") == 25 and \
                        _handled(scope, "Bidi", "OK") == 25:
                    break
                await asyncio.sleep(0.01)

    asyncio.run(run())
    reg = scope.registry
    assert _handled(scope, "ServerStream", "OK") == 25
    assert sample_value(reg, "grpc_client_msg_received_total", labels("ServerStream")) == 75
    assert sample_value(reg, "grpc_client_msg_received_total", labels("Bidi")) == 100
    assert sample_value(reg, "grpc_client_msg_sent_total", labels("Bidi")) == 100


def test_aio_unreachable_server_is_unavailable(scope: rpcscope.Scope) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def run() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", interceptors=scope.aio_client_interceptors()) as ch:
            try:
                await ch.unary_unary("/test.v1.Echo/Unary")(b"ok", timeout=5)
            except grpc.aio.AioRpcError as e:
                for _ in range(500):
                    if _handled(scope, "Unary", "Unavailable"):
                        break
                    await asyncio.sleep(0.01)
                return e.code()
        raise AssertionError("call succeeded")

    assert asyncio.run(run()) is grpc.StatusCode.UNAVAILABLE
    assert _handled(scope, "Unary", "Unavailable") == 1
