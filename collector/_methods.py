"""Which methods become label values: the cardinality guard and the exclusion filters.

A caller can put any string in the ``:path`` of a request. Only a method the server actually
implements (its handler lookup succeeded) gets its own ``MethodInfo``; anything else, and any
method past ``max_methods`` distinct ones, shares the single bounded ``unknown/unknown`` entry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from rpcscope import schema
from rpcscope.collector._core import MethodInfo, rpc_type, split_method

#: What gives a method its metrics handle: ``for_method(side, (type, service, method))``.
MetricsStore = Any

MethodFilter = Callable[[str], bool]


class MethodTable:
    """Per-side cache of :class:`MethodInfo`, bounded, with include/exclude decisions."""

    def __init__(
        self,
        side: str,
        metrics: MetricsStore | None,
        exclude_services: Iterable[str],
        method_filter: MethodFilter | None,
        max_methods: int,
    ) -> None:
        self._side = side
        self._metrics = metrics
        self._exclude = frozenset(exclude_services)
        self._filter = method_filter
        self._max = max_methods
        self._infos: dict[tuple[str, str], MethodInfo | None] = {}
        self._lock = threading.Lock()
        self._unknown: MethodInfo | None = None

    @property
    def unknown(self) -> MethodInfo:
        """The shared entry for unimplemented/overflow methods, created on first use only."""
        if self._unknown is None:
            self._unknown = self._make(
                "/unknown/unknown", schema.UNKNOWN_SERVICE, schema.UNKNOWN_METHOD,
                schema.TYPE_BIDI_STREAM,
            )
        return self._unknown

    def _make(self, full_method: str, service: str, method: str, grpc_type: str) -> MethodInfo:
        mm = None
        if self._metrics is not None:
            mm = self._metrics.for_method(self._side, (grpc_type, service, method))
        return MethodInfo(self._side, full_method, service, method, grpc_type, mm)

    def lookup(self, full_method: str, grpc_type: str) -> MethodInfo | None:
        """The info for a *known* method; None when the method is excluded from telemetry."""
        key = (full_method, grpc_type)
        try:
            return self._infos[key]
        except KeyError:
            pass
        with self._lock:
            if key in self._infos:
                return self._infos[key]
            info = self._decide(full_method, grpc_type)
            if len(self._infos) < self._max or info is None:
                self._infos[key] = info
            return info

    def _decide(self, full_method: str, grpc_type: str) -> MethodInfo | None:
        parts = split_method(full_method)
        if parts is None:
            return self.unknown
        service, method = parts
        if service in self._exclude:
            return None
        if self._filter is not None and not self._filter(full_method):
            return None
        if len(self._infos) >= self._max:
            return self.unknown
        return self._make(full_method, service, method, grpc_type)

    def initialize(self, descriptors: Iterable[Any]) -> int:
        """Pre-create zero series for every method of the given protobuf service descriptors."""
        count = 0
        for service in _services(descriptors):
            for m in service.methods:
                grpc_type = rpc_type(bool(m.client_streaming), bool(m.server_streaming))
                info = self.lookup(f"/{service.full_name}/{m.name}", grpc_type)
                if info is not None and info is not self.unknown and info.metrics is not None:
                    info.metrics.initialize()
                    count += 1
        return count


def _services(descriptors: Iterable[Any]) -> Iterable[Any]:
    """Accept ServiceDescriptors, FileDescriptors (all their services), or generated modules."""
    for d in descriptors:
        if hasattr(d, "methods") and hasattr(d, "full_name"):
            yield d
        elif hasattr(d, "services_by_name"):
            yield from d.services_by_name.values()
        elif hasattr(d, "DESCRIPTOR") and hasattr(d.DESCRIPTOR, "services_by_name"):
            yield from d.DESCRIPTOR.services_by_name.values()
        else:
            raise TypeError(
                f"initialize_metrics() takes protobuf service or file descriptors (or a generated "
                f"*_pb2 module), got {type(d).__name__}; fix: pass "
                f"my_pb2.DESCRIPTOR.services_by_name['MyService']"
            )
