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
import hashlib
import itertools
import logging
import math
import os
import re
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable
from time import monotonic, perf_counter_ns, time_ns
from typing import TYPE_CHECKING, Any, Final, Protocol

import grpc

from rpcscope import schema

if TYPE_CHECKING:
    from rpcscope.collector._deferred import DeferredMetrics, MethodAggregate
    from rpcscope.collector._metrics import GrpcMetrics, MethodMetrics
    from rpcscope.collector._trace import Tracing

_LOG = logging.getLogger("rpcscope")

_CODE_BY_STATUS: Final = schema.GO_CODE_NAMES
_SERVER_FAULT: Final = frozenset(schema.SERVER_FAULT_CODES)

SERVER: Final = "server"
CLIENT: Final = "client"

#: A call's trace context as the request path stores it, formatted only when read. Either
#: ``(incoming, call number)`` — ``incoming`` is the call's invocation metadata (searched for
#: ``traceparent`` when read), a ``traceparent`` value, or None; the call number (unique in
#: this process) gives this call's span id and, when no valid traceparent came in, a new trace
#: id (:func:`resolve_ids`) — or the already formatted
#: ``(trace_id, span_id, parent_span_id or None, flags)``.
#:
#: Why lazy: validating the incoming header and hex-formatting ids costs about 1 µs per call
#: even warm, and code that runs once per RPC runs with cold caches. The request
#: path takes the next call number and builds one small tuple; the log writer (in batches,
#: warm) or a reader such as :func:`current_ids` formats. Resolving is deterministic, so any
#: thread may do it any number of times and gets the same ids.
TraceIds = tuple[Any, int] | tuple[str, str, str | None, str]

#: The request path's id source: the next call number (C-level, atomic under the GIL).
next_call_number: Callable[[], int] = itertools.count(1).__next__


class _IdSource:
    """A per-process keyed PRF from call numbers to ids of ``hex_digits`` hex digits.

    One 64-byte BLAKE2b digest (keyed with 32 random bytes) of ``number // per`` holds the ids
    of ``per`` consecutive call numbers (8 span ids or 4 trace ids), and the last digest is
    kept, so the log writer, which resolves records in call order, hashes once per block.
    Deterministic: any thread resolves the same number to the same id at any time (the cache
    is one tuple, swapped whole, so a race costs a recomputation, never a wrong id).
    """

    __slots__ = ("_hex_digits", "_key", "_last", "_per", "_zero")

    def __init__(self, hex_digits: int) -> None:
        self._hex_digits = hex_digits
        self._per = 128 // hex_digits
        self._zero = "0" * hex_digits
        self.rekey()

    def rekey(self) -> None:
        self._key: Any = hashlib.blake2b(key=os.urandom(32))
        self._last: tuple[int, str] = (-1, "")

    def id_of(self, number: int) -> str:
        block, slot = divmod(number, self._per)
        cached = self._last
        if cached[0] != block:
            digest = self._key.copy()
            digest.update(block.to_bytes(8, "little"))
            cached = self._last = (block, digest.hexdigest())
        width = self._hex_digits
        text = cached[1][slot * width:(slot + 1) * width]
        # All-zero ids are invalid (W3C): a 1-in-2**64 draw at worst, replaced.
        return text if text != self._zero else self._zero[:-1] + "1"


_SPAN_IDS: Final = _IdSource(16)
_TRACE_IDS: Final = _IdSource(32)
#: Span id (16 hex digits) of a call number; see :func:`resolve_ids` for why ids are derived.
span_id_of: Final = _SPAN_IDS.id_of
#: Trace id (32 hex digits) of a call number that starts a new trace.
trace_id_of: Final = _TRACE_IDS.id_of


def _rekey_after_fork() -> None:
    # A forked child continues the parent's call numbers: new keys keep its ids apart.
    _SPAN_IDS.rekey()
    _TRACE_IDS.rekey()


os.register_at_fork(after_in_child=_rekey_after_fork)


