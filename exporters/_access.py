"""The access log and application logs: a batcher consumer that turns items into documents.

:class:`LogWriter` is what the batcher hands batches to, once per sink: it picks and redacts
the invocation metadata, resolves deadlines, encodes each finished call (and each application
``logging`` record) and gives the batch to its :class:`~rpcscope.exporters._logs.LogSink`. It
counts every record it was offered: delivered (what the sink took), dropped (the queue was
full, the document could not be built, the sink failed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from rpcscope import schema
from rpcscope.collector._batcher import Batcher
from rpcscope.collector._core import CallRecord
from rpcscope.exporters._ecs import (
    Identity,
    call_document,
    capture_ids,
    encode_json,
    log_record_document,
)
from rpcscope.exporters._jsonline import CallLineEncoder
from rpcscope.exporters._logs import LineSink, LogSink

_LOG = logging.getLogger("rpcscope")


class MetadataPicker:
    """Turns a call's raw invocation metadata into the logged, redacted allowlist subset.

    Redaction is decided once per allowlisted key, not per call. The result is a tuple of
    (key, value) pairs (hashable, so the line encoder can cache its JSON), and picking it
    again returns it unchanged.
    """

    __slots__ = ("allow",)

    def __init__(self, allowlist: Iterable[str]) -> None:
        #: key -> whether its value is redacted.
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
    """What every log sink's documents need from a finished call record: the deadline from the
    kept CallDetails, and the raw metadata picked (allowlist, redaction). Idempotent, so each
    writer may call it on a record the previous writer already prepared."""
    if record.call_details is not None:
        resolve_deadline(record, on_error)
    if record.metadata is not None:
        record.metadata = pick(record.metadata)
    peer = record.peer
    if type(peer) is bytes:
        record.peer = peer.decode("utf-8", "replace")


def resolve_deadline(record: CallRecord, on_error: Callable[[str], None]) -> None:
    """Turn a sync call's kept ``CallDetails`` into its remaining time at the start (seconds).

    grpc's ``CallDetails.deadline`` is absolute wall-clock time, fixed when the call arrived;
    ``time_remaining()`` at the start was exactly ``deadline - start`` (floored at 0, as grpc
    does). If it cannot be read, the record loses only its deadline and ``on_error`` counts it.
    """
    details = record.call_details
    record.call_details = None
    try:
        start = (record.end_wall_ns - record.duration_ns) / 1e9
        record.deadline = max(details.deadline - start, 0.0)
    except Exception:
        on_error("log:deadline")


def _must_redact(key: str) -> bool:
    """Allowlisted metadata still passes a deny check: credentials never reach a log."""
    return key.endswith("-bin") or key in schema.ALWAYS_REDACTED_METADATA or _looks_secret(key)


_SECRET_HINTS: Final = ("key", "token", "secret", "password", "passwd", "auth", "session", "cookie")


def _looks_secret(key: str) -> bool:
    return any(hint in key for hint in _SECRET_HINTS)


class LogWriter:
    """One log sink as a batcher consumer: encodes its batches and counts every record."""

    def __init__(
        self,
        sink: LogSink,
        identity: Identity,
        sides: Iterable[str],
        metadata_allowlist: Iterable[str] = (),
        on_outcome: Callable[[str, int], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.sink = sink
        self._identity = identity
        self._sides = frozenset(sides)
        self._pick = MetadataPicker(metadata_allowlist)
        self._on_outcome = on_outcome
        self._on_error = on_error
        # Line sinks get the fast line encoder's output; other sinks get documents.
        self._lines = CallLineEncoder(identity) if isinstance(sink, LineSink) else None
        self._count_lock = threading.Lock()
        self.delivered = 0
        self.dropped = 0
        #: Of ``dropped``: documents the sink's write() was handed and did not take.
        self._refused = 0

    def _wanted(self, item: Any) -> bool:
        if type(item) is CallRecord or isinstance(item, CallRecord):
            return item.info.side in self._sides
        return isinstance(item, logging.LogRecord)

    def stats(self) -> dict[str, int]:
        """Records offered to this sink so far (``emitted``), those it delivered and those
        dropped. A sink that acknowledges on its own (the Forward shipper) says what was
        delivered: acknowledged by the server; what it still holds is neither."""
        with self._count_lock:
            taken, dropped, refused = self.delivered, self.dropped, self._refused
        emitted = taken + dropped
        delivered = taken
        sink_stats = getattr(self.sink, "stats", None)
        if callable(sink_stats):
            counts = sink_stats()
            if "acked" in counts:
                # The sink's own drops include those it refused in write(): count them once.
                delivered = counts["acked"]
                dropped += (counts.get("dropped", 0) + counts.get("dead_lettered", 0)
                            - refused)
        return {"emitted": emitted, "delivered": delivered, "dropped": dropped}

    # -- Consumer ---------------------------------------------------------------------------

    def consume(self, batch: Sequence[Any]) -> None:
        identity = self._identity
        lines = self._lines
        call_line = lines.encode if lines is not None else None
        sides = self._sides
        pick, field_error = self._pick, self._field_error
        documents: list[Any] = []
        failed = 0
        for item in batch:
            try:
                if type(item) is CallRecord or isinstance(item, CallRecord):
                    if item.info.side not in sides:
                        continue
                    prepare_for_log(item, pick, field_error)
                    documents.append(call_line(item) if call_line is not None
                                     else call_document(item, identity))
                elif isinstance(item, logging.LogRecord):
                    document = log_record_document(item, identity)
                    documents.append(encode_json(document) if call_line is not None
                                     else document)
            except Exception:
                # Could not even build the document: count it, never stop the batch.
                failed += 1
                _LOG.debug("rpcscope: could not build a log document", exc_info=True)
        written = 0
        if documents:
            try:
                sink = self.sink
                written = (sink.write_lines(documents) if isinstance(sink, LineSink)
                           else sink.write(documents))
            except Exception:
                failed += len(documents)
                documents = []
                _LOG.debug("rpcscope: log sink failed", exc_info=True)
        refused = len(documents) - written
        if refused:
            with self._count_lock:
                self._refused += refused
        self._add(written, refused + failed)

    def lost(self, batch: Sequence[Any]) -> None:
        self._add(0, sum(1 for item in batch if self._wanted(item)))

    def flush(self, timeout: float) -> None:
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            flush(timeout)

    def close(self, timeout: float) -> None:
        try:
            self.sink.close(timeout)
        except TypeError:  # a user's sink written against close() without a timeout
            self.sink.close()
        except Exception:
            _LOG.debug("rpcscope: log sink close failed", exc_info=True)

    # -- counting ---------------------------------------------------------------------------

    def _add(self, delivered: int, dropped: int) -> None:
        if not delivered and not dropped:
            return
        with self._count_lock:
            self.delivered += delivered
            self.dropped += dropped
        if self._on_outcome is not None:
            try:
                self._on_outcome(schema.LOG_OUTCOME_EMITTED, delivered + dropped)
                if delivered:
                    self._on_outcome(schema.LOG_OUTCOME_DELIVERED, delivered)
                if dropped:
                    self._on_outcome(schema.LOG_OUTCOME_DROPPED, dropped)
            except Exception:  # noqa: S110 - counting must never break delivery
                pass

    def _field_error(self, where: str) -> None:
        """An error that cost a record one field, not the record: an instrumentation error."""
        if self._on_error is not None:
            self._on_error(where)


class LoggingHandler(logging.Handler):
    """A ``logging.Handler`` that routes application records through the scope's batcher.

    Application logs then travel with the access log (same sinks, same ECS fields, same trace
    ids) and are formatted off the calling thread.
    """

    def __init__(self, batcher: Batcher, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._batcher = batcher

    def handle(self, record: logging.LogRecord) -> Any:
        """``Handler.handle`` without the handler lock: ``emit`` only appends to a deque (atomic
        under the GIL), so threads that log never wait for each other here."""
        rv: Any = True
        if self.filters:
            rv = self.filter(record)
            if not rv:
                return rv
            if isinstance(rv, logging.LogRecord):  # Python 3.12+: a filter may replace it
                record = rv
        self.emit(record)
        return rv

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Resolve the message and ids now: args may change and the context is ours only now.
            record.message = message = record.getMessage()
            record.msg = message
            record.args = None
            record.rpcscope_ids = capture_ids()
            batcher = self._batcher
            pending = batcher.pending
            pending.append(record)
            if batcher.thread is None or len(pending) > batcher.max_pending:
                batcher.kick()
        except Exception:
            self.handleError(record)
