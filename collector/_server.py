"""Server interceptors (sync ``grpc.server`` and ``grpc.aio.server``), all four RPC kinds.

The wrapped behaviours re-raise exactly what the handler raised and return exactly what it
returned; the only things added are a record start before and a record finish after, both of
which swallow their own errors (see :class:`~rpcscope.collector._core.Pipeline`). Wrapped
handlers are cached per method, so ``intercept_service`` is a dict lookup after the first call.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol

import grpc

from rpcscope import schema
from rpcscope.collector._core import CallRecord, MethodInfo, Pipeline, go_code, rpc_type
from rpcscope.collector._methods import MethodTable

_NOT_FOUND_DETAILS = "Method not found!"  # what grpc itself answers for an unknown method
_OK: Any = grpc.StatusCode.OK
_CANCELLED = "cancelled"  # grpc._server._CANCELLED: a sync call's state.client once cancelled
#: The invocation metadata of the aio call being intercepted (see AioServerInterceptor).
_CALL_METADATA: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "rpcscope_call_metadata", default=None
)
call_metadata = _CALL_METADATA.get
#: The method path of the aio call being intercepted (for calls to unknown methods).
_CALL_PATH: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "rpcscope_call_path", default=None
)


def _sent_path(context: Any) -> str | None:
    """The path a caller sent for an unknown method, truncated: what the access log keeps.

    Sync servers: from grpc's per-call event (no public accessor has it); aio: from the
    interceptor (see AioServerInterceptor.intercept_service)."""
    path: Any = _CALL_PATH.get()
    if path is None:
        event = getattr(context, "_rpc_event", None)
        path = getattr(getattr(event, "call_details", None), "method", None)
    if isinstance(path, bytes):
        path = path.decode("utf-8", "replace")
    return path[:schema.UNKNOWN_PATH_MAX] if isinstance(path, str) else None


def _expired(context: Any) -> bool:
    """Whether the call's deadline has passed. aio returns None when the call has no deadline."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


# --- status ---------------------------------------------------------------------------------
# Each writes the final status onto the record (which starts as "OK"): no tuple per call.


def _explicit_status(record: CallRecord, context: Any, code: Any) -> None:
    """The status the handler set (abort, set_code) or grpc set for it."""
    details = context.details()
    if isinstance(details, bytes):
        details = details.decode("utf-8", "replace")
    record.code, record.details = go_code(code), details or None


class _Finish(Protocol):
    def __call__(self, record: CallRecord, context: Any, error: BaseException | None,
                 unary_out: bool = False, streaming: bool = False) -> None: ...


