"""The RPC's own behaviour is identical with and without rpcscope, even when rpcscope fails.

Side by side: the same call against an uninstrumented server (plain client) and against an
instrumented one (instrumented client), for every error path, sync and aio; the caller must
observe the same code, details, trailing metadata and responses. Then rpcscope's own parts are
made to fail (sink, metrics, filter, tracing) and the RPC must still be unaffected, with the
failure counted in ``rpcscope_instrumentation_errors_total``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import _svc
import grpc
import pytest
from _calls import KINDS, OUTCOMES, STATUS, Observed, aio_server, call_aio, call_sync, labels

import rpcscope
from rpcscope.collector import _metrics
from rpcscope.collector._metrics import MethodAggregate
from rpcscope.collector._trace import Tracing
from rpcscope.testing import CaptureSink, sample_value, wait_for_logs, wait_until

ERROR_PATHS = [name for name in OUTCOMES if name != "ok"]

# --- a service with trailing metadata on its error and success paths -----------------------

TRAILERS = "test.v1.Trailers"
TRAILING = (("x-reason", "quota"), ("x-retry-after", "3"))


def _trailers_abort(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata(TRAILING)
    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")


def _trailers_stream(request: bytes, context: Any) -> Any:
    context.set_trailing_metadata(TRAILING)
    yield b"a"
    yield b"b"


async def _atrailers_abort(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata(TRAILING)
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")


async def _atrailers_stream(request: bytes, context: Any) -> Any:
    context.set_trailing_metadata(TRAILING)
    yield b"a"
    yield b"b"


def trailers_handler(aio: bool) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(TRAILERS, {
        "Abort": grpc.unary_unary_rpc_method_handler(_atrailers_abort if aio else _trailers_abort),
        "Stream": grpc.unary_stream_rpc_method_handler(
            _atrailers_stream if aio else _trailers_stream),
    })


def _sync_extra(channel: grpc.Channel) -> list[Observed]:
    """Calls that exercise trailing metadata and an unknown method."""
    seen = []
    for path, streaming in ((f"/{TRAILERS}/Abort", False), (f"/{TRAILERS}/Stream", True),
                            ("/no.such.Service/Nope", False), (f"/{_svc.SERVICE}/Nope", False)):
        try:
            if streaming:
                call = channel.unary_stream(path)(b"x")
                got = list(call)
                seen.append(Observed(call.code(), call.details() or None,
                                     tuple(call.trailing_metadata()), got))
            else:
                resp, call = channel.unary_unary(path).with_call(b"x")
                seen.append(Observed(call.code(), call.details() or None,
                                     tuple(call.trailing_metadata()), [resp]))
        except grpc.RpcError as e:
            seen.append(Observed(e.code(), e.details(), tuple(e.trailing_metadata() or ())))
    return seen


def _same(observed: Observed) -> Observed:
    """What must match across the two servers.

    Which side notices an expired deadline first is a race inside grpc itself: the client reports
    "Deadline Exceeded", or "Stream removed (Deadline Exceeded)" when the server's reset wins.
    Both spell the same outcome, with or without rpcscope, so they compare equal here.
    """
    details = observed.details
    if observed.code is grpc.StatusCode.DEADLINE_EXCEEDED and details is not None:
        details = details.removeprefix("Stream removed (").removesuffix(")")
    return Observed(observed.code, details, observed.trailing, observed.responses)


@pytest.mark.parametrize("kind", KINDS)
def test_sync_behaviour_identical_with_and_without_rpcscope(
        kind: str, scope: rpcscope.Scope, serve_sync: Callable[..., int],
        sync_channel: Callable[..., grpc.Channel], handler_sleeping: threading.Event) -> None:
    plain = sync_channel(serve_sync())
    instrumented = sync_channel(serve_sync(scope.server_interceptors()),
                                scope.client_interceptors())
    for name in ERROR_PATHS:
        o = OUTCOMES[name]
        handler_sleeping.clear()
        without = call_sync(plain, kind, o, reached=handler_sleeping.is_set)
        handler_sleeping.clear()
        with_ = call_sync(instrumented, kind, o, reached=handler_sleeping.is_set)
        assert _same(with_) == _same(without), name
        assert with_.code is STATUS[o.code]


def test_sync_trailers_and_unknown_methods_identical(
        scope: rpcscope.Scope, serve_sync: Callable[..., int],
        sync_channel: Callable[..., grpc.Channel]) -> None:
    handlers = (_svc.sync_handler(), trailers_handler(aio=False))
    plain = sync_channel(serve_sync(handlers=handlers))
    instrumented = sync_channel(serve_sync(scope.server_interceptors(), handlers=handlers),
                                scope.client_interceptors())
    without, with_ = _sync_extra(plain), _sync_extra(instrumented)
    assert with_ == without
    assert with_[0].trailing == TRAILING
    assert with_[1].trailing == TRAILING
    assert with_[1].responses == [b"a", b"b"]
    assert with_[2].code is grpc.StatusCode.UNIMPLEMENTED


async def _aio_extra(channel: grpc.aio.Channel) -> list[Observed]:
    seen = []
    for path, streaming in ((f"/{TRAILERS}/Abort", False), (f"/{TRAILERS}/Stream", True),
                            ("/no.such.Service/Nope", False)):
        call = (channel.unary_stream if streaming else channel.unary_unary)(path)(b"x")
        try:
            got = [r async for r in call] if streaming else [await call]
        except grpc.aio.AioRpcError as e:
            seen.append(Observed(e.code(), e.details(), tuple(e.trailing_metadata() or ())))
            continue
        seen.append(Observed(await call.code(), (await call.details()) or None,
                             tuple(await call.trailing_metadata()), got))
    return seen


@pytest.mark.parametrize("kind", KINDS)
def test_aio_behaviour_identical_with_and_without_rpcscope(
        kind: str, scope: rpcscope.Scope, handler_sleeping: threading.Event) -> None:
    handlers = (_svc.aio_handler(), trailers_handler(aio=True))

    async def scenario() -> None:
        async with aio_server(handlers=handlers) as plain_port, \
                aio_server(scope.aio_server_interceptors(), handlers=handlers) as port, \
                grpc.aio.insecure_channel(f"127.0.0.1:{plain_port}") as plain, \
                grpc.aio.insecure_channel(
                    f"127.0.0.1:{port}", interceptors=scope.aio_client_interceptors()) as inst:
            for name in ERROR_PATHS:
                o = OUTCOMES[name]
                handler_sleeping.clear()
                without = await call_aio(plain, kind, o, reached=handler_sleeping.is_set)
                handler_sleeping.clear()
                with_ = await call_aio(inst, kind, o, reached=handler_sleeping.is_set)
                assert _same(with_) == _same(without), name
                assert with_.code is STATUS[o.code]
            if kind == "Unary":
                without_x, with_x = await _aio_extra(plain), await _aio_extra(inst)
                assert with_x == without_x
                assert with_x[0].trailing == TRAILING
                assert with_x[1].responses == [b"a", b"b"]
                assert with_x[2].code is grpc.StatusCode.UNIMPLEMENTED

    asyncio.run(scenario())


# --- failure isolation ----------------------------------------------------------------------


def _break_metrics(monkeypatch: pytest.MonkeyPatch, broken: Callable[..., None],
                   scope: rpcscope.Scope) -> None:
    """Make every finished call's fold into the metrics fail (the bucket search)."""
    monkeypatch.setattr(_metrics, "bisect_left", lambda *a: broken(None, None))


