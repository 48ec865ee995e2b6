"""Client interceptors (sync channels via ``grpc.intercept_channel`` and ``grpc.aio`` channels).

A record opens when the call is made and closes in the call's done-callback, which grpc runs when
the status arrives, so ``handled`` and the histogram see the whole call for every RPC kind,
including futures and streams the caller abandons. Trace context is written into the outgoing
metadata (``traceparent``), continuing the trace of the server call we are inside, if any.
"""

from __future__ import annotations

import collections
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from rpcscope import schema
from rpcscope.collector._core import CallRecord, MethodInfo, Pipeline, go_code
from rpcscope.collector._methods import MethodTable


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    pass


def _method_name(method: Any) -> str:
    return method.decode("utf-8", "replace") if isinstance(method, bytes) else str(method)


class _ClientBase:
    def __init__(self, pipe: Pipeline, table: MethodTable) -> None:
        self._pipe = pipe
        self._table = table

    def _open(self, details: Any, grpc_type: str) -> CallRecord | None:
        try:
            info: MethodInfo | None = self._table.lookup(_method_name(details.method), grpc_type)
        except Exception:
            # e.g. a user method_filter that raises: the call goes out uninstrumented.
            self._pipe.errors.record("lookup")
            return None
        if info is None:
            return None
        return self._pipe.start_client(info, details.timeout, details.metadata)

    def _outgoing(self, record: CallRecord) -> list[tuple[str, str]]:
        tracing = self._pipe.tracing
        if tracing is None:
            return []
        try:
            return tracing.outgoing_metadata(record)
        except Exception:
            self._pipe.errors.record("inject")
            return []


    def _done_callback(self, record: CallRecord, unary_in: bool,
                       stream_end: _StreamEnd | None = None) -> Callable[[Any], None]:
        pipe = self._pipe

        def done(call: Any) -> None:
            try:
                code = _now(call.code())
                record.code = go_code(code)
                if record.code != "OK":
                    details = _now(call.details())
                    record.details = details or None
                elif unary_in:
                    record.msgs_in = 1
            except Exception:
                pipe.errors.record("client-status")
            if stream_end is None or stream_end.arrive():
                pipe.finish(record)

        return done

    def _fail(self, record: CallRecord, error: BaseException) -> None:
        record.error = error
        record.code = go_code(error.code()) if isinstance(error, grpc.RpcError) and hasattr(
            error, "code") else "Unknown"
        self._pipe.finish(record)


def _merged(metadata: Any, extra: list[tuple[str, str]]) -> list[tuple[str, Any]]:
    """The caller's metadata with the propagation headers in ``extra`` set: a header the
    caller set itself is replaced (the call continues it: see Tracing.start_client), never
    sent twice."""
    keys = {key for key, _ in extra}
    merged = [(k, v) for k, v in (metadata or ()) if k not in keys]
    merged.extend(extra)
    return merged


def _now(value: Any) -> Any:
    """The value of ``call.code()``/``details()`` on a finished call, sync or aio.

    On ``grpc.aio`` calls these are coroutines; in a done-callback the status is already there,
    so the coroutine completes on its first step without suspending. Driving it by hand keeps
    the callback synchronous (no task per call) and uses only the public API.
    """
    if not inspect.iscoroutine(value):
        return value
    try:
        value.send(None)
    except StopIteration as done:
        return done.value
    value.close()
    raise RuntimeError("aio call status not available in its done-callback")


# --- sync -----------------------------------------------------------------------------------


class ClientInterceptor(
    _ClientBase,
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """One object serving all four RPC kinds: ``grpc.intercept_channel(ch, interceptor)``."""

    def _details(self, details: Any, record: CallRecord) -> Any:
        extra = self._outgoing(record)
        if not extra:
            return details
        return _CallDetails(
            details.method, details.timeout, _merged(details.metadata, extra),
            details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None),
        )

    def _invoke(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any,
                grpc_type: str, streaming_in: bool, streaming_out: bool) -> Any:
        record = self._open(details, grpc_type)
        if record is None:
            return continuation(details, request)
        if streaming_in:
            request = _CountingRequests(request, record)
        else:
            record.msgs_out = 1
        try:
            call = continuation(self._details(details, record), request)
        except BaseException as error:
            self._fail(record, error)
            raise
        stream_end = _StreamEnd() if streaming_out else None
        try:
            call.add_done_callback(self._done_callback(record, not streaming_out, stream_end))
        except Exception:
            self._pipe.errors.record("client-callback")
        if stream_end is None:
            return call
        return _CountingResponses(call, record, self._pipe, stream_end)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._invoke(continuation, details, request, schema.TYPE_UNARY, False, False)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._invoke(continuation, details, request, schema.TYPE_SERVER_STREAM,
                            False, True)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any
                               ) -> Any:
        return self._invoke(continuation, details, request_iterator,
                            schema.TYPE_CLIENT_STREAM, True, False)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any
                                ) -> Any:
        return self._invoke(continuation, details, request_iterator,
                            schema.TYPE_BIDI_STREAM, True, True)


