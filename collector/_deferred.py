"""Deferred metric aggregation: a call appends to a deque; batches fold in off the request path.

Why by hand. prometheus_client takes a lock on every ``inc``/``observe`` (about 0.8 µs each; a
unary call needs five, plus exemplar validation). And code that runs once per RPC runs with cold
CPU caches: between two calls, gRPC's own machinery evicts ours, so a per-call cost measured in
a tight loop is several times smaller than what a real server pays (``bench/micro.py --cold``
shows it). So the request path only appends, to one deque (atomic, no lock): the call's
:class:`MethodAggregate` when it starts and its finished ``CallRecord`` when it ends. Folding
them into counters and histogram buckets happens in batches, warm, under one lock:

* on a background thread every ``interval`` seconds (bounded memory without scrapes): its own,
  or, when there is an access log, the log writer's (``driver``), which then encodes each batch
  right after folding it in, while the records are still in the CPU cache, and one thread wakes
  instead of two;
* at the start of every ``collect()``, i.e. every scrape and ``registry.get_sample_value``, so
  ``/metrics`` is always exact up to the moment it is read, never stale;
* by the producer itself if the deque ever exceeds ``max_pending`` (the thread is starved):
  metrics are never dropped.

The same batch hands finished records on to the access log (``forward``), so a call costs one
append for metrics and log together. The fold loop itself runs in C when
``rpcscope._speedups`` was built (``Folder``; callgrind, a fold micro-benchmark with the
appends included: 5.8k -> 1.5k instructions per call); the loop in
:meth:`DeferredMetrics.drain` stays the reference and takes every item the C side hands
back. prometheus_client still does the registry, the families, text and OpenMetrics
exposition with exemplars, and content negotiation. In multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``) the lock-based metrics of ``_metrics.py`` are used instead,
because only they write the shared mmap files.
"""

from __future__ import annotations

import os
import threading
import weakref
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from rpcscope import schema
from rpcscope.collector._core import (
    CallRecord,
    MethodInfo,
    ignore_error,
    load_speedups,
    resolve_ids,
)

if TYPE_CHECKING:
    from rpcscope.collector._core import TraceIds

_CODE_INDEX: Final = {code: i for i, code in enumerate(schema.CODES)}
_N_CODES: Final = len(schema.CODES)
_UNKNOWN: Final = _CODE_INDEX["Unknown"]  # where a code outside the table is counted
# Layout of MethodAggregate.counts: [started, received, sent, *handled_by_code, *bucket_counts].
_STARTED, _RECEIVED, _SENT = 0, 1, 2
_HANDLED: Final = 3
_BUCKETS: Final = _HANDLED + _N_CODES


class MethodAggregate:
    """All five families for one (side, type, service, method); written only under the lock."""

    __slots__ = ("counts", "exemplars", "initialized", "labels", "side", "sum")

    def __init__(self, side: str, labels: tuple[str, str, str], n_buckets: int) -> None:
        self.side = side
        self.labels = labels
        self.counts = [0] * (_BUCKETS + n_buckets)
        self.sum = 0.0
        # Per bucket: the latest call's (trace ids, seconds, unix time); ids formatted at scrape.
        self.exemplars: list[tuple[TraceIds, float, float] | None] = [None] * n_buckets
        self.initialized = False

    def initialize(self) -> None:
        """Expose every code of ``handled`` at zero (Go's InitializeMetrics)."""
        self.initialized = True


