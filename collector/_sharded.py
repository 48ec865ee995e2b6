"""Per-thread sharded gRPC metrics, exposed through prometheus_client's registry and exposition.

Why by hand: prometheus_client takes a lock on every ``inc``/``observe`` (about 0.8 µs each; a
unary call needs five of them, plus exemplar validation), which alone would cost more than our
whole per-call budget. Here each thread adds into its own plain list (no lock: only that thread
writes it) and a scrape sums the shards. prometheus_client still does everything else: the
registry, the metric families, text and OpenMetrics exposition with exemplars, content
negotiation. In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) the lock-based prometheus_client
metrics in ``_metrics.py`` are used instead, because only they write the shared mmap files.

Thread shards never disappear while the process lives (a finished thread's counts must stay in
the counters, which are monotonic), so a server whose pool creates unbounded threads grows one
small list per thread per method; grpcio's pools are bounded.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from rpcscope import schema

if TYPE_CHECKING:
    from rpcscope.collector._core import CallRecord

_CODE_INDEX: Final = {code: i for i, code in enumerate(schema.CODES)}
_N_CODES: Final = len(schema.CODES)
# Shard layout: [started, received, sent, count, *handled_by_code, *bucket_counts]; the float
# sum and the exemplars live beside it.
_STARTED, _RECEIVED, _SENT, _COUNT = 0, 1, 2, 3
_HANDLED: Final = 4


class _Shard:
    __slots__ = ("counts", "exemplars", "sum")

    def __init__(self, n_buckets: int) -> None:
        self.counts = [0] * (_HANDLED + _N_CODES + n_buckets)
        self.sum = 0.0
        self.exemplars: list[tuple[str, float, float] | None] = [None] * n_buckets


class _Started:
    """``started`` as an object with ``inc()``, the interface the pipeline calls."""

    __slots__ = ("_m",)

    def __init__(self, m: ShardedMethodMetrics) -> None:
        self._m = m

    def inc(self) -> None:
        self._m.shard().counts[_STARTED] += 1


class ShardedMethodMetrics:
    """All five families for one (side, type, service, method), sharded per thread."""

    __slots__ = ("_bounds", "_exemplars", "_local", "_lock", "_n_buckets", "initialized",
                 "labels", "shards", "side", "started")

    def __init__(self, side: str, labels: tuple[str, str, str], bounds: Sequence[float],
                 exemplars: bool) -> None:
        self.side = side
        self.labels = labels
        self._bounds = list(bounds)
        self._n_buckets = len(bounds) + 1  # + the +Inf bucket
        self._exemplars = exemplars
        self._local = threading.local()
        self._lock = threading.Lock()
        self.shards: list[_Shard] = []
        self.initialized = False
        self.started = _Started(self)

    def shard(self) -> _Shard:
        try:
            shard: _Shard = self._local.shard
        except AttributeError:
            shard = _Shard(self._n_buckets)
            with self._lock:
                self.shards.append(shard)
            self._local.shard = shard
        return shard

    def initialize(self) -> None:
        """Expose every code of ``handled`` at zero (Go's InitializeMetrics)."""
        self.initialized = True

    def finish(self, record: CallRecord) -> None:
        shard = self.shard()
        counts = shard.counts
        counts[_HANDLED + _CODE_INDEX.get(record.code, 2)] += 1
        counts[_RECEIVED] += record.msgs_in
        counts[_SENT] += record.msgs_out
        counts[_COUNT] += 1
        seconds = record.duration_ns / 1e9
        shard.sum += seconds
        i = bisect_left(self._bounds, seconds)
        counts[_HANDLED + _N_CODES + i] += 1
        if self._exemplars and record.trace_id is not None:
            shard.exemplars[i] = (record.trace_id, seconds, record.end_wall_ns / 1e9)

    def totals(self) -> tuple[list[int], float, list[tuple[str, float, float] | None]]:
        with self._lock:
            shards = list(self.shards)
        total = [0] * (_HANDLED + _N_CODES + self._n_buckets)
        total_sum = 0.0
        exemplars: list[tuple[str, float, float] | None] = [None] * self._n_buckets
        for shard in shards:
            for i, v in enumerate(shard.counts):
                total[i] += v
            total_sum += shard.sum
            for i, ex in enumerate(shard.exemplars):
                if ex is not None and (exemplars[i] is None or ex[2] > exemplars[i][2]):  # type: ignore[index]
                    exemplars[i] = ex
        return total, total_sum, exemplars


class ShardedGrpcMetrics(Collector):
    """Registered once in the registry; yields both sides' families on each scrape."""

    def __init__(self, registry: CollectorRegistry | None, buckets: Sequence[float],
                 exemplars: bool) -> None:
        self._bounds = tuple(buckets)
        self._exemplars = exemplars
        self._methods: list[ShardedMethodMetrics] = []
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def for_method(self, side: str, labels: tuple[str, str, str]) -> ShardedMethodMetrics:
        m = ShardedMethodMetrics(side, labels, self._bounds, self._exemplars)
        with self._lock:
            self._methods.append(m)
        return m

    def describe(self) -> list[Metric]:
        # Names are fixed, so the registry can check collisions without a scrape.
        return [f for side in ("server", "client") for f in self._families(side)]

    def _families(self, side: str) -> tuple[CounterMetricFamily, CounterMetricFamily,
                                            CounterMetricFamily, CounterMetricFamily,
                                            HistogramMetricFamily]:
        server = side == "server"
        names = (
            (schema.SERVER_STARTED, schema.SERVER_HANDLED, schema.SERVER_MSG_RECEIVED,
             schema.SERVER_MSG_SENT, schema.SERVER_HANDLING_SECONDS) if server else
            (schema.CLIENT_STARTED, schema.CLIENT_HANDLED, schema.CLIENT_MSG_RECEIVED,
             schema.CLIENT_MSG_SENT, schema.CLIENT_HANDLING_SECONDS)
        )
        started, handled, received, sent, seconds = names
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

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            methods = list(self._methods)
        les = [floatToGoString(b) for b in self._bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        for side in ("server", "client"):
            started, handled, received, sent, seconds = self._families(side)
            for m in methods:
                if m.side != side:
                    continue
                total, total_sum, exemplars = m.totals()
                labels = list(m.labels)
                started.add_metric(labels, total[_STARTED])
                received.add_metric(labels, total[_RECEIVED])
                sent.add_metric(labels, total[_SENT])
                for code, i in _CODE_INDEX.items():
                    value = total[_HANDLED + i]
                    if value or m.initialized:
                        handled.add_metric([*labels, code], value)
                buckets: list[Any] = []
                cumulative = 0
                for i, le in enumerate(les):
                    cumulative += total[_HANDLED + _N_CODES + i]
                    ex = exemplars[i]
                    if ex is None:
                        buckets.append((le, cumulative))
                    else:
                        buckets.append((le, cumulative,
                                        Exemplar({"trace_id": ex[0]}, ex[1], ex[2])))
                seconds.add_metric(labels, buckets, total_sum)
            yield from (started, handled, received, sent, seconds)
