"""Go-compatible gRPC metrics, folded in from the batcher's batches.

Two stores, one interface (``for_method``, ``fold``):

* :class:`AggregateMetrics` (the default): plain counters and bucket counts per method, written
  only under the batcher's fold lock and exposed by a custom collector. prometheus_client
  still does the registry, the families, text and OpenMetrics exposition with exemplars, and
  content negotiation; it is not used per call because each ``inc``/``observe`` takes a lock.
  Every scrape folds the batcher's queue in first, so ``/metrics`` is exact up to the moment
  it is read.
* :class:`SharedMetrics`, with ``PROMETHEUS_MULTIPROC_DIR`` set: prometheus_client's own metrics,
  because only they write the shared files every worker process's scrape aggregates.

Both are fed the same way: the request path appends a method's handle when a call starts and
the finished ``CallRecord`` when it ends; :meth:`fold` turns a batch of those into counts.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from rpcscope import schema
from rpcscope.collector._core import SERVER, CallRecord
from rpcscope.collector._ids import TraceRef, resolve_ids

_CODE_INDEX: Final = {code: i for i, code in enumerate(schema.CODES)}
_N_CODES: Final = len(schema.CODES)
_UNKNOWN: Final = _CODE_INDEX["Unknown"]  # where a code outside the table is counted
# Layout of MethodAggregate.counts: [started, received, sent, *handled_by_code, *bucket_counts].
_STARTED, _RECEIVED, _SENT = 0, 1, 2
_HANDLED: Final = 3
_BUCKETS: Final = _HANDLED + _N_CODES


def go_float(value: float) -> str:
    """A float as Go's ``strconv.FormatFloat(v, 'g', -1, 64)`` writes it, which is what
    client_golang's text exposition puts in ``le``: ``1``, ``0.005``, ``2.5``, ``1e+06``.

    Prometheus 2.x stores the label as exposed, so dashboards and rules written against Go
    services match ``le="1"``, where prometheus_client would write ``1.0``."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, mantissa, exponent = Decimal(repr(float(value))).normalize().as_tuple()
    assert isinstance(exponent, int)  # finite: checked above
    digits = "".join(map(str, mantissa))
    exp10 = len(digits) + exponent - 1  # the decimal exponent of the leading digit
    if exp10 < -4 or exp10 >= 6:  # Go's rule for the shortest 'g' form
        body = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        text = f"{body}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    else:
        text = format(Decimal(repr(abs(float(value)))).normalize(), "f")
    return ("-" if sign else "") + text


class MethodAggregate:
    """All five families for one (side, type, service, method); written only under the fold lock."""

    __slots__ = ("counts", "exemplars", "initialized", "labels", "side", "sum")

    def __init__(self, side: str, labels: tuple[str, str, str], n_buckets: int) -> None:
        self.side = side
        self.labels = labels
        self.counts = [0] * (_BUCKETS + n_buckets)
        self.sum = 0.0
        # Per bucket: the latest call's (trace, seconds, unix time); ids formatted at scrape.
        self.exemplars: list[tuple[TraceRef, float, float] | None] = [None] * n_buckets
        self.initialized = False

    def initialize(self) -> None:
        """Expose every code of ``handled`` at zero (Go's InitializeMetrics)."""
        self.initialized = True


class AggregateMetrics(Collector):
    """The in-process store: counts per method, folded in batches, exposed at scrape."""

    def __init__(self, buckets: Sequence[float], exemplars: bool,
                 before_collect: Callable[[], None], on_error: Callable[[str], None]) -> None:
        self._bounds = list(buckets)
        self._les = [go_float(b) for b in self._bounds] + ["+Inf"]
        self._n_buckets = len(self._bounds) + 1  # + the +Inf bucket
        self._exemplars = exemplars
        self._before_collect = before_collect
        self._on_error = on_error
        self._methods: list[MethodAggregate] = []
        self._lock = threading.Lock()

    #: What ``for_method`` returns, appended when a call starts: read only by :meth:`fold`.
    handle_types: Final = (MethodAggregate,)

    def for_method(self, side: str, labels: tuple[str, str, str]) -> MethodAggregate:
        m = MethodAggregate(side, labels, self._n_buckets)
        with self._lock:
            self._methods.append(m)
        return m

    def fold(self, batch: Sequence[Any]) -> None:
        """Count a batch: a MethodAggregate is a call that started, a CallRecord one that
        ended; anything else (application log records) is not the metrics' business."""
        bounds = self._bounds
        exemplars = self._exemplars
        code_index = _CODE_INDEX.get
        with self._lock:
            for item in batch:
                kind = type(item)
                if kind is MethodAggregate:
                    item.counts[_STARTED] += 1
                    continue
                if kind is not CallRecord and not isinstance(item, CallRecord):
                    continue
                try:
                    agg = item.info.metrics
                    if type(agg) is not MethodAggregate:
                        continue  # a method without metrics (excluded, or another store's)
                    counts = agg.counts
                    counts[_HANDLED + code_index(item.code, _UNKNOWN)] += 1
                    counts[_RECEIVED] += item.msgs_in
                    counts[_SENT] += item.msgs_out
                    duration_ns = item.duration_ns
                    seconds = duration_ns / 1e9
                    agg.sum += seconds
                    i = bisect_left(bounds, seconds)
                    counts[_BUCKETS + i] += 1
                    if exemplars and item.trace is not None:
                        agg.exemplars[i] = (item.trace, seconds, item.end_wall_ns / 1e9)
                except Exception:
                    self._on_error("metrics")

    # -- exposition -----------------------------------------------------------------------------

    def describe(self) -> list[Metric]:
        # Names are fixed, so the registry can check collisions without a scrape.
        return [f for side in ("server", "client") for f in _families(side)]

    def collect(self) -> Iterator[Metric]:
        self._before_collect()  # exact up to this scrape
        with self._lock:
            snapshot = [
                (m.side, m.labels, list(m.counts), m.sum, list(m.exemplars), m.initialized)
                for m in self._methods
            ]
        les = self._les
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