class _CountingRequests:
    __slots__ = ("_it", "_record")

    def __init__(self, it: Any, record: CallRecord) -> None:
        self._it = iter(it)
        self._record = record

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        item = next(self._it)
        self._record.msgs_out += 1
        return item


class _StreamEnd:
    """Finishes a streaming-response record once the status arrived AND the reading ended.

    grpc runs the done-callback when the status arrives, which can be before the application
    has read the last responses (they wait in the transport): finishing there undercounted
    ``msg_received`` and cut the duration short. Go's interceptors report ``handled`` when
    RecvMsg returns EOF or an error, i.e. when the application is done reading. So the record
    finishes at the later of the two events: the done-callback, and the end of reading (the
    iterator is exhausted, raises, or is dropped by the application).
    """

    __slots__ = ("_lock", "_pending")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = 2

    def arrive(self) -> bool:
        """Count one of the two events; True for the one that completes the pair."""
        with self._lock:
            self._pending -= 1
            return self._pending == 0


class _CountingResponses:
    """The streaming call object, unchanged but for counting the responses read from it."""

    __slots__ = ("_call", "_end", "_pipe", "_reading", "_record")

    def __init__(self, call: Any, record: CallRecord, pipe: Pipeline, end: _StreamEnd) -> None:
        self._call = call
        self._record = record
        self._pipe = pipe
        self._end = end
        self._reading = True

    def __iter__(self) -> _CountingResponses:
        return self

    def __next__(self) -> Any:
        try:
            item = next(self._call)
        except BaseException:
            self._stop_reading()
            raise
        self._record.msgs_in += 1
        return item

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            if self._end.arrive():
                self._pipe.finish(self._record)

    def __del__(self) -> None:
        # The application dropped the stream without reading to the end.
        try:
            self._stop_reading()
        except Exception:  # noqa: S110 - never raise from a finaliser
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


# --- aio ------------------------------------------------------------------------------------


class _AioBase(_ClientBase):
    """The four aio interceptor classes differ only in RPC kind; grpc.aio asks for one class
    per kind (it dispatches on the interceptor's base class), so they share this body."""

    def _aio_details(self, details: Any, record: CallRecord) -> Any:
        extra = self._outgoing(record)
        if not extra:
            return details
        return details._replace(metadata=grpc.aio.Metadata(*_merged(details.metadata, extra)))

    async def _invoke(self, continuation: Any, details: Any, request: Any, grpc_type: str,
                      streaming_in: bool, streaming_out: bool) -> Any:
        record = self._open(details, grpc_type)
        if record is None:
            return await continuation(details, request)
        if not streaming_in:
            record.msgs_out = 1
        elif request is not None:  # None: the caller writes with call.write()
            request = _aio_requests(request, record)
        try:
            call = await continuation(self._aio_details(details, record), request)
        except BaseException as error:
            self._fail(record, error)
            raise
        call.add_done_callback(self._done_callback(record, not streaming_out))
        return _aio_counted(call, record) if streaming_out else call


class AioUnaryUnary(_AioBase, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._invoke(continuation, details, request, schema.TYPE_UNARY,
                                  False, False)


class AioUnaryStream(_AioBase, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any
                                     ) -> Any:
        return await self._invoke(continuation, details, request, schema.TYPE_SERVER_STREAM,
                                  False, True)


class AioStreamUnary(_AioBase, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, details: Any,
                                     request_iterator: Any) -> Any:
        return await self._invoke(continuation, details, request_iterator,
                                  schema.TYPE_CLIENT_STREAM, True, False)


class AioStreamStream(_AioBase, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, details: Any,
                                      request_iterator: Any) -> Any:
        return await self._invoke(continuation, details, request_iterator,
                                  schema.TYPE_BIDI_STREAM, True, True)


async def _aio_counted(call: Any, record: CallRecord) -> AsyncIterator[Any]:
    """Responses of an aio streaming call, counted; grpc wraps this iterator back into a call."""
    async for response in call:
        record.msgs_in += 1
        yield response


def _aio_requests(requests: Any, record: CallRecord) -> Any:
    """Count requests without changing their kind: grpc.aio treats a plain iterator and an async
    iterator differently (e.g. how an expiring deadline surfaces), so a sync one stays sync."""
    if hasattr(requests, "__aiter__"):
        return _AsyncCountingRequests(requests, record)
    return _CountingRequests(requests, record)


class _AsyncCountingRequests:
    __slots__ = ("_it", "_record")

    def __init__(self, requests: Any, record: CallRecord) -> None:
        self._it = requests.__aiter__()
        self._record = record

    def __aiter__(self) -> _AsyncCountingRequests:
        return self

    async def __anext__(self) -> Any:
        item = await self._it.__anext__()
        self._record.msgs_out += 1
        return item


def aio_client_interceptors(pipe: Pipeline, table: MethodTable) -> list[Any]:
    return [
        AioUnaryUnary(pipe, table),
        AioUnaryStream(pipe, table),
        AioStreamUnary(pipe, table),
        AioStreamStream(pipe, table),
    ]