def _finisher(pipe: Pipeline, aio: bool) -> _Finish:
    """A server's finish: the final status onto the record, then the pipeline. Never raises.

    On a sync server grpc's per-call state is read directly when the context has it, as
    py-grpc-prometheus does: ``is_active()`` takes the call's lock, and while the handler runs
    it is ``state.client != "cancelled"``. Contexts without that state (another grpcio, the
    proxy of :class:`_SyncOnAio`) are asked through the public methods. The "Unknown" details
    are the ones grpc itself sends in each mode.

    A client's cancellation can end a handler's request iterator quietly, as if the client
    had closed its side, before grpc marks the call cancelled; Go counts such a call
    ``Canceled``, not the handler's ``OK``. So on a sync server a streaming call that ends
    without a status of its own (the handler returned, or grpc stopped asking for responses)
    is decided when grpc ends the call: the record is timed at the handler's end and its code
    waits for grpc's termination callback. On grpc.aio the end of a request stream yields to
    the event loop once (:func:`_settle`), where grpc delivers the cancellation to the call's
    task as ``CancelledError``, as Go's ``Recv`` returns it; a response generator that grpc
    stops iterating (``GeneratorExit``) was cancelled too.
    """
    errors, stop, submit = pipe.errors, pipe.stop, pipe.submit

    def verdict(record: CallRecord, context: Any, state: Any, unary_out: bool) -> None:
        """grpc ended the call: whether it was cancelled is final now."""
        try:
            if state.client == _CANCELLED:
                record.code = "DeadlineExceeded" if _expired(context) else "Canceled"
                record.details = None
                if unary_out:
                    record.msgs_out = 0  # the response never reached the client
        except Exception:
            errors.record("status")
        submit(record)

    def finish(record: CallRecord, context: Any, error: BaseException | None,
               unary_out: bool = False, streaming: bool = False) -> None:
        try:
            if error is not None and not isinstance(error, GeneratorExit):
                record.error = error
            state = None if aio else getattr(context, "_state", None)
            code = context.code() if state is None else state.code
            if code is not None and code is not _OK:
                _explicit_status(record, context, code)
            elif (state.client == _CANCELLED if state is not None
                  # aio: grpc cancels the call's task, or (a response in flight) stops
                  # iterating the handler's generator, which then sees GeneratorExit.
                  else (isinstance(error, asyncio.CancelledError | GeneratorExit)
                        or context.cancelled()) if aio
                  else not context.is_active()):
                record.code = "DeadlineExceeded" if _expired(context) else "Canceled"
            elif error is not None and not (streaming and isinstance(error, GeneratorExit)):
                record.code = "Unknown"
                record.details = (f"Unexpected error in RPC handler: {error!r}" if aio
                                  else f"Exception calling application: {error}")
            elif streaming and state is not None:
                if error is not None:  # GeneratorExit: grpc stopped asking for responses
                    record.code = "Unknown"
                elif unary_out:
                    record.msgs_out = 1
                stop(record)
                if not context.add_callback(lambda: verdict(record, context, state, unary_out)):
                    verdict(record, context, state, unary_out)  # the call had ended already
                return
            elif unary_out:
                record.msgs_out = 1
        except Exception:
            errors.record("status")
        stop(record)
        submit(record)

    return finish


async def _settle() -> None:
    """Yield to the event loop once: a client's cancellation that ended the request stream
    quietly reaches the call's task now, as ``CancelledError`` (see :func:`_finisher`), when
    grpc delivered both events together (on a busy machine it may deliver the cancellation
    later, after the handler finished: the call then counts the handler's outcome)."""
    await asyncio.sleep(0)


class _CountingIterator:
    """Request iterator proxy that counts messages the handler actually consumed."""

    __slots__ = ("_it", "_record")

    def __init__(self, it: Iterator[Any], record: CallRecord) -> None:
        self._it = it
        self._record = record

    def __iter__(self) -> _CountingIterator:
        return self

    def __next__(self) -> Any:
        item = next(self._it)
        self._record.msgs_in += 1
        return item

    next = __next__  # grpc's own request iterator offers .next(); keep it working

    def __getattr__(self, name: str) -> Any:
        return getattr(self._it, name)


class _AsyncCountingIterator:
    """Counts request messages the handler consumes from grpc's aio request iterator.

    ``__aiter__`` is called on first use, not up front: grpc's receiver creates its generator in
    ``__aiter__``, and a handler using ``context.read()`` instead never consumes it (Python then
    warns "coroutine ... was never awaited" on every call).
    """

    __slots__ = ("_it", "_record", "_source")

    def __init__(self, it: Any, record: CallRecord) -> None:
        self._source = it
        self._it: Any = None
        self._record = record

    def __aiter__(self) -> _AsyncCountingIterator:
        return self

    async def __anext__(self) -> Any:
        if self._it is None:
            self._it = self._source.__aiter__()
        try:
            item = await self._it.__anext__()
        except StopAsyncIteration:
            await _settle()  # a cancellation that ended the stream surfaces here, as in Go
            raise
        self._record.msgs_in += 1
        return item


