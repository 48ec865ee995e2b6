"""Client drivers for the test service: make one call of a kind and report what the caller saw.

``call_sync``/``call_aio`` return an :class:`Observed` (status code, details, trailing metadata,
responses received) for every outcome, including client cancellation and deadlines, so the same
driver serves the metrics/log matrix and the with/without-rpcscope identity checks.

Cancellation needs the call to have reached the handler first; callers pass ``reached``, a
predicate polled until true (e.g. "the server counted the call as started"). Streams instead wait
for the first response, which proves the handler is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import _svc
import grpc

from rpcscope import schema

KINDS = tuple(_svc.METHODS)  # Unary, ServerStream, ClientStream, Bidi
GRPC_TYPE = dict(_svc.METHODS)

#: How long a handler sleeps for cancel/deadline cases, and the deadline given to the call.
#: Sync handlers cannot be interrupted, so the sleep bounds how long those tests take.
SLEEP = 0.8
DEADLINE = 0.3


@contextlib.asynccontextmanager
async def aio_server(interceptors: Sequence[Any] = (), handlers: Sequence[Any] | None = None,
                     thread_pool: Any = None) -> AsyncIterator[int]:
    """An aio server with the aio test service on 127.0.0.1:0, for use inside ``asyncio.run``.

    ``thread_pool`` is grpc's migration pool, which runs sync handlers on an aio server.
    """
    server = grpc.aio.server(thread_pool, interceptors=list(interceptors))
    server.add_generic_rpc_handlers(tuple(handlers) if handlers else (_svc.aio_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


@dataclass
class Outcome:
    name: str
    command: str  # what the handler acts on (see tests/_svc.py)
    code: str  # expected Go code name
    level: str  # expected access-log level
    details: str | None = None  # what the server reports, when deterministic
    mode: str = "plain"  # plain | cancel | deadline
    stack_trace: bool = False


OUTCOMES = {
    o.name: o
    for o in (
        Outcome("ok", "ok", "OK", "info"),
        Outcome("abort", "abort:NOT_FOUND", "NotFound", "warn", "aborted with NOT_FOUND"),
        Outcome("abort_server_fault", "abort:UNAVAILABLE", "Unavailable", "error",
                "aborted with UNAVAILABLE"),
        Outcome("raise", "raise", "Unknown", "error", stack_trace=True),
        Outcome("setcode", "setcode:FAILED_PRECONDITION", "FailedPrecondition", "warn",
                "set without raising"),
        Outcome("cancel", f"sleep:{SLEEP}", "Canceled", "warn", mode="cancel"),
        Outcome("deadline", f"sleep:{SLEEP}", "DeadlineExceeded", "error", mode="deadline"),
    )
}

STATUS = {name: code for code, name in schema.GO_CODE_NAMES.items()}


@dataclass
class Observed:
    code: grpc.StatusCode
    details: str | None
    trailing: tuple[tuple[str, Any], ...] = ()
    responses: list[bytes] = field(default_factory=list)


def requests_for(kind: str, command: str) -> list[bytes]:
    """Client-streaming kinds send a harmless first message, then the command."""
    if kind in ("ClientStream", "Bidi"):
        return [b"ok", command.encode()]
    return [command.encode()]


def expected_messages(kind: str, outcome: Outcome) -> tuple[int, int]:
    """(messages the server receives, messages it sends) for this kind and outcome.

    A unary response counts only when the call succeeds (Go sends none with an error). Streams
    count what reached the wire: the server stream yields "0" before acting on the command (and
    continues after ``set_code``); bidi answers the first message before acting on the second.
    """
    ok = outcome.code == "OK"
    received = len(requests_for(kind, outcome.command))
    keeps_streaming = ok or outcome.name == "setcode"
    if kind in ("Unary", "ClientStream"):
        sent = 1 if ok else 0
    elif kind == "ServerStream":
        sent = _svc.STREAM_LEN if keeps_streaming else 1
    else:
        sent = 2 if keeps_streaming else 1
    return received, sent


def _wait(reached: Callable[[], Any], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not reached():
        if time.monotonic() > end:
            raise AssertionError("the call never reached the handler")
        time.sleep(0.005)


def _multicallable(channel: grpc.Channel, kind: str) -> Any:
    path = _svc.path(kind)
    if kind == "Unary":
        return channel.unary_unary(path)
    if kind == "ServerStream":
        return channel.unary_stream(path)
    if kind == "ClientStream":
        return channel.stream_unary(path)
    return channel.stream_stream(path)


def _observed_error(e: grpc.RpcError, responses: list[bytes]) -> Observed:
    return Observed(e.code(), e.details(), tuple(e.trailing_metadata() or ()), responses)


def call_sync(channel: grpc.Channel, kind: str, outcome: Outcome,
              reached: Callable[[], Any] | None = None,
              metadata: tuple[tuple[str, str], ...] | None = None) -> Observed:
    mc = _multicallable(channel, kind)
    reqs = requests_for(kind, outcome.command)
    arg: Any = reqs[0] if kind in ("Unary", "ServerStream") else iter(reqs)
    timeout = DEADLINE if outcome.mode == "deadline" else None
    streaming_out = kind in ("ServerStream", "Bidi")
    responses: list[bytes] = []

    if outcome.mode == "cancel":
        if streaming_out:
            call = mc(arg, metadata=metadata)
            responses.append(next(call))  # the handler is running: it sent a message
            if reached is not None:
                _wait(reached)
            call.cancel()
            try:
                responses.extend(call)
            except grpc.RpcError as e:
                return _observed_error(e, responses)
            raise AssertionError("cancelled stream did not raise")
        future = mc.future(arg, metadata=metadata)
        if reached is not None:
            _wait(reached)
        future.cancel()
        return Observed(future.code(), future.details(),
                        tuple(future.trailing_metadata() or ()))

    try:
        if streaming_out:
            call = mc(arg, timeout=timeout, metadata=metadata)
            for r in call:
                responses.append(r)
            return Observed(call.code(), call.details() or None,
                            tuple(call.trailing_metadata() or ()), responses)
        response, call = mc.with_call(arg, timeout=timeout, metadata=metadata)
        return Observed(call.code(), call.details() or None,
                        tuple(call.trailing_metadata() or ()), [response])
    except grpc.RpcError as e:
        return _observed_error(e, responses)


async def _await_reached(reached: Callable[[], Any], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not reached():
        if time.monotonic() > end:
            raise AssertionError("the call never reached the handler")
        await asyncio.sleep(0.005)


def _aio_multicallable(channel: grpc.aio.Channel, kind: str) -> Any:
    return _multicallable(channel, kind)


async def call_aio(channel: grpc.aio.Channel, kind: str, outcome: Outcome,
                   reached: Callable[[], Any] | None = None,
                   metadata: tuple[tuple[str, str], ...] | None = None) -> Observed:
    mc = _aio_multicallable(channel, kind)
    reqs = requests_for(kind, outcome.command)
    arg: Any = reqs[0] if kind in ("Unary", "ServerStream") else iter(reqs)
    timeout = DEADLINE if outcome.mode == "deadline" else None
    streaming_out = kind in ("ServerStream", "Bidi")
    responses: list[bytes] = []
    kwargs: dict[str, Any] = {"timeout": timeout}
    if metadata is not None:
        kwargs["metadata"] = metadata
    call = mc(arg, **kwargs)

    async def trailing() -> tuple[tuple[str, Any], ...]:
        md = await call.trailing_metadata()
        return tuple(md or ())

    if outcome.mode == "cancel":
        if streaming_out:
            responses.append(await call.read())
        if reached is not None:
            await _await_reached(reached)
        call.cancel()
        try:
            # Keep to read() after read(): grpc forbids mixing it with iteration on one call.
            await (call.read() if streaming_out else call)
        except asyncio.CancelledError:
            pass
        return Observed(await call.code(), await call.details(), await trailing(), responses)

    try:
        if streaming_out:
            async for r in call:
                responses.append(r)
        else:
            responses.append(await call)
    except grpc.aio.AioRpcError as e:
        return Observed(e.code(), e.details(), tuple(e.trailing_metadata() or ()), responses)
    return Observed(await call.code(), (await call.details()) or None, await trailing(),
                    responses)


AsyncCall = Callable[..., Awaitable[Observed]]


# --- assertions shared by the sync and aio matrices -------------------------------------------


def labels(kind: str, **extra: str) -> dict[str, str]:
    return {
        schema.LABEL_TYPE: GRPC_TYPE[kind],
        schema.LABEL_SERVICE: _svc.SERVICE,
        schema.LABEL_METHOD: kind,
        **extra,
    }


def check_metrics(registry: Any, side: str, kind: str, outcome: Outcome) -> None:
    """Exact samples of one side after exactly one call of ``kind`` ended with ``outcome``.

    ``side`` is ``server`` or ``client``; the client's sent/received mirror the server's.
    """
    from rpcscope.testing import sample_value, wait_until

    prefix = f"grpc_{side}"
    lab = labels(kind)
    code_labels = labels(kind, grpc_code=outcome.code)
    # handled is counted when the call ends, which for a cancelled sync handler is when it
    # returns, and for a client when grpc runs the done-callback: poll for it.
    wait_until(lambda: sample_value(registry, f"{prefix}_handled_total", code_labels),
               message=f"{side} handled_total{{grpc_code={outcome.code}}}")
    received, sent = expected_messages(kind, outcome)
    if side == "client":
        received, sent = sent, received
    assert sample_value(registry, f"{prefix}_started_total", lab) == 1
    assert sample_value(registry, f"{prefix}_handled_total", code_labels) == 1
    others = [
        s for s in _samples(registry, f"{prefix}_handled_total")
        if s.labels[schema.LABEL_METHOD] == kind and s.value
        and s.labels[schema.LABEL_CODE] != outcome.code
    ]
    assert others == []
    got = (sample_value(registry, f"{prefix}_msg_received_total", lab),
           sample_value(registry, f"{prefix}_msg_sent_total", lab))
    assert got == (received, sent), f"{side} (received, sent)"
    assert sample_value(registry, f"{prefix}_handling_seconds_count", lab) == 1
    assert sample_value(registry, f"{prefix}_handling_seconds_bucket", {**lab, "le": "+Inf"}) == 1


def _samples(registry: Any, name: str) -> list[Any]:
    return [s for fam in registry.collect() for s in fam.samples if s.name == name]


def check_log(doc: dict[str, Any], side: str, kind: str, outcome: Outcome) -> None:
    """The ECS access-log fields a user's dashboards and alerts depend on."""
    import re

    assert doc["log.logger"] == schema.ACCESS_LOGGER
    assert doc["log.level"] == outcome.level
    assert doc["grpc.code"] == outcome.code
    assert doc["rpc.grpc.status_code"] == STATUS[outcome.code].value[0]
    assert doc["rpc.system"] == "grpc"
    assert doc["rpc.service"] == _svc.SERVICE
    assert doc["rpc.method"] == kind
    assert doc["grpc.type"] == GRPC_TYPE[kind]
    assert doc["grpc.component"] == side
    assert doc["service.name"] == "test-svc"
    assert doc["ecs.version"] == schema.ECS_VERSION
    assert isinstance(doc["event.duration"], int)
    assert doc["event.duration"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", doc["@timestamp"])
    assert re.fullmatch(r"[0-9a-f]{32}", doc["trace.id"])
    assert re.fullmatch(r"[0-9a-f]{16}", doc["span.id"])
    if outcome.code == "OK":
        assert doc["event.outcome"] == "success"
        assert not [k for k in doc if k.startswith("error.")]
        return
    assert doc["event.outcome"] == "failure"
    assert doc["error.message"]
    if outcome.stack_trace and side == "server":
        # The handler's own exception, with the traceback pointing into the handler.
        assert doc["error.type"] == "RuntimeError"
        assert doc["error.message"] == "boom from handler"
        assert "_svc.py" in doc["error.stack_trace"]
        assert "RuntimeError: boom from handler" in doc["error.stack_trace"]
    else:
        assert doc["error.type"] == outcome.code
        assert "error.stack_trace" not in doc
        if outcome.details is not None:
            assert doc["error.message"] == outcome.details