def _errors(scope: rpcscope.Scope) -> float | None:
    return sample_value(scope.registry, "rpcscope_instrumentation_errors_total")


def _roundtrip(scope: rpcscope.Scope, serve_sync: Callable[..., int],
               sync_channel: Callable[..., grpc.Channel]) -> list[Observed]:
    """One OK and one aborting call of every kind through instrumented client and server."""
    channel = sync_channel(serve_sync(scope.server_interceptors()), scope.client_interceptors())
    return [call_sync(channel, kind, OUTCOMES[name]) for kind in KINDS
            for name in ("ok", "abort", "raise")]


def _expected(serve_sync: Callable[..., int], sync_channel: Callable[..., grpc.Channel]
              ) -> list[Observed]:
    channel = sync_channel(serve_sync())
    return [call_sync(channel, kind, OUTCOMES[name]) for kind in KINDS
            for name in ("ok", "abort", "raise")]


def test_failing_sink_does_not_touch_rpcs(make_scope: Callable[..., rpcscope.Scope],
                                          serve_sync: Callable[..., int],
                                          sync_channel: Callable[..., grpc.Channel]) -> None:
    class Broken(rpcscope.LogSink):
        def write(self, documents: Any) -> int:
            raise OSError("disk full")

    scope = make_scope(access_log=Broken())
    assert _roundtrip(scope, serve_sync, sync_channel) == _expected(serve_sync, sync_channel)
    scope.flush()
    # Each finished call (12 server + 12 client) is one record, all lost and counted as such.
    wait_until(lambda: scope.stats()["logs"]["dropped"] == 24)
    assert scope.stats()["logs"]["delivered"] == 0
    assert sample_value(scope.registry, "rpcscope_log_records_total", {"outcome": "dropped"}) == 24


