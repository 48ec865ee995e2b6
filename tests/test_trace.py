"""Trace context: W3C traceparent client → server (ids mode), nested calls, and OTel SDK spans."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import _svc
import grpc
import pytest
from _calls import aio_server
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

import rpcscope
from rpcscope.testing import CaptureSink, wait_for_logs

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01")


def _echo_traceparent(request: bytes, context: Any) -> bytes:
    md = dict(context.invocation_metadata())
    return md.get("traceparent", "").encode()


def _reflector() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler("test.v1.Reflect", {
        "Headers": grpc.unary_unary_rpc_method_handler(_echo_traceparent),
    })


def test_client_writes_traceparent_and_server_continues_it(
        scope: rpcscope.Scope, serve_sync: Callable[..., int],
        sync_channel: Callable[..., grpc.Channel]) -> None:
    port = serve_sync(scope.server_interceptors(), handlers=(_reflector(), _svc.sync_handler()))
    channel = sync_channel(port, scope.client_interceptors())

    header = channel.unary_unary("/test.v1.Reflect/Headers")(b"").decode()
    m = TRACEPARENT.fullmatch(header)
    assert m, header
    [client] = wait_for_logs(scope, 1, side="client", method="Headers")
    assert (m.group(1), m.group(2)) == (client["trace.id"], client["span.id"])

    channel.unary_unary("/test.v1.Echo/Unary")(b"ok")
    [server] = wait_for_logs(scope, 1, side="server", method="Unary")
    [client] = wait_for_logs(scope, 1, side="client", method="Unary")
    assert server["trace.id"] == client["trace.id"]
    assert server["parent.id"] == client["span.id"]
    assert server["span.id"] != client["span.id"]
    assert "parent.id" not in client  # a root call


@pytest.mark.parametrize(("header", "continued"), [
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", True),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),  # all-zero trace id
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", False),  # upper case
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),  # forbidden version
    ("garbage", False),
])
def test_incoming_traceparent_is_validated(header: str, continued: bool, scope: rpcscope.Scope,
                                           serve_sync: Callable[..., int],
                                           sync_channel: Callable[..., grpc.Channel]) -> None:
    channel = sync_channel(serve_sync(scope.server_interceptors()))
    channel.unary_unary("/test.v1.Echo/Unary")(b"ok", metadata=(("traceparent", header),))
    [doc] = wait_for_logs(scope, 1, side="server")
    assert re.fullmatch(r"[0-9a-f]{32}", doc["trace.id"])
    if continued:
        assert doc["trace.id"] == header[3:35]
        assert doc["parent.id"] == header[36:52]
    else:
        assert doc["trace.id"] != header[3:35]
        assert "parent.id" not in doc


def _front_handler(backend: grpc.Channel) -> grpc.GenericRpcHandler:
    """A handler that calls the backend through an instrumented channel (a service hop)."""
    def call(request: bytes, context: Any) -> bytes:
        return backend.unary_unary("/test.v1.Echo/Unary")(request)

    return grpc.method_handlers_generic_handler("test.v1.Front", {
        "Call": grpc.unary_unary_rpc_method_handler(call),
    })


def test_nested_call_continues_the_trace(make_scope: Callable[..., rpcscope.Scope],
                                         serve_sync: Callable[..., int],
                                         sync_channel: Callable[..., grpc.Channel]) -> None:
    """client → front server → (client) → backend server: one trace, parent links in order."""
    front_sink, back_sink = CaptureSink(), CaptureSink()
    from prometheus_client import CollectorRegistry

    front = make_scope(access_log=front_sink, registry=CollectorRegistry())
    back = make_scope(access_log=back_sink, registry=CollectorRegistry())
    backend = sync_channel(serve_sync(back.server_interceptors()), front.client_interceptors())
    front_port = serve_sync(front.server_interceptors(), handlers=(_front_handler(backend),))
    plain = sync_channel(front_port)

    assert plain.unary_unary("/test.v1.Front/Call")(b"ok") == b"reply:ok"
    [front_server] = wait_for_logs(front, 1, side="server")
    [hop] = wait_for_logs(front, 1, side="client")
    [back_server] = wait_for_logs(back, 1, side="server")
    trace_id = front_server["trace.id"]
    assert hop["trace.id"] == back_server["trace.id"] == trace_id
    assert hop["parent.id"] == front_server["span.id"]
    assert back_server["parent.id"] == hop["span.id"]


def test_aio_client_writes_traceparent(scope: rpcscope.Scope) -> None:
    import asyncio


    async def reflect(request: bytes, context: Any) -> bytes:
        return dict(context.invocation_metadata()).get("traceparent", "").encode()

    handler = grpc.method_handlers_generic_handler("test.v1.Reflect", {
        "Headers": grpc.unary_unary_rpc_method_handler(reflect)})

    async def run() -> str:
        async with aio_server(scope.aio_server_interceptors(), handlers=(handler,)) as port, \
                grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                          interceptors=scope.aio_client_interceptors()) as ch:
            return (await ch.unary_unary("/test.v1.Reflect/Headers")(b"")).decode()

    header = asyncio.run(run())
    m = TRACEPARENT.fullmatch(header)
    assert m, header
    [client] = wait_for_logs(scope, 1, side="client")
    [server] = wait_for_logs(scope, 1, side="server")
    assert m.group(1) == client["trace.id"] == server["trace.id"]
    assert m.group(2) == client["span.id"] == server["parent.id"]


# --- OpenTelemetry SDK mode ----------------------------------------------------------------------


@pytest.fixture
def otel_spans() -> Iterator[InMemorySpanExporter]:
    """A real SDK TracerProvider as the global one, reset afterwards.

    OTel lets the global provider be set once per process; its own test suite resets the
    private ``_TRACER_PROVIDER``/``_TRACER_PROVIDER_SET_ONCE`` pair, and so do we, so other tests
    keep running in ids mode.
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    saved = trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved


