"""Access-log and application-log delivery: a bounded in-memory queue drained by one thread.

The request path only appends a finished :class:`CallRecord` to a deque (atomic, no lock, no
I/O). Building the ECS document, JSON encoding and writing happen on the worker thread, so a slow
stdout pipe or disk never slows an RPC. When the queue is full the record is dropped and counted
(``rpcscope_log_records_total{outcome="dropped"}``): telemetry never applies back-pressure to the
service it observes.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from rpcscope.collector._core import CallRecord, MetadataPicker, prepare_for_log
from rpcscope.exporters._ecs import (
    Identity,
    call_document,
    capture_ids,
    encode_json,
    log_record_document,
)
from rpcscope.exporters._jsonline import CallLineEncoder

_LOG = logging.getLogger("rpcscope")

#: Lines joined per ``write``. Why not the whole batch at once: a batch is hundreds of ~600-byte
#: lines, and text that large is allocated with mmap and page-faulted in afresh, twice (the
#: joined str and its UTF-8 bytes), on every batch. Timed warm for 2000 lines to a file,
#: one join per batch cost 0.9 µs of CPU per line, 128 lines per write 0.3.
_LINES_PER_WRITE = 128


def _write_chunked(write: Callable[[str], Any], lines: Sequence[str]) -> int:
    """Write ``lines`` newline-terminated, ``_LINES_PER_WRITE`` at a time; how many were
    written. A failing write raises only if nothing was written yet; after that, the lines
    written so far count as delivered and the rest as dropped (the caller's accounting)."""
    written = 0
    for start in range(0, len(lines), _LINES_PER_WRITE):
        chunk = lines[start:start + _LINES_PER_WRITE]
        try:
            write("\n".join((*chunk, "")))
        except Exception:
            if not written:
                raise
            _LOG.debug("rpcscope: log sink failed part-way", exc_info=True)
            break
        written += len(chunk)
    return written


class LogSink:
    """Where encoded log documents go. Called only from the log worker thread, in batches.

    Subclass and override :meth:`write` to send documents elsewhere; return how many were
    delivered (the rest count as dropped). ``close`` flushes and releases resources.
    """

    def write(self, documents: Sequence[dict[str, Any]]) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources; the default has none."""


class LineSink(LogSink):
    """A sink of JSON lines. The log pipe hands it pre-encoded lines (the fast encoder's output)
    through :meth:`write_lines`; :meth:`write` encodes documents and delegates."""

    def write(self, documents: Sequence[dict[str, Any]]) -> int:
        return self.write_lines([encode_json(d) for d in documents])

    def write_lines(self, lines: Sequence[str]) -> int:
        raise NotImplementedError


class StreamSink(LineSink):
    """One JSON line per document to a text stream (stdout by default: what Fluentd tails)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream

    def write_lines(self, lines: Sequence[str]) -> int:
        stream = self._stream if self._stream is not None else sys.stdout

        def write(text: str) -> None:
            try:
                stream.write(text)
            except UnicodeEncodeError:
                # A lone surrogate (e.g. a filename decoded with surrogateescape) cannot be
                # encoded by a strict UTF-8 stdout; escape it rather than lose the lines.
                stream.write(text.encode("utf-8", "backslashreplace").decode("utf-8"))

        written = _write_chunked(write, lines)
        stream.flush()
        return written


class FileSink(LineSink):
    """JSON lines appended to a file (opened lazily, reopened after fork)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file: IO[str] | None = None
        self._pid = 0

    def write_lines(self, lines: Sequence[str]) -> int:
        if self._file is None or self._pid != os.getpid():
            # backslashreplace: a lone surrogate in one record is escaped (valid JSON: \udcff)
            # instead of failing the write of the whole batch.
            self._file = open(self.path, "a", encoding="utf-8",  # noqa: SIM115 - long-lived
                              errors="backslashreplace")
            self._pid = os.getpid()
        written = _write_chunked(self._file.write, lines)
        self._file.flush()
        return written

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class LogPipe:
    """The queue between RPCs and a sink; counts emitted / delivered / dropped."""

    def __init__(
        self,
        sink: LogSink,
        identity: Identity,
        max_queue: int = 10_000,
        flush_interval: float = 0.2,
        on_outcome: Callable[[str, int], None] | None = None,
        metadata_allowlist: Iterable[str] = (),
    ) -> None:
        self.sink = sink
        self._pick_metadata = MetadataPicker(metadata_allowlist)
        self._identity = identity
        # Line sinks get the fast encoder's output; other sinks (e.g. Forward) get documents.
        self._lines = (CallLineEncoder(identity, self._pick_metadata, self._field_error)
                       if isinstance(sink, LineSink) else None)
        self._max = max_queue
        self._interval = flush_interval
        self._on_outcome = on_outcome
        self._queue: deque[CallRecord | logging.LogRecord] = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._busy = False
        self._inflight = 0
        self.delivered = 0
        self.dropped = 0
        #: Drains whatever holds records before this pipe (deferred metrics), so flush/close
        #: also deliver calls that finished but were not yet handed over.
        self.upstream: Callable[[], None] | None = None
        #: Counts an error that cost a record one field, not the record (bound by the Scope).
        self.on_error: Callable[[str], None] | None = None
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))
        atexit.register(_close_at_exit, ref)

    # -- producer side (request path) ------------------------------------------------------

    def emit_call(self, record: CallRecord) -> None:
        self._put(record)

    def emit_calls(self, records: list[CallRecord]) -> None:
        """A batch of finished calls (from deferred metrics' drain); same bound as one by one."""
        room = self._max - len(self._queue)
        if self._closed:
            room = 0
        if room >= len(records):
            self._queue.extend(records)
        else:
            self._queue.extend(records[:max(room, 0)])
            lost = len(records) - max(room, 0)
            with self._count_lock:
                self.dropped += lost
            self._count("emitted", lost)
            self._count("dropped", lost)
        if self._thread is None:
            self.start_thread()

    def emit_log(self, record: logging.LogRecord) -> None:
        self._put(record)

    def _upstream(self) -> None:
        if self.upstream is not None:
            try:
                self.upstream()
            except Exception:
                _LOG.debug("rpcscope: draining upstream records failed", exc_info=True)

    @property
    def emitted(self) -> int:
        """Derived, not counted on the request path: a shared counter there would race."""
        return self.delivered + self.dropped + len(self._queue) + self._inflight

    def _put(self, item: CallRecord | logging.LogRecord) -> None:
        if self._closed or len(self._queue) >= self._max:
            with self._count_lock:  # rare path (queue full): a lock is affordable here
                self.dropped += 1
            self._count("emitted", 1)
            self._count("dropped", 1)
            return
        self._queue.append(item)
        if self._thread is None:
            self.start_thread()

    # -- worker side -------------------------------------------------------------------------

    def start_thread(self) -> threading.Thread | None:
        """Start the writer thread if needed; it also drives ``upstream`` (deferred metrics)."""
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="rpcscope-log-writer", daemon=True
                )
                self._thread.start()
            return self._thread

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._interval)
            self._wake.clear()
            self._upstream()  # fold the finished calls in and take them over, then write them
            self._drain()
        self._drain()

    def _drain(self) -> None:
        self._busy = True
        try:
            self._drain_queue()
        finally:
            self._busy = False

    def _drain_queue(self) -> None:
        queue = self._queue
        while queue:
            batch: list[CallRecord | logging.LogRecord] = []
            while queue and len(batch) < 1000:
                batch.append(queue.popleft())
            self._inflight = len(batch)
            self._count("emitted", len(batch))
            documents: list[Any] = []
            lines = self._lines
            # A line sink's call records take one step each: deadline, metadata pick and line
            # (in C when rpcscope._speedups is built: see CallLineEncoder).
            call_line = lines.line if lines is not None else None
            for item in batch:
                try:
                    if call_line is not None:
                        documents.append(
                            call_line(item) if isinstance(item, CallRecord)
                            else encode_json(log_record_document(item, self._identity))
                        )
                    elif isinstance(item, CallRecord):
                        prepare_for_log(item, self._pick_metadata, self._field_error)
                        documents.append(call_document(item, self._identity))
                    else:
                        documents.append(log_record_document(item, self._identity))
                except Exception:
                    # Could not even build the document: count it, never crash the worker.
                    with self._count_lock:
                        self.dropped += 1
                    self._inflight -= 1
                    self._count("dropped", 1)
                    _LOG.debug("rpcscope: could not build a log document", exc_info=True)
            if not documents:
                self._inflight = 0
                continue
            try:
                written = (self.sink.write_lines(documents) if isinstance(self.sink, LineSink)
                           else self.sink.write(documents))
            except Exception:
                written = 0
                _LOG.debug("rpcscope: log sink failed", exc_info=True)
            lost = len(documents) - written
            with self._count_lock:
                self.delivered += written
                self.dropped += lost
            self._inflight = 0
            self._count("delivered", written)
            self._count("dropped", lost)

    def _field_error(self, where: str) -> None:
        """An error that cost a record one field, not the record: an instrumentation error."""
        if self.on_error is not None:
            self.on_error(where)

    def _count(self, outcome: str, n: int) -> None:
        if self._on_outcome is not None and n:
            try:
                self._on_outcome(outcome, n)
            except Exception:  # noqa: S110 - counting must never break delivery
                pass

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far was handed to the sink (or the timeout passed)."""
        self._upstream()
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._drain()
            return
        end = time.monotonic() + timeout
        while (self._queue or self._busy) and time.monotonic() < end:
            self._wake.set()
            time.sleep(0.005)

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._upstream()
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout)
        else:
            self._drain()
        try:
            self.sink.close()
        except Exception:
            _LOG.debug("rpcscope: log sink close failed", exc_info=True)

    def stats(self) -> dict[str, int]:
        return {"emitted": self.emitted, "delivered": self.delivered, "lost": self.dropped}

    def _reset_after_fork(self) -> None:
        self._queue = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None


def _after_fork(ref: weakref.ref[LogPipe]) -> None:
    pipe = ref()
    if pipe is not None:
        pipe._reset_after_fork()


def _close_at_exit(ref: weakref.ref[LogPipe]) -> None:
    pipe = ref()
    if pipe is not None:
        pipe.close(timeout=2.0)


class LoggingHandler(logging.Handler):
    """A ``logging.Handler`` that routes application records through the scope's log pipe.

    Application logs then travel with the access log (same sink, same ECS fields, same trace
    ids) and formatting happens off the calling thread.
    """

    def __init__(self, pipe: LogPipe, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._pipe = pipe

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Resolve the message and ids now: args may change and the context is ours only now.
            record.message = record.getMessage()
            record.msg, record.args = record.message, None
            # The worker thread that builds the document has no access to this context: capture
            # the ids here, unformatted; the worker formats them.
            record.rpcscope_ids = capture_ids()
            self._pipe.emit_log(record)
        except Exception:
            self.handleError(record)
