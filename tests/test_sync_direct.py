"""The sync server reads grpc's per-call event and state directly (Pipeline.start_server,
_server._finisher): cheaper than the context's methods, but private to grpcio. These tests fail
if the installed grpcio stops offering them (the code would then quietly fall back to the public
methods) and pin that the access log says what the context itself says."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import grpc._server
import pytest

import rpcscope
from rpcscope.testing import CaptureSink


def test_sync_calls_take_the_direct_path_and_log_what_the_context_says(
        make_scope: Callable[..., rpcscope.Scope], sink: CaptureSink,
        serve_sync: Callable[..., int], sync_channel: Callable[..., grpc.Channel],
        monkeypatch: pytest.MonkeyPatch) -> None:
    fallbacks: list[str] = []

    def counting(name: str, public: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            fallbacks.append(name)
            return public(*args, **kwargs)

        return counted

    # The public paths: the context methods the start and the status would use instead.
    for name in ("code", "is_active", "invocation_metadata"):
        monkeypatch.setattr(grpc._server._Context, name,
                            counting(name, getattr(grpc._server._Context, name)))
    seen: list[tuple[str, float]] = []

    def handler(request: bytes, context: Any) -> bytes:
        seen.append((context.peer(), context.time_remaining()))
        if request == b"notfound":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return request

    scope = make_scope()
    port = serve_sync(scope.server_interceptors(), handlers=[grpc.method_handlers_generic_handler(
        "t.v1.T", {"M": grpc.unary_unary_rpc_method_handler(handler)})])
    call = sync_channel(port).unary_unary("/t.v1.T/M")
    call(b"x", timeout=30)
    call(b"x")  # no deadline
    with pytest.raises(grpc.RpcError):
        call(b"notfound")
    scope.flush()
    docs = sink.access_logs("server")
    assert fallbacks == []  # grpcio still offers _rpc_event and _state
    assert [d["client.address"] for d in docs] == [peer for peer, _ in seen]
    # Remaining time at the call's start: what the handler saw a moment later, plus that
    # moment. (Not "<= 30": grpc rounds the timeout header up, so a server may see more.)
    assert 0 <= docs[0]["grpc.request.deadline_seconds"] - seen[0][1] < 1.0
    assert "grpc.request.deadline_seconds" not in docs[1]
    assert (docs[2]["grpc.code"], docs[2]["error.message"]) == ("NotFound", "no such thing")


class _PublicOnlyContext:
    """A context with only the public methods (a proxy, a test double, another grpcio)."""

    def invocation_metadata(self) -> Any:
        return (("user-agent", "ua/1"),)

    def peer(self) -> str:
        return "ipv4:10.0.0.1:1234"

    def time_remaining(self) -> float:
        return 2.5

    def code(self) -> Any:
        return None

    def details(self) -> Any:
        return None

    def is_active(self) -> bool:
        return True


class _OtherEventContext(_PublicOnlyContext):
    """A grpcio whose per-call event has another shape than the one read directly."""

    _rpc_event = object()


class _Details:
    """``grpc.HandlerCallDetails`` of the call the interceptor is asked to wrap."""

    method = "/t.v1.T/M"
    invocation_metadata = ()


@pytest.mark.parametrize("context", [_PublicOnlyContext(), _OtherEventContext()],
                         ids=["no-event", "other-event"])
def test_without_grpc_internals_the_public_methods_give_the_same_record(
        make_scope: Callable[..., rpcscope.Scope], sink: CaptureSink, context: Any) -> None:
    """Through the public interceptor, as grpc calls it, with such a context."""
    scope = make_scope()
    (interceptor,) = scope.server_interceptors()
    handler = grpc.unary_unary_rpc_method_handler(lambda request, ctx: b"reply")
    wrapped = interceptor.intercept_service(lambda details: handler, _Details())
    assert wrapped.unary_unary(b"x", context) == b"reply"
    scope.flush()
    (doc,) = sink.access_logs("server")
    assert doc["client.address"] == "ipv4:10.0.0.1:1234"
    assert doc["grpc.request.deadline_seconds"] == 2.5
    assert doc["grpc.request.metadata"] == {"user-agent": "ua/1"}
    assert doc["grpc.code"] == "OK"
    assert scope.stats()["instrumentation_errors"] == 0