def test_otel_server_span_is_child_of_client_span(otel_spans: InMemorySpanExporter,
                                                  scope: rpcscope.Scope,
                                                  serve_sync: Callable[..., int],
                                                  sync_channel: Callable[..., grpc.Channel]
                                                  ) -> None:
    channel = sync_channel(serve_sync(scope.server_interceptors()), scope.client_interceptors())
    assert channel.unary_unary("/test.v1.Echo/Unary")(b"ok") == b"reply:ok"
    [server_doc] = wait_for_logs(scope, 1, side="server")
    wait_for_logs(scope, 1, side="client")
    spans = {s.kind: s for s in otel_spans.get_finished_spans()}
    server, client = spans[SpanKind.SERVER], spans[SpanKind.CLIENT]
    assert server.name == client.name == "test.v1.Echo/Unary"
    assert server.context.trace_id == client.context.trace_id
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.attributes["rpc.system"] == "grpc"
    assert server.status.status_code is StatusCode.UNSET
    # The access log carries the span's ids, so logs link to the trace.
    assert server_doc["trace.id"] == f"{server.context.trace_id:032x}"
    assert server_doc["span.id"] == f"{server.context.span_id:016x}"


@pytest.mark.parametrize("kind", ["Unary", "ServerStream"])
def test_otel_uncaught_exception_marks_server_span(kind: str, otel_spans: InMemorySpanExporter,
                                                   scope: rpcscope.Scope,
                                                   serve_sync: Callable[..., int],
                                                   sync_channel: Callable[..., grpc.Channel]
                                                   ) -> None:
    channel = sync_channel(serve_sync(scope.server_interceptors()), scope.client_interceptors())
    with pytest.raises(grpc.RpcError) as info:
        if kind == "Unary":
            channel.unary_unary("/test.v1.Echo/Unary")(b"raise")
        else:
            list(channel.unary_stream("/test.v1.Echo/ServerStream")(b"raise"))
    assert info.value.code() is grpc.StatusCode.UNKNOWN
    wait_for_logs(scope, 1, side="server")
    wait_for_logs(scope, 1, side="client")
    spans = {s.kind: s for s in otel_spans.get_finished_spans()}
    server = spans[SpanKind.SERVER]
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes["rpc.grpc.status_code"] == 2
    events = [e for e in server.events if e.name == "exception"]
    assert len(events) == 1
    assert events[0].attributes["exception.type"] == "RuntimeError"
    assert events[0].attributes["exception.message"] == "boom from handler"
    client = spans[SpanKind.CLIENT]
    assert client.status.status_code is StatusCode.ERROR
    assert client.attributes["rpc.grpc.status_code"] == 2


def test_otel_client_fault_is_not_a_server_span_error(otel_spans: InMemorySpanExporter,
                                                      scope: rpcscope.Scope,
                                                      serve_sync: Callable[..., int],
                                                      sync_channel: Callable[..., grpc.Channel]
                                                      ) -> None:
    channel = sync_channel(serve_sync(scope.server_interceptors()))
    with pytest.raises(grpc.RpcError):
        channel.unary_unary("/test.v1.Echo/Unary")(b"abort:NOT_FOUND")
    wait_for_logs(scope, 1, side="server")
    [server] = otel_spans.get_finished_spans()
    assert server.attributes["rpc.grpc.status_code"] == 5
    assert server.status.status_code is StatusCode.UNSET
    assert [e for e in server.events if e.name == "exception"] == []