class _ServerBase:
    def __init__(self, pipe: Pipeline, table: MethodTable) -> None:
        self._pipe = pipe
        self._table = table
        self._start: Callable[..., CallRecord] = pipe.start_server
        # method path -> (original handler, wrapped handler)
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def _resolve(self, method: str, handler: Any) -> Any:
        """The handler to give grpc for this method: cached wrapper, original, or unimplemented."""
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        try:
            if handler is None:
                wrapped = self._unimplemented_handler()
            else:
                info = self._table.lookup(
                    method, rpc_type(handler.request_streaming, handler.response_streaming)
                )
                wrapped = handler if info is None else self._wrap(handler, info)
            if len(self._wrapped) < 10_000:
                self._wrapped[method] = (handler, wrapped)
            return wrapped
        except Exception:
            self._pipe.errors.record("wrap")
            return handler

    def _wrap(self, handler: Any, info: MethodInfo) -> Any:
        raise NotImplementedError

    def _unimplemented_handler(self) -> Any:
        raise NotImplementedError


# --- sync -----------------------------------------------------------------------------------


class ServerInterceptor(_ServerBase, grpc.ServerInterceptor):  # type: ignore[misc]
    """``grpc.server(..., interceptors=[...])`` interceptor."""

    def __init__(self, pipe: Pipeline, table: MethodTable) -> None:
        super().__init__(pipe, table)
        self._finish = _finisher(pipe, aio=False)
        self._unimplemented: Any = None

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any
                          ) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        return self._resolve(method, handler)

    def _unimplemented_handler(self) -> Any:
        if self._unimplemented is None:
            info, start, finish = self._table.unknown, self._start, self._finish

            def unimplemented(request_iterator: Any, context: Any) -> Any:
                record = start(info, context)
                record.path = _sent_path(context)
                try:
                    context.abort(grpc.StatusCode.UNIMPLEMENTED, _NOT_FOUND_DETAILS)
                except BaseException as error:
                    finish(record, context, error)
                    raise

            self._unimplemented = grpc.stream_stream_rpc_method_handler(unimplemented)
        return self._unimplemented

    def _wrap(self, handler: Any, info: MethodInfo) -> Any:
        start, finish = self._start, self._finish
        des, ser = handler.request_deserializer, handler.response_serializer

        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            def unary_unary(request: Any, context: Any) -> Any:
                record = start(info, context)
                record.msgs_in = 1
                try:
                    response = behavior(request, context)
                except BaseException as error:
                    finish(record, context, error)
                    raise
                finish(record, context, None, True)
                return response

            return grpc.unary_unary_rpc_method_handler(unary_unary, des, ser)

        if handler.unary_stream is not None:
            behavior = handler.unary_stream

            def unary_stream(request: Any, context: Any) -> Any:
                record = start(info, context)
                record.msgs_in = 1
                try:
                    responses = behavior(request, context)
                except BaseException as error:
                    finish(record, context, error)
                    raise
                return _responses(responses, record, context, finish)

            return grpc.unary_stream_rpc_method_handler(unary_stream, des, ser)

        if handler.stream_unary is not None:
            behavior = handler.stream_unary

            def stream_unary(request_iterator: Any, context: Any) -> Any:
                record = start(info, context)
                try:
                    response = behavior(_CountingIterator(request_iterator, record), context)
                except BaseException as error:
                    finish(record, context, error, False, True)
                    raise
                finish(record, context, None, True, True)
                return response

            return grpc.stream_unary_rpc_method_handler(stream_unary, des, ser)

        behavior = handler.stream_stream

        def stream_stream(request_iterator: Any, context: Any) -> Any:
            record = start(info, context)
            try:
                responses = behavior(_CountingIterator(request_iterator, record), context)
            except BaseException as error:
                finish(record, context, error)
                raise
            return _responses(responses, record, context, finish)

        return grpc.stream_stream_rpc_method_handler(stream_stream, des, ser)


def _responses(responses: Any, record: CallRecord, context: Any, finish: _Finish
               ) -> Iterator[Any]:
    """Yield the handler's responses unchanged, counting them; finish when the stream ends.

    ``GeneratorExit`` arrives when grpc drops the iterator (client went away): the status is then
    read from the context (Canceled / DeadlineExceeded).
    """
    try:
        for response in responses:
            yield response
            # grpc asks for the next response only after sending this one; if the send fails
            # (client gone, deadline), it drops the iterator instead and this line never runs,
            # so only messages that reached the wire are counted (Go counts after SendMsg).
            record.msgs_out += 1
    except BaseException as error:
        finish(record, context, error, False, True)
        raise
    finish(record, context, None, False, True)