def _names(side: str) -> tuple[str, str, str, str, str]:
    if side == SERVER:
        return (schema.SERVER_STARTED, schema.SERVER_HANDLED, schema.SERVER_MSG_RECEIVED,
                schema.SERVER_MSG_SENT, schema.SERVER_HANDLING_SECONDS)
    return (schema.CLIENT_STARTED, schema.CLIENT_HANDLED, schema.CLIENT_MSG_RECEIVED,
            schema.CLIENT_MSG_SENT, schema.CLIENT_HANDLING_SECONDS)


def _families(side: str) -> tuple[CounterMetricFamily, CounterMetricFamily, CounterMetricFamily,
                                  CounterMetricFamily, HistogramMetricFamily]:
    started, handled, received, sent, seconds = _names(side)
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


class _Side:
    """The five prometheus_client families of one side (multiprocess mode)."""

    def __init__(self, side: str, registry: CollectorRegistry | None,
                 buckets: Sequence[float]) -> None:
        started, handled, received, sent, seconds = _names(side)
        # prometheus_client appends ``_total`` to counters itself: pass the bare name.
        self.started = Counter(started.removesuffix("_total"), schema.HELP[started],
                               schema.CALL_LABELS, registry=registry)
        self.handled = Counter(handled.removesuffix("_total"), schema.HELP[handled],
                               schema.HANDLED_LABELS, registry=registry)
        self.received = Counter(received.removesuffix("_total"), schema.HELP[received],
                                schema.CALL_LABELS, registry=registry)
        self.sent = Counter(sent.removesuffix("_total"), schema.HELP[sent], schema.CALL_LABELS,
                            registry=registry)
        self.seconds = Histogram(seconds, schema.HELP[seconds], schema.CALL_LABELS,
                                 registry=registry, buckets=buckets)

    @property
    def collectors(self) -> tuple[Any, ...]:
        return self.started, self.handled, self.received, self.sent, self.seconds


class MethodMetrics:
    """One method's prometheus_client children (multiprocess mode); ``handled`` per code."""

    __slots__ = ("_handled", "_side", "_values", "received", "seconds", "sent", "started")

    def __init__(self, side: _Side, values: tuple[str, str, str]) -> None:
        self._side = side
        self._values = values
        self.started = side.started.labels(*values)
        self.received = side.received.labels(*values)
        self.sent = side.sent.labels(*values)
        self.seconds = side.seconds.labels(*values)
        self._handled: dict[str, Any] = {}

    def handled(self, code: str) -> Any:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._side.handled.labels(*self._values, code)
        return child

    def initialize(self) -> None:
        """Create the zero series Go's InitializeMetrics creates: every code of ``handled``."""
        for code in schema.CODES:
            self.handled(code)


class SharedMetrics:
    """The multiprocess store: prometheus_client metrics, which write the shared files.

    Exemplars are not kept: multiprocess mode has no per-child OpenMetrics state."""

    def __init__(self, registry: CollectorRegistry, buckets: Sequence[float],
                 on_error: Callable[[str], None]) -> None:
        self._sides = {side: _Side(side, registry, buckets) for side in (SERVER, "client")}
        self._on_error = on_error
        self._lock = threading.Lock()

    @property
    def collectors(self) -> tuple[Any, ...]:
        return tuple(c for side in self._sides.values() for c in side.collectors)

    handle_types: Final = (MethodMetrics,)

    def for_method(self, side: str, labels: tuple[str, str, str]) -> MethodMetrics:
        with self._lock:
            return MethodMetrics(self._sides[side], labels)

    def fold(self, batch: Sequence[Any]) -> None:
        for item in batch:
            if type(item) is MethodMetrics:
                item.started.inc()
                continue
            if not isinstance(item, CallRecord):
                continue
            mm = item.info.metrics
            if type(mm) is not MethodMetrics:
                continue
            try:
                mm.handled(item.code).inc()
                if item.msgs_in:
                    mm.received.inc(item.msgs_in)
                if item.msgs_out:
                    mm.sent.inc(item.msgs_out)
                mm.seconds.observe(item.duration_ns / 1e9)
            except Exception:
                self._on_error("metrics")


class OwnMetrics:
    """rpcscope's own health: swallowed instrumentation errors, log records by outcome."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.errors = Counter(
            schema.INSTRUMENTATION_ERRORS.removesuffix("_total"),
            schema.HELP[schema.INSTRUMENTATION_ERRORS],
            registry=registry,
        )
        self.log_records = Counter(
            schema.LOG_RECORDS.removesuffix("_total"),
            schema.HELP[schema.LOG_RECORDS],
            (schema.LABEL_OUTCOME,),
            registry=registry,
        )
        for outcome in schema.LOG_OUTCOMES:
            self.log_records.labels(outcome)

    @property
    def collectors(self) -> tuple[Any, ...]:
        return self.errors, self.log_records

    def count_log_records(self, outcome: str, n: int) -> None:
        self.log_records.labels(outcome).inc(n)