def resolve_ids(trace: TraceIds) -> tuple[str, str, str | None, str]:
    """(trace_id, span_id, parent_span_id or None, trace_flags) as lowercase hex.

    Why ids are derived from a call number rather than drawn on the request path: timed alone
    inside a running bench server (one-off measurements), ``random.getrandbits(192)`` cost
    1.3 µs of CPU per call (the generator's 2.5 KB state is cold there) and taking the next
    call number 0.3 µs. A keyed hash of a counter is a standard pseudo-random construction:
    ids are unique per process, unpredictable without the key (Mersenne Twister's are not),
    and a fork gets new keys. One digest serves a block of call numbers (:class:`_IdSource`),
    and a new trace id is derived only when no valid ``traceparent`` came in.
    """
    if len(trace) == 4:
        return trace
    incoming, number = trace
    span = span_id_of(number)
    if incoming is not None:
        if type(incoming) is not str:
            incoming = _traceparent_of(incoming)
        if incoming is not None:
            parent = parse_traceparent(incoming)
            if parent is not None:
                return parent[0], span, parent[1], parent[2]
    return trace_id_of(number), span, None, "01"


def _traceparent_of(metadata: Any) -> str | None:
    """The ``traceparent`` value in gRPC invocation metadata (the first one), or None."""
    try:
        for key, value in metadata:
            if key == "traceparent":
                return value if type(value) is str else None
    except (TypeError, ValueError):  # not a sequence of pairs: no usable header
        pass
    return None


# Version 00 is exactly 55 bytes; future versions may append fields after the flags (W3C §3.2.4).
_TRACEPARENT_RE: Final = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL
)
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


_V00_RE: Final = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def parse_traceparent(value: str) -> tuple[str, str, str] | None:
    """(trace_id, parent_span_id, flags) from a ``traceparent`` header; None when invalid."""
    if len(value) == 55 and _V00_RE.fullmatch(value):  # the common case: version 00, no groups
        trace_id, span_id = value[3:35], value[36:52]
        if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
            return None
        return trace_id, span_id, value[53:]
    m = _TRACEPARENT_RE.fullmatch(value)
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, flags


