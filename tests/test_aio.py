"""grpc.aio server and client interceptors: every RPC kind x every outcome, exact telemetry.

Mirrors tests/test_server.py for ``grpc.aio``: an instrumented aio client calls an instrumented
aio server (same Scope) inside ``asyncio.run``; both sides' samples and log records are asserted.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import _svc
import grpc
import pytest
from _calls import KINDS, OUTCOMES, STATUS, aio_server, call_aio, check_log, check_metrics, labels
from prometheus_client import CollectorRegistry

import rpcscope
from rpcscope.testing import CaptureSink, sample_value, wait_for_logs


async def wait_handled(registry: object, side: str, kind: str, code: str,
                       timeout: float = 5.0) -> None:
    name, want = f"grpc_{side}_handled_total", labels(kind, grpc_code=code)
    for _ in range(int(timeout / 0.005)):
        if sample_value(registry, name, want):  # type: ignore[arg-type]
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{name}{want} never appeared")


@pytest.mark.parametrize("outcome", list(OUTCOMES), ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_aio_call_telemetry(kind: str, outcome: str, scope: rpcscope.Scope,
                            handler_sleeping: threading.Event) -> None:
    o = OUTCOMES[outcome]

    async def scenario() -> grpc.StatusCode:
        async with aio_server(scope.aio_server_interceptors()) as port, grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", interceptors=scope.aio_client_interceptors()) as channel:
            seen = await call_aio(channel, kind, o, reached=handler_sleeping.is_set)
            # Both sides finish in callbacks on this loop (a cancelled server handler, the
            # client's done-callback): wait for them before the loop closes.
            for side in ("server", "client"):
                await wait_handled(scope.registry, side, kind, o.code)
            return seen.code

    assert asyncio.run(scenario()) is STATUS[o.code]
    for side in ("server", "client"):
        check_metrics(scope.registry, side, kind, o)
        [doc] = wait_for_logs(scope, 1, side=side, method=kind)
        check_log(doc, side, kind, o)


# grpc's request iterator must not be started for handlers that read from the context instead
# (Python warned "coroutine ... was never awaited" on every such call).
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_aio_read_write_api_handlers_count_messages(scope: rpcscope.Scope) -> None:
    """Handlers using ``context.read()``/``context.write()`` instead of iterators are counted."""

    async def collect(request: object, context: grpc.aio.ServicerContext) -> bytes:
        n = 0
        while (await context.read()) is not grpc.aio.EOF:
            n += 1
        return b"%d" % n

    async def chat(request: object, context: grpc.aio.ServicerContext) -> None:
        while (message := await context.read()) is not grpc.aio.EOF:
            await context.write(message)
            await context.write(message)

    handler = grpc.method_handlers_generic_handler("test.v1.RW", {
        "Collect": grpc.stream_unary_rpc_method_handler(collect),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
    })

    async def run() -> tuple[bytes, list[bytes]]:
        async with aio_server(scope.aio_server_interceptors(), handlers=(handler,)) as port, \
                grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            total = await ch.stream_unary("/test.v1.RW/Collect")(iter([b"a", b"b", b"c"]))
            echoed = [r async for r in ch.stream_stream("/test.v1.RW/Chat")(iter([b"x", b"y"]))]
            return total, echoed

    total, echoed = asyncio.run(run())
    assert total == b"3"
    assert echoed == [b"x", b"x", b"y", b"y"]
    reg = scope.registry
    collect_labels = {"grpc_type": "client_stream", "grpc_service": "test.v1.RW",
                      "grpc_method": "Collect"}
    chat_labels = {"grpc_type": "bidi_stream", "grpc_service": "test.v1.RW",
                   "grpc_method": "Chat"}
    assert sample_value(reg, "grpc_server_msg_received_total", collect_labels) == 3
    assert sample_value(reg, "grpc_server_msg_sent_total", collect_labels) == 1
    assert sample_value(reg, "grpc_server_handled_total",
                        {**collect_labels, "grpc_code": "OK"}) == 1
    assert sample_value(reg, "grpc_server_msg_received_total", chat_labels) == 2
    assert sample_value(reg, "grpc_server_msg_sent_total", chat_labels) == 4
    assert sample_value(reg, "grpc_server_handled_total", {**chat_labels, "grpc_code": "OK"}) == 1


SYNC_ON_AIO = [name for name in OUTCOMES if name != "cancel"]


@pytest.mark.parametrize("kind", KINDS)
def test_sync_handlers_on_aio_server(kind: str, make_scope: Callable[..., rpcscope.Scope],
                                     sink: CaptureSink) -> None:
    """grpc.aio runs sync handlers in its migration pool: they are measured too, and behave
    exactly as without rpcscope. (A client cancellation is invisible to such a handler.)"""
    from concurrent.futures import ThreadPoolExecutor

    outcomes = SYNC_ON_AIO
    if kind in ("ServerStream", "Bidi"):
        # grpcio itself often never ends a sync *streaming* handler's call on an aio server when
        # it aborts or its deadline expires (the same hang without rpcscope, grpcio 1.85), so
        # those paths cannot be compared.
        outcomes = [name for name in outcomes if name in ("ok", "raise", "setcode")]
    scopes = {name: make_scope(registry=CollectorRegistry(), access_log=CaptureSink())
              for name in outcomes}

    async def run() -> None:
        with ThreadPoolExecutor(4) as pool:
            async with aio_server(handlers=(_svc.sync_handler(),), thread_pool=pool) as plain, \
                    grpc.aio.insecure_channel(f"127.0.0.1:{plain}") as plain_ch:
                for name in outcomes:
                    o, scope = OUTCOMES[name], scopes[name]
                    async with aio_server(scope.aio_server_interceptors(),
                                          handlers=(_svc.sync_handler(),),
                                          thread_pool=pool) as port, \
                            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                        seen = await call_aio(ch, kind, o)
                        await wait_handled(scope.registry, "server", kind, o.code)
                    assert seen == await call_aio(plain_ch, kind, o), name
                    assert seen.code is STATUS[o.code]

    asyncio.run(run())
    for name in outcomes:
        o, scope = OUTCOMES[name], scopes[name]
        check_metrics(scope.registry, "server", kind, o)
        [doc] = wait_for_logs(scope, 1, side="server", method=kind)
        check_log(doc, "server", kind, o)
