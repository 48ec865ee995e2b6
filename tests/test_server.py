"""Sync server and client interceptors: every RPC kind x every outcome, exact telemetry.

One call per test through an instrumented sync client into an instrumented sync server (same
Scope), then the exact samples on both sides and both access-log records are asserted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import _svc
import grpc
import pytest
from _calls import KINDS, OUTCOMES, STATUS, aio_server, call_sync, check_log, check_metrics, labels

import rpcscope
from rpcscope.testing import CaptureSink, sample_value, series, wait_for_logs, wait_until


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
        [doc] = wait_for_logs(scope, 1, side=side, method=kind)
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
    docs = wait_for_logs(scope, 8, side="server")
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
    wait_for_logs(scope, 1, side="server")
    assert sink.access_logs(side="client") == []


def test_abandoned_stream_is_handled_exactly_once(
        scope: rpcscope.Scope, serve_sync: Callable[..., int],
        sync_channel: Callable[..., grpc.Channel]) -> None:
    """A client reading 1 of 3 streamed messages then cancelling: one handled, Canceled, no
    leak (the handler sleeps before its second message, so the cancel finds it mid-stream)."""
    port = serve_sync(scope.server_interceptors())
    call = sync_channel(port).unary_stream("/test.v1.Echo/ServerStream")(b"sleep:0.3")
    assert next(call) == b"0"
    call.cancel()
    reg = scope.registry

    def handled() -> float:
        return sum(s["value"] for s in _handled(reg, "ServerStream"))

    wait_until(handled, message="the abandoned stream to be handled")
    [only] = _handled(reg, "ServerStream")
    assert only == {"code": "Canceled", "value": 1}
    assert sample_value(reg, "grpc_server_started_total", labels("ServerStream")) == 1


def _handled(reg: object, method: str) -> list[dict[str, object]]:
    return [
        {"code": s.labels["grpc_code"], "value": s.value}
        for fam in reg.collect()  # type: ignore[attr-defined]
        for s in fam.samples
        if s.name == "grpc_server_handled_total" and s.labels["grpc_method"] == method and s.value
    ]


# --- cardinality guard


def _series_count(registry: object) -> int:
    return sum(len(fam.samples) for fam in registry.collect())  # type: ignore[attr-defined]


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "aio"])
def test_unknown_methods_collapse_into_one_series(aio: bool, scope: rpcscope.Scope,
                                                   serve_sync: Callable[..., int],
                                                   sync_channel: Callable[..., grpc.Channel]
                                                   ) -> None:
    """1,000 random method paths: all Unimplemented under grpc_service="unknown", no new series."""
    import asyncio
    import random
    import string


    reg = scope.registry
    rng = random.Random(7)
    paths = [
        "/" + "".join(rng.choices(string.ascii_letters + ".", k=12)) + "/"
        + "".join(rng.choices(string.ascii_letters, k=8))
        for _ in range(1000)
    ]
    unknown = {"grpc_type": "bidi_stream", "grpc_service": "unknown", "grpc_method": "unknown"}
    seen: list[tuple[grpc.StatusCode, str | None]] = []
    sizes: list[int] = []

    def size_after(i: int) -> None:
        if i in (10, 999):
            sizes.append(_series_count(reg))

    if aio:
        async def run() -> None:
            async with aio_server(scope.aio_server_interceptors()) as port, \
                    grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                for i, p in enumerate(paths):
                    try:
                        await ch.unary_unary(p)(b"x")
                    except grpc.aio.AioRpcError as e:
                        seen.append((e.code(), e.details()))
                    size_after(i)
        asyncio.run(run())
    else:
        channel = sync_channel(serve_sync(scope.server_interceptors()))
        for i, p in enumerate(paths):
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary(p)(b"x")
            seen.append((info.value.code(), info.value.details()))
            size_after(i)

    assert set(seen) == {(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")}
    assert len(seen) == 1000
    assert sizes[0] == sizes[1]  # the series set stopped growing after the first unknown call
    assert sample_value(reg, "grpc_server_started_total", unknown) == 1000
    assert sample_value(reg, "grpc_server_handled_total",
                        {**unknown, "grpc_code": "Unimplemented"}) == 1000
    services = {s["grpc_service"] for s in series(reg, "grpc_server_started_total")}
    assert services == {"unknown"}
    wait_for_logs(scope, 1000, side="server", timeout=10)
    # What the caller sees is what grpc answers without rpcscope.
    plain = sync_channel(serve_sync())
    with pytest.raises(grpc.RpcError) as bare:
        plain.unary_unary(paths[0])(b"x")
    assert (bare.value.code(), bare.value.details()) == seen[0]


def test_max_methods_overflow_collapses_into_unknown(make_scope: Callable[..., rpcscope.Scope],
                                                     serve_sync: Callable[..., int],
                                                     sync_channel: Callable[..., grpc.Channel]
                                                     ) -> None:
    """Past ``max_methods`` distinct methods, further real methods count as unknown too."""
    scope = make_scope(max_methods=2)
    channel = sync_channel(serve_sync(scope.server_interceptors()))
    channel.unary_unary("/test.v1.Echo/Unary")(b"ok")
    list(channel.unary_stream("/test.v1.Echo/ServerStream")(b"ok"))
    channel.stream_unary("/test.v1.Echo/ClientStream")(iter([b"ok"]))
    list(channel.stream_stream("/test.v1.Echo/Bidi")(iter([b"ok"])))
    reg = scope.registry
    methods = {s["grpc_method"] for s in series(reg, "grpc_server_started_total")}
    assert methods == {"Unary", "ServerStream", "unknown"}
    unknown = {"grpc_type": "bidi_stream", "grpc_service": "unknown", "grpc_method": "unknown"}
    assert sample_value(reg, "grpc_server_started_total", unknown) == 2
    # A streaming call is counted handled when grpc ends it, which may be just after the
    # client has its status (see the server finisher: a cancellation is known only then).
    wait_until(lambda: sample_value(reg, "grpc_server_handled_total",
                                    {**unknown, "grpc_code": "OK"}) == 2)


# --- InitializeMetrics


def _shop_descriptor() -> object:
    try:
        from rpcscope.example_shop import shop_pb2
    except ImportError:  # examples not installed: build the same service by hand
        from google.protobuf import descriptor_pb2, descriptor_pool

        fdp = descriptor_pb2.FileDescriptorProto(name="shop_t.proto", package="shop.v1")
        fdp.message_type.add(name="M")
        svc = fdp.service.add(name="Shop")
        for name, cs, ss in (("GetProduct", False, False), ("ListProducts", False, True),
                             ("UploadInventory", True, False), ("Chat", True, True)):
            svc.method.add(name=name, input_type=".shop.v1.M", output_type=".shop.v1.M",
                           client_streaming=cs, server_streaming=ss)
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fdp)
        return pool.FindServiceByName("shop.v1.Shop")
    return shop_pb2.DESCRIPTOR.services_by_name["Shop"]


def test_initialize_metrics_precreates_zero_series(scope: rpcscope.Scope) -> None:
    from rpcscope import schema

    assert scope.initialize_metrics(_shop_descriptor()) == 4
    reg = scope.registry
    expected = {"GetProduct": "unary", "ListProducts": "server_stream",
                "UploadInventory": "client_stream", "Chat": "bidi_stream"}
    for method, grpc_type in expected.items():
        lab = {"grpc_type": grpc_type, "grpc_service": "shop.v1.Shop", "grpc_method": method}
        assert sample_value(reg, "grpc_server_started_total", lab) == 0
        assert sample_value(reg, "grpc_server_msg_received_total", lab) == 0
        assert sample_value(reg, "grpc_server_msg_sent_total", lab) == 0
        assert sample_value(reg, "grpc_server_handling_seconds_count", lab) == 0
        for code in schema.CODES:
            assert sample_value(reg, "grpc_server_handled_total", {**lab, "grpc_code": code}) == 0
    handled = series(reg, "grpc_server_handled_total")
    assert len(handled) == 4 * 17
    assert len(schema.CODES) == 17


def test_initialize_metrics_rejects_wrong_argument(scope: rpcscope.Scope) -> None:
    with pytest.raises(TypeError, match="initialize_metrics"):
        scope.initialize_metrics("shop.v1.Shop")


# --- filters


def test_health_and_reflection_excluded_by_default(scope: rpcscope.Scope,
                                                   serve_sync: Callable[..., int],
                                                   sync_channel: Callable[..., grpc.Channel],
                                                   sink: CaptureSink) -> None:
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

    server = grpc.server(ThreadPoolExecutor(2), interceptors=scope.server_interceptors())
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    reflection.enable_server_reflection((reflection.SERVICE_NAME,), server)
    server.add_generic_rpc_handlers((_svc.sync_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        channel = sync_channel(port)
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(refl.ServerReflectionInfo(iter(
            [reflection_pb2.ServerReflectionRequest(list_services="")])))
        assert answers
        channel.unary_unary("/test.v1.Echo/Unary")(b"ok")
        wait_for_logs(scope, 1, side="server")
        services = {s["grpc_service"] for s in series(scope.registry, "grpc_server_started_total")}
        assert services == {"test.v1.Echo"}
        scope.flush()
        assert {d["rpc.service"] for d in sink.access_logs()} == {"test.v1.Echo"}
    finally:
        server.stop(None)


def test_user_method_filter_excludes_calls(make_scope: Callable[..., rpcscope.Scope],
                                           serve_sync: Callable[..., int],
                                           sync_channel: Callable[..., grpc.Channel],
                                           sink: CaptureSink) -> None:
    scope = make_scope(method_filter=lambda m: not m.endswith("/Unary"))
    channel = sync_channel(serve_sync(scope.server_interceptors()), scope.client_interceptors())
    assert channel.unary_unary("/test.v1.Echo/Unary")(b"ok") == b"reply:ok"
    assert channel.stream_unary("/test.v1.Echo/ClientStream")(iter([b"ok"])) == b"reply:ok"
    wait_for_logs(scope, 2)
    for side in ("server", "client"):
        methods = {s["grpc_method"] for s in series(scope.registry, f"grpc_{side}_started_total")}
        assert methods == {"ClientStream"}
    assert {d["rpc.method"] for d in sink.access_logs()} == {"ClientStream"}


def test_kill_switch_disables_everything(monkeypatch: pytest.MonkeyPatch,
                                         make_scope: Callable[..., rpcscope.Scope],
                                         serve_sync: Callable[..., int],
                                         sync_channel: Callable[..., grpc.Channel],
                                         sink: CaptureSink) -> None:
    monkeypatch.setenv("RPCSCOPE_DISABLED", "true")
    scope = make_scope()
    assert scope.server_interceptors() == []
    assert scope.aio_server_interceptors() == []
    assert scope.client_interceptors() == []
    assert scope.aio_client_interceptors() == []
    channel = sync_channel(serve_sync(scope.server_interceptors()), scope.client_interceptors())
    assert channel.unary_unary("/test.v1.Echo/Unary")(b"ok") == b"reply:ok"
    scope.flush()
    assert sink.documents == []
    assert series(scope.registry, "grpc_server_started_total") == []
    assert series(scope.registry, "grpc_client_started_total") == []