def test_failing_metrics_keep_rpcs_and_logs(make_scope: Callable[..., rpcscope.Scope],
                                            serve_sync: Callable[..., int],
                                            sync_channel: Callable[..., grpc.Channel],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A metrics child that raises is counted; the RPC and the access log are unaffected."""
    scope = make_scope()

    def broken(self: Any, record: Any) -> None:
        raise RuntimeError("metrics backend broken")

    _break_metrics(monkeypatch, broken, scope)
    assert _roundtrip(scope, serve_sync, sync_channel) == _expected(serve_sync, sync_channel)
    assert _errors(scope) == 24
    assert scope.stats()["instrumentation_errors"] == 24
    # Another consumer's failure must not cost the call its access-log record.
    docs = wait_for_logs(scope, 24)
    assert {d["grpc.code"] for d in docs} == {"OK", "NotFound", "Unknown"}


def test_failing_started_counter_keeps_trace_ids(make_scope: Callable[..., rpcscope.Scope],
                                                 serve_sync: Callable[..., int],
                                                 sync_channel: Callable[..., grpc.Channel],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    scope = make_scope()
    port = serve_sync(scope.server_interceptors())
    unary = sync_channel(port).unary_unary(_svc.path("Unary"))

    def boom(self: Any) -> None:
        raise RuntimeError("inc failed")

    class FailingStarts(deque[Any]):
        """The metrics count ``started`` when the method's aggregate is appended."""

        def append(self, item: Any) -> None:
            if isinstance(item, MethodAggregate):
                boom(self)
            super().append(item)

    # Fault injection needs the batcher's queue: there is no public way to break it.
    monkeypatch.setattr(scope._batcher, "pending", FailingStarts())
    assert unary(b"ok") == b"reply:ok"
    assert _errors(scope) == 1
    [doc] = wait_for_logs(scope, 1, side="server")
    assert doc["trace.id"]
    assert doc["grpc.code"] == "OK"


def test_unreadable_deadline_loses_that_field_not_the_record(
        make_scope: Callable[..., rpcscope.Scope], serve_sync: Callable[..., int],
        sync_channel: Callable[..., grpc.Channel], monkeypatch: pytest.MonkeyPatch) -> None:
    """The sync deadline is read from grpc's CallDetails on the log writer; if that fails, the
    line is still written (without the deadline) and the error is counted."""
    from rpcscope.collector._core import Pipeline

    class Unreadable:
        @property
        def deadline(self) -> float:
            raise RuntimeError("deadline unreadable")

    start = Pipeline.start_server

    def start_with_unreadable_details(self: Pipeline, info: Any, context: Any,
                                      *args: Any) -> Any:
        record = start(self, info, context, *args)
        assert record.call_details is not None  # the direct path ran: this test needs it
        record.call_details = Unreadable()
        return record

    monkeypatch.setattr(Pipeline, "start_server", start_with_unreadable_details)
    scope = make_scope()
    unary = sync_channel(serve_sync(scope.server_interceptors())).unary_unary(_svc.path("Unary"))
    assert unary(b"ok", timeout=30) == b"reply:ok"
    [doc] = wait_for_logs(scope, 1, side="server")
    assert doc["grpc.code"] == "OK" and doc["client.address"]
    assert "grpc.request.deadline_seconds" not in doc
    assert _errors(scope) == 1


def test_raising_method_filter_is_counted_not_raised(make_scope: Callable[..., rpcscope.Scope],
                                                     serve_sync: Callable[..., int],
                                                     sync_channel: Callable[..., grpc.Channel]
                                                     ) -> None:
    def bad_filter(method: str) -> bool:
        raise ValueError("filter bug")

    scope = make_scope(method_filter=bad_filter)
    observed = _roundtrip(scope, serve_sync, sync_channel)
    assert observed == _expected(serve_sync, sync_channel)
    errors = _errors(scope)
    assert errors is not None
    assert errors >= 1


def test_failing_tracing_is_counted_not_raised(make_scope: Callable[..., rpcscope.Scope],
                                               serve_sync: Callable[..., int],
                                               sync_channel: Callable[..., grpc.Channel],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any) -> Any:
        raise RuntimeError("tracing broken")

    from rpcscope.collector import _core

    monkeypatch.setattr(_core, "next_call_number", boom)  # the server's trace, ids mode
    monkeypatch.setattr(Tracing, "start_client", boom)
    monkeypatch.setattr(Tracing, "outgoing_metadata", boom)
    scope = make_scope()
    assert _roundtrip(scope, serve_sync, sync_channel) == _expected(serve_sync, sync_channel)
    # 12 calls: each fails to start a trace on both sides and to inject on the client.
    assert _errors(scope) == 36
    assert sample_value(scope.registry, "grpc_server_handled_total",
                        labels("Unary", grpc_code="OK")) == 1


def test_aio_failing_metrics_keep_rpcs(make_scope: Callable[..., rpcscope.Scope],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    scope = make_scope(access_log=CaptureSink())

    def broken(self: Any, record: Any) -> None:
        raise RuntimeError("metrics backend broken")

    _break_metrics(monkeypatch, broken, scope)

    async def run(interceptors: bool) -> list[Observed]:
        async with aio_server(scope.aio_server_interceptors() if interceptors else ()) as port, \
                grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=(
                    scope.aio_client_interceptors() if interceptors else None)) as ch:
            return [await call_aio(ch, kind, OUTCOMES[name]) for kind in KINDS
                    for name in ("ok", "abort", "raise")]

    assert asyncio.run(run(True)) == asyncio.run(run(False))
    errors = _errors(scope)
    assert errors is not None
    assert errors >= 12  # at least every server-side finish; client ones may still be queued
