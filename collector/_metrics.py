"""Go-compatible gRPC metrics on prometheus_client, with per-method children resolved once.

prometheus_client does the storage, exposition, OpenMetrics exemplars and multiprocess mode; we
only decide names (from :mod:`rpcscope.schema`), label values, and when to count. ``.labels()``
costs about 2 µs a call, so each method's children are looked up once and cached in
:class:`MethodMetrics`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from rpcscope import schema
from rpcscope.collector._deferred import DeferredMetrics, MethodAggregate

if TYPE_CHECKING:
    from rpcscope.collector._core import CallRecord


class _Side:
    """The five families of one side (server or client)."""

    def __init__(
        self,
        names: tuple[str, str, str, str, str],
        registry: CollectorRegistry | None,
        buckets: Sequence[float],
    ) -> None:
        started, handled, received, sent, seconds = names
        # prometheus_client appends ``_total`` to counters itself: pass the bare name.
        self.started = Counter(
            started.removesuffix("_total"), schema.HELP[started], schema.CALL_LABELS,
            registry=registry,
        )
        self.handled = Counter(
            handled.removesuffix("_total"), schema.HELP[handled], schema.HANDLED_LABELS,
            registry=registry,
        )
        self.received = Counter(
            received.removesuffix("_total"), schema.HELP[received], schema.CALL_LABELS,
            registry=registry,
        )
        self.sent = Counter(
            sent.removesuffix("_total"), schema.HELP[sent], schema.CALL_LABELS, registry=registry
        )
        self.seconds = Histogram(
            seconds, schema.HELP[seconds], schema.CALL_LABELS, registry=registry, buckets=buckets
        )


class MethodMetrics:
    """Cached label children for one method; ``handled`` children are created per code on use."""

    __slots__ = ("_exemplars", "_handled", "_lock", "_side", "_values", "received", "seconds",
                 "sent", "started")

    def __init__(self, side: _Side, values: tuple[str, str, str], exemplars: bool) -> None:
        self._side = side
        self._values = values
        self._exemplars = exemplars
        self.started = side.started.labels(*values)
        self.received = side.received.labels(*values)
        self.sent = side.sent.labels(*values)
        self.seconds = side.seconds.labels(*values)
        self._handled: dict[str, Any] = {}
        self._lock = threading.Lock()

    def handled(self, code: str) -> Any:
        child = self._handled.get(code)
        if child is None:
            with self._lock:
                child = self._side.handled.labels(*self._values, code)
                self._handled[code] = child
        return child

    def initialize(self) -> None:
        """Create the zero series Go's InitializeMetrics creates: every code of ``handled``."""
        for code in schema.CODES:
            self.handled(code)

    def finish(self, record: CallRecord) -> None:
        self.handled(record.code).inc()
        if record.msgs_in:
            self.received.inc(record.msgs_in)
        if record.msgs_out:
            self.sent.inc(record.msgs_out)
        seconds = record.duration_ns / 1e9
        ids = record.ids() if self._exemplars else None
        if ids is not None:
            self.seconds.observe(seconds, {"trace_id": ids[0]})
        else:
            self.seconds.observe(seconds)


class GrpcMetrics:
    """Both sides' families in one registry; never registers anything at import time.

    ``deferred`` (the default outside multiprocess mode) aggregates the per-call families in
    batches off the request path (:mod:`._deferred`); otherwise prometheus_client's own metrics
    hold them, updated on the request path (required for ``PROMETHEUS_MULTIPROC_DIR``).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None,
        buckets: Sequence[float],
        exemplars: bool,
        deferred: bool = True,
    ) -> None:
        self.registry = registry
        self._exemplars = exemplars
        self.deferred = DeferredMetrics(registry, buckets, exemplars) if deferred else None
        if self.deferred is None:
            self._init_sides(registry, buckets)
        self._init_own(registry)

    def _init_sides(self, registry: CollectorRegistry | None, buckets: Sequence[float]) -> None:
        self.server = _Side(
            (
                schema.SERVER_STARTED,
                schema.SERVER_HANDLED,
                schema.SERVER_MSG_RECEIVED,
                schema.SERVER_MSG_SENT,
                schema.SERVER_HANDLING_SECONDS,
            ),
            registry,
            buckets,
        )
        self.client = _Side(
            (
                schema.CLIENT_STARTED,
                schema.CLIENT_HANDLED,
                schema.CLIENT_MSG_RECEIVED,
                schema.CLIENT_MSG_SENT,
                schema.CLIENT_HANDLING_SECONDS,
            ),
            registry,
            buckets,
        )

    def _init_own(self, registry: CollectorRegistry | None) -> None:
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

    def for_method(self, component: str, grpc_type: str, service: str, method: str
                   ) -> MethodMetrics | MethodAggregate:
        if self.deferred is not None:
            return self.deferred.for_method(component, (grpc_type, service, method))
        side = self.server if component == "server" else self.client
        return MethodMetrics(side, (grpc_type, service, method), self._exemplars)