#: The trace ids of the RPC being handled in this context; read by the ECS log formatter (so
#: application logs carry the ids) and by client interceptors (so downstream calls continue the
#: trace). A contextvar works for threads (sync servers) and asyncio tasks alike.
CURRENT_IDS: Final[contextvars.ContextVar[TraceIds | None]] = contextvars.ContextVar(
    "rpcscope_current_ids", default=None
)


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the RPC handled in this context, or None outside one."""
    trace = CURRENT_IDS.get()
    if trace is None:
        return None
    ids = resolve_ids(trace)
    return ids[0], ids[1]


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
        metrics: MethodMetrics | MethodAggregate | None,
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
        "call_details",
        "code",
        "deadline",
        "details",
        "duration_ns",
        "end_wall_ns",
        "error",
        "ids_token",
        "info",
        "metadata",
        "msgs_in",
        "msgs_out",
        "otel_span",
        "peer",
        "start_ns",
        "trace",
    )

    def __init__(self, info: MethodInfo, peer: str | None = None,
                 deadline: float | None = None) -> None:
        self.info = info
        self.start_ns = perf_counter_ns()
        self.code = "OK"
        self.details: str | None = None
        self.error: BaseException | None = None
        self.duration_ns = 0
        self.end_wall_ns = 0
        self.msgs_in = 0
        self.msgs_out = 0
        self.peer = peer
        #: Remaining time at the start, seconds (raw: see deadline_seconds).
        self.deadline = deadline
        #: Sync servers: grpc's CallDetails, from which the log writer reads the deadline
        #: (see Pipeline.start_server and resolve_deadline); None once resolved.
        self.call_details: Any = None
        #: grpc's raw metadata on the request path; picked pairs once logged.
        self.metadata: Any = None
        self.trace: TraceIds | None = None
        self.ids_token: Any = None  # CURRENT_IDS reset token (server calls)
        self.otel_span: Any = None

    def ids(self) -> tuple[str, str, str | None, str] | None:
        """(trace_id, span_id, parent_span_id, flags), or None when tracing is off."""
        trace = self.trace
        return None if trace is None else resolve_ids(trace)


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
    """Runs the enabled consumers of a call record, each guarded against its own failures.

    With deferred metrics (the default outside multiprocess mode) the request path hands the
    record to :class:`~rpcscope.collector._deferred.DeferredMetrics` and is done: metrics are
    folded in, and the record forwarded to the access log, in batches off the request path.
    Everything else that can wait also waits: the invocation metadata is kept as grpc gave it
    and picked/redacted by the log writer (:class:`MetadataPicker`), trace ids are formatted on
    demand (:data:`TraceIds`), and the deadline is normalised by whoever prints it.
    """

    __slots__ = ("_deferred", "_keep_metadata", "errors", "metrics", "sink", "tracing")

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
        self._deferred: DeferredMetrics | None = (
            metrics.deferred if metrics is not None else None
        )
        # Metadata is only ever logged: keep it only when a log and an allowlist exist.
        self._keep_metadata = sink is not None and bool(tuple(metadata_allowlist))

    # -- start ------------------------------------------------------------------------------

    def start_server(self, info: MethodInfo, context: Any, metadata: Any = None,
                     own_task: bool = False) -> CallRecord:
        """Open a server call's record: count ``started``, start its trace. Never raises.

        One function where there were three (``start_sync_server``, this, ``_opened``); the
        finish side likewise (``_server``'s finisher and :meth:`finish`). Code that runs once
        per RPC runs with cold caches, where each Python call adds its own frame setup and
        code to fetch. Counted with callgrind inside a running bench server (one-off, with
        ``_started`` folded in as well), this cut the request path's extra instructions per
        sync call from 15.6k to 13.8k.

        ``metadata``: the call's invocation metadata when the caller already has it (aio);
        otherwise it is read from the context. ``own_task``: the call runs in an asyncio task
        of its own (grpc.aio's coroutine handlers), whose context dies with it, so the trace
        ids set here need no reset at the end (one contextvar operation less per call).

        Sync servers: why not the public context methods. Timed step by step inside a running
        bench server (a one-off measurement), ``time_remaining()`` cost 2 µs of CPU per call,
        ``peer()`` 2.2 and ``invocation_metadata()`` 0.7, over a third of the request path
        then. They are thin wrappers over ``context._rpc_event`` (grpc's private per-call
        event), so the record reads it once: metadata and the peer from it, and it keeps the
        call's ``CallDetails`` so the log writer computes the deadline later, off the request
        path (:func:`resolve_deadline`; its ``deadline`` is absolute, so the value is exact).
        py-grpc-prometheus reads grpc's private per-call state too; here a context without it
        (aio, another grpcio, a test double, a proxy) uses the public methods, and
        ``tests/test_sync_direct.py`` fails if the installed grpcio stops taking this path.

        The server interceptors call this only for unusual calls when rpcscope._speedups is
        built: its ``ServerPath`` does the common call (deferred metrics, ids mode, grpc's
        usual context) in C and hands every other one here (:func:`server_path`).
        """
        record = CallRecord(info)
        try:
            event = None if metadata is not None else getattr(context, "_rpc_event", None)
            if event is not None:
                try:
                    metadata = event.invocation_metadata
                    # Peer and deadline only feed the access log: skip them without one.
                    if self.sink is not None:
                        record.peer = event.call.peer().decode("utf-8", "replace")
                        record.call_details = event.call_details
                except AttributeError:
                    event = None  # an event of another shape (another grpcio): ask the context
            if event is None:
                if metadata is None:
                    metadata = context.invocation_metadata()
                if self.sink is not None:
                    record.peer = context.peer()
                    # Kept raw: the log normalises it (see deadline_seconds).
                    record.deadline = context.time_remaining()
        except Exception:
            self.errors.record("context")
            metadata = None
        if info.metrics is not None:
            self._started(info.metrics)
        tracing = self.tracing
        if tracing is not None:
            try:
                if tracing.tracer is not None or monotonic() >= tracing.next_check:
                    # An OTel span, or the once-a-second look for a provider configured late.
                    tracing.start_server(record, metadata)
                if record.trace is None:
                    # Ids mode (no OTel SDK): keep the metadata and take a call number;
                    # resolve_ids finds the traceparent, validates and formats later, when
                    # something reads the ids (grpc's metadata tuple is immutable).
                    record.trace = trace = (metadata or None, next_call_number())
                    if own_task:
                        CURRENT_IDS.set(trace)
                    else:
                        record.ids_token = CURRENT_IDS.set(trace)
            except Exception:
                self.errors.record("start:tracing")
        if self._keep_metadata:
            record.metadata = metadata  # grpc's immutable tuple; picked by the log writer
        return record

    def start_client(self, info: MethodInfo, deadline: float | None) -> CallRecord:
        """Open a client call's record: count ``started``, start its trace. Never raises."""
        record = CallRecord(info, None, deadline)
        if info.metrics is not None:
            self._started(info.metrics)
        if self.tracing is not None:
            try:
                self.tracing.start_client(record)
            except Exception:
                self.errors.record("start:tracing")
        return record

    def _started(self, mm: MethodMetrics | MethodAggregate) -> None:
        # Guarded on its own: a broken counter must not cost the call its trace ids.
        try:
            if self._deferred is not None:
                self._deferred.pending.append(mm)  # "started", counted in the next batch
            else:
                mm.started.inc()  # type: ignore[union-attr]
        except Exception:
            self.errors.record("start:metrics")

    # -- end --------------------------------------------------------------------------------

    def finish(self, record: CallRecord) -> None:
        """Close a record: metrics, span, access log. Never raises."""
        record.duration_ns = perf_counter_ns() - record.start_ns
        record.end_wall_ns = time_ns()
        # Tracing first, on this thread: it resets this context's trace ids and ends the span.
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
                self.tracing.finish(record)
            except Exception:
                self.errors.record("finish:tracing")
        deferred = self._deferred
        if deferred is not None:
            # Metrics and (via the batch) the access log: one append on the request path.
            try:
                pending = deferred.pending
                pending.append(record)
                if deferred.thread is None or len(pending) > deferred.max_pending:
                    deferred.kick()  # first call: start the thread; starved thread: fold here
            except Exception:
                self.errors.record("finish:deferred")
            return
        # Guarded one by one: a metrics failure must not lose the access-log record.
        mm = record.info.metrics
        if mm is not None:
            try:
                mm.finish(record)  # type: ignore[union-attr]
            except Exception:
                self.errors.record("finish:metrics")
        if self.sink is not None:
            try:
                self.sink.emit_call(record)
            except Exception:
                self.errors.record("finish:log")


class MetadataPicker:
    """Turns a call's raw invocation metadata into the logged, redacted allowlist subset.

    Runs on the log writer, not the request path. Redaction is decided once per allowlisted
    key, not per call. The result is a tuple of (key, value) pairs (hashable, so the line
    encoder can cache its JSON), and picking it again returns it unchanged.
    """

    __slots__ = ("allow",)

    def __init__(self, allowlist: Iterable[str]) -> None:
        #: key -> whether its value is redacted (read by rpcscope._speedups too).
        self.allow = {k.lower(): _must_redact(k.lower()) for k in allowlist}

    def __call__(self, metadata: Any) -> tuple[tuple[str, str], ...] | None:
        allow = self.allow
        picked: list[tuple[str, str]] = []
        for key, value in metadata:
            redact = allow.get(key)
            if redact is not None:
                picked.append(
                    (key, "[REDACTED]" if redact else value if type(value) is str else repr(value))
                )
        return tuple(picked) if picked else None


def prepare_for_log(record: CallRecord, pick: MetadataPicker,
                    on_error: Callable[[str], None]) -> None:
    """What the log writer does to a handed-over call record before encoding it, whatever the
    sink: the deadline from the kept CallDetails, the raw metadata picked (allowlist,
    redaction). The C line encoder does the same without keeping the picked tuple."""
    if record.call_details is not None:
        resolve_deadline(record, on_error)
    if record.metadata is not None:
        record.metadata = pick(record.metadata)


def resolve_deadline(record: CallRecord, on_error: Callable[[str], None]) -> None:
    """Turn a sync call's kept ``CallDetails`` into its remaining time at the start (seconds).

    grpc's ``CallDetails.deadline`` is absolute wall-clock time, fixed when the call arrived,
    and the object holds no reference to the call itself; ``time_remaining()`` at the start
    was exactly ``deadline - start`` (floored at 0, as grpc does). If it cannot be read, the
    record loses only its deadline and ``on_error("log:deadline")`` counts it.
    """
    details = record.call_details
    record.call_details = None
    try:
        start = (record.end_wall_ns - record.duration_ns) / 1e9
        record.deadline = max(details.deadline - start, 0.0)
    except Exception:
        on_error("log:deadline")


def deadline_seconds(remaining: float | None) -> float | None:
    """A call's remaining time as logged: None when there is no (meaningful) deadline."""
    if remaining is None or not math.isfinite(remaining) or remaining > 1e8:
        return None
    return float(remaining)


def _must_redact(key: str) -> bool:
    """Allowlisted metadata still passes a deny check: credentials never reach a log."""
    return key.endswith("-bin") or key in schema.ALWAYS_REDACTED_METADATA or _looks_secret(key)


_SECRET_HINTS: Final = ("key", "token", "secret", "password", "passwd", "auth", "session", "cookie")


def _looks_secret(key: str) -> bool:
    return any(hint in key for hint in _SECRET_HINTS)


HOSTNAME: Final = socket.gethostname()


def ignore_error(where: str) -> None:
    """Default error hook where no counter is bound (a lost field or fold is counted by the
    Scope's hook once it binds one)."""


def server_path(pipe: Pipeline, finish: Callable[..., None], aio: bool, cancelled: str
                ) -> tuple[Callable[..., CallRecord], Callable[..., None]]:
    """A server interceptor's start and finish: ``pipe.start_server`` and ``finish`` (its
    finisher), or, when rpcscope._speedups is built and metrics are deferred, its
    ``ServerPath``, which does the common call (OK, ids mode, grpc's usual context) in C and
    hands every other call to those two, the reference. Why: see ServerPath in _speedups.c."""
    from rpcscope.collector._deferred import DeferredMetrics  # both import this module
    from rpcscope.collector._trace import Tracing

    speedups = load_speedups()
    if speedups is not None and pipe._deferred is not None:
        try:
            path = speedups.ServerPath(
                pipe, CallRecord, MethodInfo, deque, DeferredMetrics, Tracing, CURRENT_IDS,
                next_call_number, pipe.start_server, finish, aio, grpc.StatusCode.OK, cancelled,
            )
        except TypeError:  # a CallRecord or Pipeline of another shape: Python
            _LOG.debug("rpcscope: C request path unavailable", exc_info=True)
        else:
            return path.start, path.finish
    return pipe.start_server, finish


def load_speedups() -> Any:
    """rpcscope._speedups (the C log line encoder, metrics fold and server request path), or
    None: not built (no compiler at install time) or turned off with RPCSCOPE_PURE_PYTHON=1 (to
    compare, or to rule it out). Each user asks when it is built, so the variable is read
    then. The Python code it stands in for stays the reference: see _speedups.c."""
    if os.environ.get("RPCSCOPE_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from rpcscope import _speedups
    except ImportError:
        return None
    return _speedups
