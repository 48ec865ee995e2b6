"""The call core: one record per RPC, measured once on the request path, consumed in batches.

Design (go-grpc-middleware v2's reporter split, see STYLE.md): the interceptors only *measure*
(start, end, status, message counts, peer, deadline, trace ids) into a :class:`CallRecord`, and
:class:`Pipeline` appends the finished record to the :class:`~rpcscope.collector._batcher.Batcher`'s
queue. Everything else (metrics, access log, shipping) happens in that batcher's batches, off the
request path. Every step is guarded: an exception inside instrumentation is counted and
swallowed, never raised into the RPC. Per-call costs and why the request path is shaped as it
is: docs/performance.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from time import perf_counter_ns, time_ns
from typing import TYPE_CHECKING, Any, Final

import grpc

from rpcscope import schema
from rpcscope.collector._ids import CURRENT_IDS, TraceRef, next_call_number, resolve_ids

if TYPE_CHECKING:
    from rpcscope.collector._batcher import Batcher
    from rpcscope.collector._trace import Tracing

_LOG = logging.getLogger("rpcscope")

_CODE_BY_STATUS: Final = schema.GO_CODE_NAMES
_SERVER_FAULT: Final = frozenset(schema.SERVER_FAULT_CODES)

#: The two sides of a call; also the ``side`` of a MethodInfo.
SERVER: Final = "server"
CLIENT: Final = "client"


def split_method(full_method: str) -> tuple[str, str] | None:
    """``/pkg.Service/Method`` → (``pkg.Service``, ``Method``); None when malformed."""
    if not full_method.startswith("/"):
        return None
    service, sep, method = full_method[1:].partition("/")
    if not sep or not service or not method or "/" in method:
        return None
    return service, method


def rpc_type(request_streaming: bool, response_streaming: bool) -> str:
    if request_streaming:
        return schema.TYPE_BIDI_STREAM if response_streaming else schema.TYPE_CLIENT_STREAM
    return schema.TYPE_SERVER_STREAM if response_streaming else schema.TYPE_UNARY


class MethodInfo:
    """Everything about one (side, method) that does not change between calls."""

    __slots__ = ("full_method", "grpc_type", "method", "metrics", "service", "side")

    def __init__(
        self,
        side: str,
        full_method: str,
        service: str,
        method: str,
        grpc_type: str,
        metrics: Any,
    ) -> None:
        self.side = side
        self.full_method = full_method
        self.service = service
        self.method = method
        self.grpc_type = grpc_type
        #: The metrics' handle for this method (appended to the batcher's queue when a call
        #: starts), or None when metrics are off.
        self.metrics = metrics


class CallRecord:
    """One RPC as measured by an interceptor. Consumers read it; only the core writes it.

    The defaults live on the class and a call sets only what it has: an instance's own value
    shadows the default, which costs less per call than initialising every field.
    """

    #: The final status, as Go names it.
    code: str = "OK"
    details: str | None = None
    error: BaseException | None = None
    #: perf_counter_ns() at the end (request path); duration and wall-clock end are derived
    #: from it in the batch (:func:`complete_records`).
    end_ns: int = 0
    duration_ns: int = 0
    end_wall_ns: int = 0
    msgs_in: int = 0
    msgs_out: int = 0
    #: The peer as grpc gave it (bytes on a sync server: decoded by whoever prints it).
    peer: str | bytes | None = None
    #: Remaining time at the start, seconds, as grpc reported it (unbounded or None when
    #: the call had no deadline).
    deadline: float | None = None
    #: Sync servers: grpc's CallDetails, whose absolute deadline a consumer turns into the
    #: remaining time at the start (see Pipeline.start_server).
    call_details: Any = None
    #: grpc's invocation metadata, as grpc gave it (kept only when a consumer asks).
    metadata: Any = None
    #: The path the caller sent, for calls counted under ``unknown`` (see MethodTable).
    path: str | None = None
    trace: TraceRef | None = None
    #: The CURRENT_IDS reset token (server calls in a thread).
    ids_token: Any = None
    otel_span: Any = None

    def __init__(self, info: MethodInfo, deadline: float | None = None) -> None:
        self.info = info
        self.start_ns = perf_counter_ns()
        if deadline is not None:
            self.deadline = deadline

    def ids(self) -> tuple[str, str, str | None, str] | None:
        """(trace_id, span_id, parent_span_id, flags), or None when tracing is off."""
        trace = self.trace
        return None if trace is None else resolve_ids(trace)


_new_record: Final = object.__new__


def complete_records(batch: Sequence[Any]) -> None:
    """The batch's first fold: each finished record's duration and wall-clock end.

    The request path reads one clock (perf_counter_ns); the wall-clock end is that reading
    plus the offset between the two clocks, read once per batch (a batch is at most a round
    old, so the clocks' drift in between is far below the microseconds logged)."""
    offset = time_ns() - perf_counter_ns()
    for item in batch:
        if type(item) is CallRecord or isinstance(item, CallRecord):
            end = item.end_ns
            if end and not item.end_wall_ns:
                item.duration_ns = end - item.start_ns
                item.end_wall_ns = end + offset


def go_code(status: grpc.StatusCode | None) -> str:
    if status is None:
        return "OK"
    return _CODE_BY_STATUS.get(status, "Unknown")


def is_server_fault(code: str) -> bool:
    return code in _SERVER_FAULT


class ErrorCounter:
    """Counts errors inside rpcscope. The count is also exported as a metric when metrics are on."""

    __slots__ = ("_callback", "_lock", "count")

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._callback: Callable[[], None] | None = None

    def bind(self, callback: Callable[[], None]) -> None:
        self._callback = callback

    def record(self, where: str) -> None:
        """Count one swallowed error; log it at debug level (never raise, never spam)."""
        try:
            with self._lock:
                self.count += 1
            if self._callback is not None:
                self._callback()
            _LOG.debug("rpcscope: instrumentation error in %s (swallowed)", where, exc_info=True)
        except Exception:  # noqa: S110 - the error counter itself must never raise into an RPC
            pass



class Pipeline:
    """A side's request path: opens a call's record and appends the finished one to the batcher.

    Everything that can wait does: the invocation metadata is kept as grpc gave it, trace ids
    stay a :data:`~rpcscope.collector._ids.TraceRef` until read, the deadline stays grpc's
    absolute one. Consumers in the batch turn them into what they need.
    """

    __slots__ = ("batcher", "errors", "keep_details", "keep_metadata", "tracing")

    def __init__(
        self,
        batcher: Batcher | None,
        tracing: Tracing | None,
        errors: ErrorCounter,
        keep_details: bool = False,
        keep_metadata: bool = False,
    ) -> None:
        #: None when no consumer wants finished calls (metrics and logs both off).
        self.batcher = batcher
        self.tracing = tracing
        self.errors = errors
        #: Whether a consumer reads the peer and the deadline (the access log does).
        self.keep_details = keep_details
        #: Whether a consumer reads the invocation metadata (an access log with an allowlist).
        self.keep_metadata = keep_metadata

    # -- start ------------------------------------------------------------------------------

    def start_server(self, info: MethodInfo, context: Any, metadata: Any = None,
                     own_task: bool = False) -> CallRecord:
        """Open a server call's record: count ``started``, start its trace. Never raises.

        ``metadata``: the call's invocation metadata when the caller already has it (aio);
        otherwise it is read from the context. ``own_task``: the call runs in an asyncio task
        of its own (grpc.aio's coroutine handlers), whose context dies with it, so the trace
        set here needs no reset at the end.

        On a sync server the record reads grpc's per-call event (``context._rpc_event``) for
        the metadata, the peer and the call's ``CallDetails`` (whose deadline is absolute),
        as py-grpc-prometheus reads grpc's per-call state: the public methods are thin
        wrappers over it and cost more per call (docs/performance.md). A context without it
        (aio, another grpcio, a test double, a proxy) is asked through the public methods,
        and tests/test_sync_direct.py fails if the installed grpcio stops taking this path.
        """
        # CallRecord(info) without its __init__ frame: one Python call less on the request path.
        record = _new_record(CallRecord)
        record.info = info
        record.start_ns = perf_counter_ns()
        try:
            event = None if metadata is not None else getattr(context, "_rpc_event", None)
            if event is not None:
                try:
                    metadata = event.invocation_metadata
                    if self.keep_details:
                        record.peer = event.call.peer()
                        record.call_details = event.call_details
                except AttributeError:
                    event = None  # an event of another shape (another grpcio): ask the context
            if event is None:
                if metadata is None:
                    metadata = context.invocation_metadata()
                if self.keep_details:
                    record.peer = context.peer()
                    record.deadline = context.time_remaining()
        except Exception:
            self.errors.record("context")
            metadata = None
        batcher = self.batcher
        if batcher is not None and info.metrics is not None:
            try:
                batcher.pending.append(info.metrics)  # "started", counted in the next fold
            except Exception:
                self.errors.record("start:metrics")
        tracing = self.tracing
        if tracing is not None:
            try:
                if tracing.tracer is not None:
                    tracing.start_server(record, metadata)  # an OpenTelemetry span
                if record.trace is None:
                    # Ids mode: the metadata and a call number; resolved when read.
                    record.trace = trace = (metadata or None, next_call_number())
                    if own_task:
                        CURRENT_IDS.set(trace)
                    else:
                        record.ids_token = CURRENT_IDS.set(trace)
            except Exception:
                self.errors.record("start:tracing")
        if self.keep_metadata:
            record.metadata = metadata
        return record

    def start_client(self, info: MethodInfo, deadline: float | None,
                     metadata: Any = None) -> CallRecord:
        """Open a client call's record: count ``started``, start its trace. Never raises.

        ``metadata``: what the caller put in the call (a ``traceparent`` there is continued
        when no server call is active)."""
        record = CallRecord(info, deadline)
        batcher = self.batcher
        if batcher is not None and info.metrics is not None:
            try:
                batcher.pending.append(info.metrics)
            except Exception:
                self.errors.record("start:metrics")
        if self.tracing is not None:
            try:
                self.tracing.start_client(record, metadata)
            except Exception:
                self.errors.record("start:tracing")
        return record

    # -- end --------------------------------------------------------------------------------

    def finish(self, record: CallRecord) -> None:
        """Close a record and hand it to the batcher. Never raises."""
        self.stop(record)
        self.submit(record)

    def stop(self, record: CallRecord) -> None:
        """Time the record and leave its trace context, on the thread that ran the call."""
        record.end_ns = perf_counter_ns()
        token = record.ids_token
        if token is not None:
            record.ids_token = None
            try:
                CURRENT_IDS.reset(token)
            except ValueError:
                # Reset from another context (a generator finished on a different thread or
                # task): the variable dies with that context anyway.
                pass
        if record.otel_span is not None and self.tracing is not None:
            try:
                self.tracing.detach(record)
            except Exception:
                self.errors.record("finish:tracing")

    def submit(self, record: CallRecord) -> None:
        """End the record's span with its final status and append it to the batcher."""
        if record.otel_span is not None and self.tracing is not None:
            try:
                self.tracing.finish(record)
            except Exception:
                self.errors.record("finish:tracing")
        batcher = self.batcher
        if batcher is not None:
            try:
                pending = batcher.pending
                pending.append(record)
                if batcher.thread is None or len(pending) > batcher.max_pending:
                    batcher.kick()  # first call: start the thread; starved thread: fold here
            except Exception:
                self.errors.record("finish:batcher")