# --- aio ------------------------------------------------------------------------------------


class AioServerInterceptor(_ServerBase, grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """``grpc.aio.server(interceptors=[...])`` interceptor."""

    def __init__(self, pipe: Pipeline, table: MethodTable) -> None:
        super().__init__(pipe, table)
        self._finish = _finisher(pipe, aio=True)
        self._sync = _SyncOnAio(pipe, table)
        self._unimplemented: Any = None

    async def intercept_service(self, continuation: Callable[[Any], Any],
                                handler_call_details: Any) -> Any:
        # On grpc.aio, context.invocation_metadata() rebuilds the metadata tuple on every call
        # (docs/performance.md); grpc already built it for us
        # here. Hand it to the wrapper through a contextvar: grpc.aio runs each RPC in a task
        # of its own and calls the interceptors before the handler in that task, so the
        # handler sees this call's value. Sync handlers run in an executor thread that does
        # not inherit it: they get None and ask the context, as everywhere else.
        _CALL_METADATA.set(handler_call_details.invocation_metadata)
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        if handler is None:
            _CALL_PATH.set(method)
        return self._resolve(method, handler)

    def _unimplemented_handler(self) -> Any:
        if self._unimplemented is None:
            info, start, finish = self._table.unknown, self._start, self._finish

            async def unimplemented(request_iterator: Any, context: Any) -> Any:
                record = start(info, context, call_metadata(), True)
                record.path = _sent_path(context)
                try:
                    await context.abort(grpc.StatusCode.UNIMPLEMENTED, _NOT_FOUND_DETAILS)
                except BaseException as error:
                    finish(record, context, error)
                    raise

            self._unimplemented = grpc.stream_stream_rpc_method_handler(unimplemented)
        return self._unimplemented

    def _wrap(self, handler: Any, info: MethodInfo) -> Any:
        start, finish = self._start, self._finish
        des, ser = handler.request_deserializer, handler.response_serializer

        if handler.unary_unary is not None:
            behavior = handler.unary_unary
            if not inspect.iscoroutinefunction(behavior):
                return self._sync.wrap(handler, info)  # grpc runs it in its executor

            async def unary_unary(request: Any, context: Any) -> Any:
                record = start(info, context, call_metadata(), True)
                record.msgs_in = 1
                try:
                    response = await behavior(request, context)
                except BaseException as error:
                    finish(record, context, error)
                    raise
                finish(record, context, None, True)
                return response

            return grpc.unary_unary_rpc_method_handler(unary_unary, des, ser)

        if handler.stream_unary is not None:
            behavior = handler.stream_unary
            if not inspect.iscoroutinefunction(behavior):
                return self._sync.wrap(handler, info)

            async def stream_unary(request_iterator: Any, context: Any) -> Any:
                record = start(info, context, call_metadata(), True)
                try:
                    requests = (
                        None if request_iterator is None
                        else _AsyncCountingIterator(request_iterator, record)
                    )
                    response = await behavior(requests, _CountingContext(context, record))
                except BaseException as error:
                    finish(record, context, error, False, True)
                    raise
                finish(record, context, None, True, True)
                return response

            return grpc.stream_unary_rpc_method_handler(stream_unary, des, ser)

        streaming_in = handler.stream_stream is not None
        behavior = handler.stream_stream if streaming_in else handler.unary_stream
        factory = (grpc.stream_stream_rpc_method_handler if streaming_in
                   else grpc.unary_stream_rpc_method_handler)

        if inspect.isasyncgenfunction(behavior):

            async def gen_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                record = start(info, context, call_metadata(), True)
                if streaming_in:
                    request = _AsyncCountingIterator(request, record)
                else:
                    record.msgs_in = 1
                try:
                    async for response in behavior(request, context):
                        yield response
                        record.msgs_out += 1  # resumed only after grpc wrote it: see _responses
                except BaseException as error:
                    finish(record, context, error, False, True)
                    raise
                finish(record, context, None, False, True)

            return factory(gen_stream, des, ser)

        if inspect.iscoroutinefunction(behavior):
            # read/write API: the handler calls context.read()/write() and returns None.

            async def rw_stream(request: Any, context: Any) -> Any:
                record = start(info, context, call_metadata(), True)
                if streaming_in:
                    if request is not None:
                        request = _AsyncCountingIterator(request, record)
                else:
                    record.msgs_in = 1
                try:
                    result = await behavior(request, _CountingContext(context, record))
                except BaseException as error:
                    finish(record, context, error, False, True)
                    raise
                finish(record, context, None, False, True)
                return result

            return factory(rw_stream, des, ser)

        return self._sync.wrap(handler, info)  # sync generator: grpc iterates it in its executor


class _SyncOnAio(ServerInterceptor):
    """Sync handlers on a ``grpc.aio`` server (run in its migration thread pool).

    grpc hands them a ``_SyncServicerContext`` that has no ``code()``, ``details()`` or
    ``is_active()``, so the status cannot be read back as on a sync server. The handler gets a
    :class:`_StatusRecordingContext` instead, which remembers what it sets; otherwise the wrapping
    is the sync server's. Known limit: a client cancellation is invisible to such a handler (and
    to us) and counts as the handler's own outcome.
    """

    def wrap(self, handler: Any, info: MethodInfo) -> Any:
        inner = self._wrap(handler, info)
        des, ser = inner.request_deserializer, inner.response_serializer
        if inner.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_recording(inner.unary_unary), des, ser)
        if inner.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _recording_gen(inner.unary_stream), des, ser)
        if inner.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_recording(inner.stream_unary), des, ser)
        return grpc.stream_stream_rpc_method_handler(_recording_gen(inner.stream_stream), des, ser)