class DeferredMetrics(Collector):
    """Registered once in the registry; folds pending calls in, then yields both sides."""

    #: What the request path reads on every call (rpcscope._speedups.ServerPath reads these
    #: slots in place); the rest of the state lives in the instance dict.
    __slots__ = ("max_pending", "pending", "thread")

    def __init__(
        self,
        registry: CollectorRegistry | None,
        buckets: Sequence[float],
        exemplars: bool,
        interval: float = 0.25,
        max_pending: int = 100_000,
    ) -> None:
        self._bounds = list(buckets)
        self._n_buckets = len(self._bounds) + 1  # + the +Inf bucket
        self._exemplars = exemplars
        self._interval = interval
        self.max_pending = max_pending
        #: The C fold (rpcscope._speedups.Folder) when built; it folds the common items and
        #: leaves the rest to the Python loop in drain(), the reference.
        self._folder: Any = None
        speedups = load_speedups()
        if speedups is not None:
            try:
                self._folder = speedups.Folder(
                    MethodAggregate, CallRecord, MethodInfo, self._bounds, _CODE_INDEX,
                    exemplars, (_STARTED, _RECEIVED, _SENT, _HANDLED, _BUCKETS, _UNKNOWN),
                )
            except TypeError:  # bounds C cannot compare exactly (huge ints): the Python loop
                pass
        self._methods: list[MethodAggregate] = []
        #: The request path's hand-off: Pipeline appends MethodAggregates ("started") and
        #: finished CallRecords directly (no method call: see Pipeline.start_server on why).
        self.pending: deque[Any] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        #: The draining thread, started on the first finished call (read by the Pipeline).
        self.thread: threading.Thread | None = None
        self._closed = False
        #: Receives each batch's finished records whose component is in ``log_components``.
        self.forward: Callable[[list[CallRecord]], None] | None = None
        self.log_components: frozenset[str] = frozenset()
        #: Counts a swallowed error (bound by the Scope to the instrumentation-errors counter).
        self.on_error: Callable[[str], None] = ignore_error
        #: Starts (if needed) and returns the thread that calls drain() periodically; None: our
        #: own thread. Set by the Scope to the log writer's.
        self.driver: Callable[[], threading.Thread | None] | None = None
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))
        if registry is not None:
            registry.register(self)

    def for_method(self, side: str, labels: tuple[str, str, str]) -> MethodAggregate:
        m = MethodAggregate(side, labels, self._n_buckets)
        with self._lock:
            self._methods.append(m)
        return m

    # -- request path (Pipeline appends to ``pending`` itself) -----------------------------------

    def kick(self) -> None:
        """Start the thread if needed; fold in here if the queue outgrew ``max_pending``."""
        if len(self.pending) > self.max_pending:
            self.drain()  # the thread is starved: fold in here rather than grow without bound
        if self.thread is None and not self._closed:
            if self.driver is not None:
                self.thread = self.driver()
                return
            with self._lock:
                if self.thread is None:
                    self.thread = threading.Thread(
                        target=self._run, name="rpcscope-metrics", daemon=True
                    )
                    self.thread.start()

    # -- batches --------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self._interval)
            self._wake.clear()
            self.drain()

    def drain(self) -> None:
        """Fold every pending call into the aggregates and forward finished records to the log."""
        forward = self.forward
        components = self.log_components
        out: list[CallRecord] = []
        with self._lock:
            pending = self.pending
            popleft = pending.popleft
            bounds = self._bounds
            exemplars = self._exemplars
            code_index = _CODE_INDEX.get
            keep = out.append if forward is not None else None
            n = len(pending)
            if self._folder is not None:
                # C folds the common items; the first other one and the rest are the loop's.
                try:
                    n -= self._folder.fold(pending, n, out if forward is not None else None,
                                           components)
                except Exception:  # out of memory mid-item: that item is lost, and counted
                    self.on_error("metrics")
                    n = min(n, len(pending))
            for _ in range(n):
                item = popleft()
                if type(item) is MethodAggregate:
                    item.counts[_STARTED] += 1
                    continue
                try:
                    agg: MethodAggregate = item.info.metrics
                    counts = agg.counts
                    counts[_HANDLED + code_index(item.code, _UNKNOWN)] += 1
                    counts[_RECEIVED] += item.msgs_in
                    counts[_SENT] += item.msgs_out
                    seconds = item.duration_ns / 1e9
                    agg.sum += seconds
                    i = bisect_left(bounds, seconds)
                    counts[_BUCKETS + i] += 1
                    if exemplars and item.trace is not None:
                        agg.exemplars[i] = (item.trace, seconds, item.end_wall_ns / 1e9)
                except Exception:
                    self.on_error("metrics")
                if keep is not None and item.info.component in components:
                    keep(item)
            if out and forward is not None:
                # Under the lock, so two concurrent drains cannot swap their batches' order in
                # the log; forward only appends to the log writer's queue.
                try:
                    forward(out)
                except Exception:
                    self.on_error("forward")

    def close(self) -> None:
        """Fold in what is pending and stop our thread (the aggregates stay readable)."""
        self._closed = True
        self._wake.set()
        thread = self.thread
        if self.driver is None and thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        self.drain()

    def _reset_after_fork(self) -> None:
        # The parent's thread does not exist here; the lock may have been held mid-fork. Calls
        # still pending are the parent's: the parent counts and logs them, not this child.
        self.pending = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.thread = None

    # -- exposition -----------------------------------------------------------------------------

    def describe(self) -> list[Metric]:
        # Names are fixed, so the registry can check collisions without a scrape.
        return [f for side in ("server", "client") for f in _families(side)]

    def collect(self) -> Iterator[Metric]:
        self.drain()  # exact up to this scrape
        with self._lock:
            snapshot = [
                (m.side, m.labels, list(m.counts), m.sum, list(m.exemplars), m.initialized)
                for m in self._methods
            ]
        les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        for side in ("server", "client"):
            started, handled, received, sent, seconds = _families(side)
            for m_side, m_labels, counts, total_sum, exemplars, initialized in snapshot:
                if m_side != side:
                    continue
                labels = list(m_labels)
                started.add_metric(labels, counts[_STARTED])
                received.add_metric(labels, counts[_RECEIVED])
                sent.add_metric(labels, counts[_SENT])
                for code, i in _CODE_INDEX.items():
                    value = counts[_HANDLED + i]
                    if value or initialized:
                        handled.add_metric([*labels, code], value)
                buckets: list[Any] = []
                cumulative = 0
                for i, le in enumerate(les):
                    cumulative += counts[_BUCKETS + i]
                    ex = exemplars[i]
                    if ex is None:
                        buckets.append((le, cumulative))
                    else:
                        trace_id = resolve_ids(ex[0])[0]
                        buckets.append((le, cumulative,
                                        Exemplar({"trace_id": trace_id}, ex[1], ex[2])))
                seconds.add_metric(labels, buckets, total_sum)
            yield from (started, handled, received, sent, seconds)


