"""The call core: one record per RPC, measured once, consumed by metrics, access log and tracing.

Design (go-grpc-middleware v2's reporter split, see STYLE.md): the interceptors only *measure*
(start, end, status, message counts, peer, deadline, trace ids) into a :class:`CallRecord`; the
:class:`Pipeline` hands the finished record to each enabled consumer. Every consumer call is
guarded: an exception inside instrumentation is counted and swallowed, never raised into the RPC.

Hot-path notes: everything that is constant per method (label children, the access log's static
fields) is resolved once into a :class:`MethodInfo` and cached by the interceptors, so a call costs
a few attribute reads and counter increments, not label lookups or string building.
"""

from __future__ import annotations

import contextvars
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from time import perf_counter_ns, time_ns
from typing import TYPE_CHECKING, Any, Final, Protocol

import grpc

from rpcscope import schema

if TYPE_CHECKING:
    from rpcscope.collector._metrics import GrpcMetrics, MethodMetrics
    from rpcscope.collector._sharded import ShardedMethodMetrics
    from rpcscope.collector._trace import Tracing

_LOG = logging.getLogger("rpcscope")

_CODE_BY_STATUS: Final = schema.GO_CODE_NAMES
_SERVER_FAULT: Final = frozenset(schema.SERVER_FAULT_CODES)

SERVER: Final = "server"
CLIENT: Final = "client"

#: (trace_id, span_id) of the RPC being handled in this context; read by the ECS log formatter
#: (so application logs carry the ids) and by client interceptors (so downstream calls continue
#: the trace). A contextvar works for threads (sync servers) and asyncio tasks alike.
CURRENT_IDS: Final[contextvars.ContextVar[tuple[str, str] | None]] = contextvars.ContextVar(
    "rpcscope_current_ids", default=None
)


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
    """Everything about one (component, method) that does not change between calls."""

    __slots__ = ("component", "full_method", "grpc_type", "method", "metrics", "service")

    def __init__(
        self,
        component: str,
        full_method: str,
        service: str,
        method: str,
        grpc_type: str,
        metrics: MethodMetrics | ShardedMethodMetrics | None,
    ) -> None:
        self.component = component
        self.full_method = full_method
        self.service = service
        self.method = method
        self.grpc_type = grpc_type
        self.metrics = metrics


class CallRecord:
    """One RPC as measured by an interceptor. Consumers read it; only the core writes it."""

    __slots__ = (
        "code",
        "deadline",
        "details",
        "duration_ns",
        "end_wall_ns",
        "error",
        "info",
        "metadata",
        "msgs_in",
        "msgs_out",
        "otel_span",
        "parent_span_id",
        "peer",
        "span_id",
        "start_ns",
        "trace_flags",
        "trace_id",
    )

    def __init__(self, info: MethodInfo) -> None:
        self.info = info
        self.start_ns = perf_counter_ns()
        self.code = "OK"
        self.details: str | None = None
        self.error: BaseException | None = None
        self.duration_ns = 0
        self.end_wall_ns = 0
        self.msgs_in = 0
        self.msgs_out = 0
        self.peer: str | None = None
        self.deadline: float | None = None
        self.metadata: dict[str, str] | None = None
        self.trace_id: str | None = None
        self.span_id: str | None = None
        self.parent_span_id: str | None = None
        self.trace_flags = "01"
        self.otel_span: Any = None


class RecordSink(Protocol):
    """Where finished call records go (the access log). Must not block: see exporters."""

    def emit_call(self, record: CallRecord) -> None: ...


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
    """Runs the enabled consumers of a call record, each guarded against its own failures."""

    __slots__ = ("_allow_metadata", "errors", "metrics", "sink", "tracing")

    def __init__(
        self,
        metrics: GrpcMetrics | None,
        tracing: Tracing | None,
        sink: RecordSink | None,
        errors: ErrorCounter,
        metadata_allowlist: Iterable[str] = (),
    ) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self.sink = sink
        self.errors = errors
        # Redaction is decided once per allowlisted key, not per call: key → redact?
        self._allow_metadata = {k.lower(): _must_redact(k.lower()) for k in metadata_allowlist}

    # -- start ------------------------------------------------------------------------------

    def start(
        self,
        info: MethodInfo,
        metadata: Any,
        peer: str | None,
        deadline: float | None,
    ) -> CallRecord:
        """Open a record: count ``started``, read trace context. Never raises."""
        record = CallRecord(info)
        record.peer = peer
        record.deadline = deadline
        # One guard per consumer: a failing one must not cost the call the others (a broken
        # counter must not lose the trace ids). try blocks are free in 3.11 when nothing raises.
        mm = info.metrics
        if mm is not None:
            try:
                mm.started.inc()
            except Exception:
                self.errors.record("start:metrics")
        if self.tracing is not None:
            try:
                self.tracing.start(record, metadata)
            except Exception:
                self.errors.record("start:tracing")
        if metadata and self._allow_metadata and self.sink is not None:
            try:
                record.metadata = self._pick_metadata(metadata)
            except Exception:
                self.errors.record("start:metadata")
        return record

    def _pick_metadata(self, metadata: Any) -> dict[str, str] | None:
        allow = self._allow_metadata
        picked: dict[str, str] = {}
        for key, value in metadata:
            redact = allow.get(key)
            if redact is not None:
                picked[key] = (
                    "[REDACTED]" if redact else value if isinstance(value, str) else repr(value)
                )
        return picked or None

    # -- end --------------------------------------------------------------------------------

    def finish(self, record: CallRecord) -> None:
        """Close a record: metrics, span, access log. Never raises."""
        record.duration_ns = perf_counter_ns() - record.start_ns
        record.end_wall_ns = time_ns()
        # Guarded one by one, as in start(): a metrics failure must not leave the span open
        # (and the trace ids set in this context) or lose the access-log record.
        mm = record.info.metrics
        if mm is not None:
            try:
                mm.finish(record)
            except Exception:
                self.errors.record("finish:metrics")
        if self.tracing is not None:
            try:
                self.tracing.finish(record)
            except Exception:
                self.errors.record("finish:tracing")
        if self.sink is not None:
            try:
                self.sink.emit_call(record)
            except Exception:
                self.errors.record("finish:log")


def _must_redact(key: str) -> bool:
    """Allowlisted metadata still passes a deny check: credentials never reach a log."""
    return key.endswith("-bin") or key in schema.ALWAYS_REDACTED_METADATA or _looks_secret(key)


_SECRET_HINTS: Final = ("key", "token", "secret", "password", "passwd", "auth", "session", "cookie")


def _looks_secret(key: str) -> bool:
    return any(hint in key for hint in _SECRET_HINTS)


HOSTNAME: Final = socket.gethostname()