def _recording(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def call(request: Any, context: Any) -> Any:
        return behavior(request, _StatusRecordingContext(context))

    return call


def _recording_gen(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Iterator[Any]]:
    # A generator function on purpose: grpc.aio iterates only those in its thread pool; any
    # other callable's iterator runs on the event loop, where a blocking handler (or abort(),
    # which waits for the loop) would stall the server.
    def call(request: Any, context: Any) -> Iterator[Any]:
        yield from behavior(request, _StatusRecordingContext(context))

    return call


class _StatusRecordingContext:
    """Context proxy remembering the status a sync handler sets (see :class:`_SyncOnAio`)."""

    __slots__ = ("_code", "_context", "_details")
    # No grpc per-call internals behind this proxy: say so here, so the start and the finisher
    # take the public methods without a miss through __getattr__ (an AttributeError per call).
    _rpc_event = None
    _state = None

    def __init__(self, context: Any) -> None:
        self._context = context
        self._code: Any = None
        self._details: Any = None

    def set_code(self, code: Any) -> None:
        self._code = code
        self._context.set_code(code)

    def set_details(self, details: Any) -> None:
        self._details = details
        self._context.set_details(details)

    def abort(self, code: Any, details: str = "", *args: Any, **kwargs: Any) -> Any:
        self._code, self._details = code, details
        return self._context.abort(code, details, *args, **kwargs)

    def code(self) -> Any:
        return self._code

    def details(self) -> Any:
        return self._details

    def is_active(self) -> bool:
        return not _expired(self._context)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _CountingContext:
    """aio context proxy counting ``read()``/``write()`` for read/write-API handlers.

    Registered as a virtual subclass of ``grpc.aio.ServicerContext`` so ``isinstance`` checks in
    user code still pass; every other attribute is the real context's.
    """

    __slots__ = ("_context", "_record")

    def __init__(self, context: Any, record: CallRecord) -> None:
        self._context = context
        self._record = record

    async def read(self) -> Any:
        message = await self._context.read()
        if message is grpc.aio.EOF:
            await _settle()  # see _AsyncCountingIterator
        else:
            self._record.msgs_in += 1
        return message

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._record.msgs_out += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


grpc.aio.ServicerContext.register(_CountingContext)
