"""Where rpcscope must behave exactly as go-grpc-prometheus / go-grpc-middleware v2 do.

Dashboards and alert rules written for Go services match on label values as Go exposes them,
and Go's v2 tests count a stream the client cancels as ``Canceled``. These run the same call
sequences against rpcscope, on sync and aio servers.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import _svc
import grpc
import pytest
from _calls import aio_server, labels

import rpcscope
from rpcscope import schema
from rpcscope.testing import sample_value, wait_until

CALLS = 10
STREAMING = ["ServerStream", "ClientStream", "Bidi"]


def _handled(scope: rpcscope.Scope, method: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for code in schema.CODES:
        value = sample_value(scope.registry, schema.SERVER_HANDLED,
                             labels(method, grpc_code=code))
        if value:
            out[code] = value
    return out


def _requests(first: bytes, stop: threading.Event) -> Iterator[bytes]:
    """One request, then hold the stream open (no half-close) until the test cancels it."""
    yield first
    stop.wait(10)


@pytest.mark.parametrize("method", STREAMING)
def test_sync_stream_cancelled_by_the_client_counts_canceled(
        method: str, make_scope: Callable[..., rpcscope.Scope], serve_sync: Callable[..., int],
        sync_channel: Callable[..., grpc.Channel]) -> None:
    scope = make_scope()
    channel = sync_channel(serve_sync(scope.server_interceptors()))
    for _ in range(CALLS):
        stop = threading.Event()
        if method == "ServerStream":
            call: Any = channel.unary_stream(_svc.path(method))(b"sleep:0.2")
            next(call)  # the handler is running: it sent its first response
        elif method == "Bidi":
            call = channel.stream_stream(_svc.path(method))(_requests(b"ok", stop))
            next(call)  # the handler consumed the request and answered it
        else:
            call = channel.stream_unary(_svc.path(method)).future(_requests(b"ok", stop))
            wait_until(lambda: sample_value(scope.registry, schema.SERVER_MSG_RECEIVED,
                                            labels(method)) is not None)
        call.cancel()
        stop.set()
    wait_until(lambda: sum(_handled(scope, method).values()) == CALLS,
               message=f"{CALLS} {method} calls handled")
    assert _handled(scope, method) == {"Canceled": CALLS}


@pytest.mark.parametrize("method", STREAMING)
def test_aio_stream_cancelled_by_the_client_counts_canceled(
        method: str, make_scope: Callable[..., rpcscope.Scope]) -> None:
    scope = make_scope()

    async def run() -> None:
        async with aio_server(scope.aio_server_interceptors()) as port, \
                grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for i in range(CALLS):
                if method == "ServerStream":
                    call: Any = channel.unary_stream(_svc.path(method))(b"sleep:0.2")
                    await call.read()
                elif method == "Bidi":
                    call = channel.stream_stream(_svc.path(method))()
                    await call.write(b"ok")
                    await call.read()
                else:
                    call = channel.stream_unary(_svc.path(method))()
                    await call.write(b"ok")
                    await asyncio.to_thread(wait_until, lambda i=i: (sample_value(
                        scope.registry, schema.SERVER_STARTED, labels(method)) or 0) > i)
                call.cancel()
            await asyncio.to_thread(
                wait_until, lambda: sum(_handled(scope, method).values()) == CALLS)

    asyncio.run(run())
    handled = _handled(scope, method)
    if method == "ServerStream":
        assert handled == {"Canceled": CALLS}
    else:
        # The one race grpc.aio leaves when the request stream is what the cancellation ends:
        # the end of the stream and the cancellation reach the event loop as two events, and
        # on a busy machine the handler can finish (and grpc send its OK) between them. The
        # server then did send OK, as Go's would if its handler returned before the
        # cancellation. Without rpcscope's handling every such call counts OK; with it, most
        # count Canceled (all of them on an idle machine).
        assert handled.get("Canceled", 0) >= CALLS // 2, handled
        assert set(handled) <= {"Canceled", "OK"}, handled


def test_bucket_bounds_are_exposed_as_go_writes_them(
        make_scope: Callable[..., rpcscope.Scope], serve_sync: Callable[..., int],
        sync_channel: Callable[..., grpc.Channel]) -> None:
    """``le="1"``, not ``le="1.0"``, in both exposition formats: Prometheus 2.x stores the
    label as exposed, and rules written against Go services match ``le="1"``."""
    scope = make_scope(histogram_buckets=(0.005, 0.25, 1, 2.5, 10, 1_000_000))
    unary = sync_channel(serve_sync(scope.server_interceptors())).unary_unary(_svc.path("Unary"))
    unary(b"ok")
    server = scope.serve_metrics(port=0, addr="127.0.0.1")
    for accept in ("text/plain", "application/openmetrics-text; version=1.0.0"):
        request = urllib.request.Request(server.url, headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
        les = {line.split('le="')[1].split('"')[0] for line in text.splitlines()
               if line.startswith("grpc_server_handling_seconds_bucket")}
        assert les == {"0.005", "0.25", "1", "2.5", "10", "1e+06", "+Inf"}, accept


# --- what users of the anchors expect -------------------------------------------------------


def test_default_registry_is_prometheus_clients_global_one(sink: Any) -> None:
    """An app serving prometheus_client's REGISTRY shows rpcscope's series unchanged; a second
    open Scope on it is a clear error; after close() a new one takes it over."""
    from prometheus_client import REGISTRY

    scope = rpcscope.Scope(service="s", access_log=sink)
    try:
        assert scope.registry is REGISTRY
        assert any(m.name == "grpc_server_handled" for m in REGISTRY.collect())
        with pytest.raises(rpcscope.ConfigError, match="registry=prometheus_client"):
            rpcscope.Scope(service="other", access_log=sink)
    finally:
        scope.close()
    again = rpcscope.Scope(service="s", access_log=sink)
    again.close()


def test_a_callers_traceparent_is_continued_outside_a_server_call(
        make_scope: Callable[..., rpcscope.Scope], serve_sync: Callable[..., int],
        sync_channel: Callable[..., grpc.Channel], sink: Any) -> None:
    scope = make_scope()
    channel = sync_channel(serve_sync(scope.server_interceptors()), scope.client_interceptors())
    parent = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    channel.unary_unary(_svc.path("Unary"))(b"ok", metadata=(("traceparent", parent),))
    scope.flush()
    [client] = sink.access_logs("client")
    [server] = sink.access_logs("server")
    assert client["trace.id"] == server["trace.id"] == "a" * 32
    assert client["parent.id"] == "b" * 16
    assert server["parent.id"] == client["span.id"]  # one traceparent reached the server


def test_unknown_method_keeps_the_sent_path_in_the_log(
        make_scope: Callable[..., rpcscope.Scope], serve_sync: Callable[..., int],
        sync_channel: Callable[..., grpc.Channel], sink: Any) -> None:
    scope = make_scope(log_client_calls=False)
    channel = sync_channel(serve_sync(scope.server_interceptors()))
    typo = "/test.v1.Echo/Unray" + "x" * 300
    with pytest.raises(grpc.RpcError):
        channel.unary_unary(typo)(b"ok")
    scope.flush()
    [doc] = sink.access_logs("server")
    assert doc["rpc.method"] == "unknown"
    assert doc[schema.FIELD_UNKNOWN_PATH] == typo[:schema.UNKNOWN_PATH_MAX]


def test_tracer_provider_option_makes_real_spans(make_scope: Callable[..., rpcscope.Scope],
                                                 serve_sync: Callable[..., int],
                                                 sync_channel: Callable[..., grpc.Channel]
                                                 ) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    scope = make_scope(tracer_provider=provider)
    channel = sync_channel(serve_sync(scope.server_interceptors()), scope.client_interceptors())
    channel.unary_unary(_svc.path("Unary"))(b"ok")
    wait_until(lambda: len(exporter.get_finished_spans()) == 2)
    kinds = sorted(span.kind.name for span in exporter.get_finished_spans())
    assert kinds == ["CLIENT", "SERVER"]