def _families(side: str) -> tuple[CounterMetricFamily, CounterMetricFamily, CounterMetricFamily,
                                  CounterMetricFamily, HistogramMetricFamily]:
    server = side == "server"
    started, handled, received, sent, seconds = (
        (schema.SERVER_STARTED, schema.SERVER_HANDLED, schema.SERVER_MSG_RECEIVED,
         schema.SERVER_MSG_SENT, schema.SERVER_HANDLING_SECONDS) if server else
        (schema.CLIENT_STARTED, schema.CLIENT_HANDLED, schema.CLIENT_MSG_RECEIVED,
         schema.CLIENT_MSG_SENT, schema.CLIENT_HANDLING_SECONDS)
    )
    return (
        CounterMetricFamily(started.removesuffix("_total"), schema.HELP[started],
                            labels=schema.CALL_LABELS),
        CounterMetricFamily(handled.removesuffix("_total"), schema.HELP[handled],
                            labels=schema.HANDLED_LABELS),
        CounterMetricFamily(received.removesuffix("_total"), schema.HELP[received],
                            labels=schema.CALL_LABELS),
        CounterMetricFamily(sent.removesuffix("_total"), schema.HELP[sent],
                            labels=schema.CALL_LABELS),
        HistogramMetricFamily(seconds, schema.HELP[seconds], labels=schema.CALL_LABELS),
    )


def _after_fork(ref: weakref.ref[DeferredMetrics]) -> None:
    metrics = ref()
    if metrics is not None:
        metrics._reset_after_fork()
