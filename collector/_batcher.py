"""The one batcher: the queue of finished calls, the one background thread, and its consumers.

The request path appends to :attr:`Batcher.pending` (a deque: atomic, no lock, no I/O) and is
done. Everything else happens here, in batches, in two stages:

1. **fold** (under a short lock): take what is pending and hand it to each *fold* in turn (the
   metrics). A scrape, :meth:`flush`, :meth:`close` and the thread all fold; so does a producer
   that finds more than ``max_pending`` items queued (the thread is starved): metrics are never
   dropped. The folded items then wait in a bounded *ready* queue; past ``max_ready`` they are
   dropped, and each consumer counts what it lost.
2. **consume** (on the thread, or in :meth:`flush`/:meth:`close`): hand each batch of ready
   items to each *consumer* in turn (the log writers: stdout or file, the Forward shipper).
   Consumers may do I/O; the request path never waits for them.

No consumer calls another, and none knows the others exist. Items are whatever producers
append: a method's metrics handle (a call started), a finished ``CallRecord``, an application
``logging.LogRecord``; each fold or consumer takes the kinds it knows and skips the rest.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class Consumer(Protocol):
    """What the batcher hands ready batches to (see exporters/ for the log writers)."""

    def consume(self, batch: Sequence[Any]) -> None:
        """Take one batch (called from one thread at a time, in queue order)."""

    def lost(self, batch: Sequence[Any]) -> None:
        """Count the items of ``batch`` this consumer would have taken: the queue was full."""

    def flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for what was consumed to leave the process."""

    def close(self, timeout: float) -> None:
        """Deliver what is left within ``timeout`` seconds and release resources."""


Fold = Callable[[Sequence[Any]], None]


class Batcher:
    """Owns the queue of finished calls and the one thread that hands batches to consumers."""

    #: Items per consumer batch: large enough to amortise, small enough to stay in cache.
    BATCH = 1000

    def __init__(self, on_error: Callable[[str], None], interval: float = 0.2,
                 max_pending: int = 100_000, max_ready: int = 10_000) -> None:
        self.on_error = on_error
        self.interval = interval
        self.max_pending = max_pending
        self.max_ready = max_ready
        #: The request path's hand-off (appended to directly: no method call per RPC).
        self.pending: deque[Any] = deque()
        #: The background thread, started by the first :meth:`kick`; read by the request path.
        self.thread: threading.Thread | None = None
        self._folds: list[Fold] = []
        self._fold_only: tuple[type, ...] = ()
        self._consumers: list[Consumer] = []
        self._ready: deque[Any] = deque()
        self._fold_lock = threading.Lock()
        self._consume_lock = threading.Lock()
        self._wake = threading.Event()
        self._busy = False
        self._closed = False
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))
        atexit.register(_close_at_exit, ref)

    def add_fold(self, fold: Fold, own_types: tuple[type, ...] = ()) -> None:
        """``own_types``: item types only this fold reads (a metrics handle appended when a
        call starts); they are not queued for the consumers."""
        self._folds.append(fold)
        self._fold_only += own_types

    def add_consumer(self, consumer: Consumer) -> None:
        self._consumers.append(consumer)

    # -- request path -----------------------------------------------------------------------

    def kick(self) -> None:
        """Start the thread if needed; fold here if the queue outgrew ``max_pending``."""
        if len(self.pending) > self.max_pending:
            self.fold()  # the thread is starved: fold here rather than grow without bound
        if self.thread is None and not self._closed:
            with self._fold_lock:
                if self.thread is None:
                    thread = threading.Thread(target=self._run, name="rpcscope-batcher",
                                              daemon=True)
                    thread.start()
                    self.thread = thread

    # -- stage 1: fold ----------------------------------------------------------------------

    def fold(self) -> None:
        """Fold everything pending into the metrics; queue it for the consumers."""
        with self._fold_lock:
            pending = self.pending
            n = len(pending)
            if not n:
                return
            popleft = pending.popleft
            batch = [popleft() for _ in range(n)]
            for fold in self._folds:
                try:
                    fold(batch)
                except Exception:
                    self.on_error("fold")
            if not self._consumers:
                return
            fold_only = self._fold_only
            if fold_only:
                batch = [item for item in batch if type(item) not in fold_only]
                n = len(batch)
            room = self.max_ready - len(self._ready)
            if room >= n:
                self._ready.extend(batch)
                return
            kept = max(room, 0)
            self._ready.extend(batch[:kept])
            for consumer in self._consumers:
                try:
                    consumer.lost(batch[kept:])
                except Exception:
                    self.on_error("lost")

    # -- stage 2: consume -------------------------------------------------------------------

    def _consume(self) -> None:
        with self._consume_lock:
            self._busy = True
            try:
                ready = self._ready
                while ready:
                    popleft = ready.popleft
                    batch = [popleft() for _ in range(min(len(ready), self.BATCH))]
                    for consumer in self._consumers:
                        try:
                            consumer.consume(batch)
                        except Exception:
                            self.on_error("consume")
            finally:
                self._busy = False

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval)
            self._wake.clear()
            self.fold()
            self._consume()

    # -- flush and close --------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> None:
        """Fold, hand every ready item to the consumers, and let them flush (bounded)."""
        end = time.monotonic() + timeout
        self.fold()
        thread = self.thread
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            self._consume()
        else:
            while (self._ready or self._busy) and time.monotonic() < end:
                self._wake.set()
                time.sleep(0.005)
        for consumer in self._consumers:
            try:
                consumer.flush(max(end - time.monotonic(), 0.0))
            except Exception:
                self.on_error("flush")

    def close(self, timeout: float = 5.0) -> None:
        """Fold and deliver what is left (bounded by ``timeout``), stop the thread, close the
        consumers. Idempotent."""
        if self._closed:
            return
        end = time.monotonic() + timeout
        self._closed = True
        self._wake.set()
        thread = self.thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(max(end - time.monotonic(), 0.0))
        self.fold()
        if thread is None or not thread.is_alive():
            self._consume()
        for consumer in self._consumers:
            try:
                consumer.close(max(end - time.monotonic(), 0.0))
            except Exception:
                self.on_error("close")

    def _reset_after_fork(self) -> None:
        # The parent's thread does not exist here, and a lock may have been held mid-fork.
        # Items still queued are the parent's: the parent folds and writes them, not the child.
        self.pending = deque()
        self._ready = deque()
        self._fold_lock = threading.Lock()
        self._consume_lock = threading.Lock()
        self._wake = threading.Event()
        self._busy = False
        self.thread = None


def _after_fork(ref: weakref.ref[Batcher]) -> None:
    batcher = ref()
    if batcher is not None:
        batcher._reset_after_fork()


def _close_at_exit(ref: weakref.ref[Batcher]) -> None:
    batcher = ref()
    if batcher is not None:
        batcher.close(timeout=2.0)
