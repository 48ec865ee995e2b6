"""Helpers for testing code instrumented with rpcscope (public; rpcscope's own suite uses them).

Use them in your service's tests to assert on the telemetry a call produced, without stdout
parsing or sleeps::

    from prometheus_client import CollectorRegistry
    from rpcscope.testing import CaptureSink, sample_value, wait_for_logs

    sink, registry = CaptureSink(), CollectorRegistry()
    scope = rpcscope.Scope(service="checkout", access_log=sink, registry=registry)
    ...  # make a call through scope.server_interceptors()
    [doc] = wait_for_logs(scope, 1, side="server")
    assert doc["grpc.code"] == "OK"
    assert sample_value(registry, "grpc_server_handled_total", {...}) == 1

Access-log records are written by a background thread, so reading them is always a bounded wait
(:func:`wait_for_logs`, :func:`wait_until`), never an assumption about timing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

from rpcscope._forward_receiver import ForwardEvent, ForwardReceiver
from rpcscope._scope import Scope
from rpcscope.exporters._logs import LogSink

__all__ = [
    "CaptureSink",
    "ForwardEvent",
    "ForwardReceiver",
    "sample_value",
    "series",
    "wait_for_logs",
    "wait_until",
]

T = TypeVar("T")


class CaptureSink(LogSink):
    """A :class:`~rpcscope.LogSink` keeping every document in memory (thread-safe).

    Documents are the dicts the stdout/file sinks would encode as JSON lines, so assertions see
    exactly the fields Elasticsearch would receive.
    """

    def __init__(self) -> None:
        self._documents: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.closed = False

    def write(self, documents: Sequence[dict[str, Any]]) -> int:
        with self._lock:
            self._documents.extend(dict(d) for d in documents)
        return len(documents)

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True

    @property
    def documents(self) -> list[dict[str, Any]]:
        """A snapshot of every document written so far, in write order."""
        with self._lock:
            return list(self._documents)

    def access_logs(self, side: str | None = None, method: str | None = None,
                    ) -> list[dict[str, Any]]:
        """Access-log documents, optionally only one side (``server``/``client``) or method."""
        from rpcscope import schema

        return [
            d for d in self.documents
            if d.get("log.logger") == schema.ACCESS_LOGGER
            and (side is None or d.get(schema.FIELD_SIDE) == side)
            and (method is None or d.get("rpc.method") == method)
        ]

    def clear(self) -> None:
        with self._lock:
            self._documents.clear()


def sample_value(registry: CollectorRegistry, name: str,
                 labels: Mapping[str, str] | None = None) -> float | None:
    """The value of one sample (e.g. ``grpc_server_handled_total`` with all its labels), or None.

    Counter samples carry the ``_total`` suffix; histogram parts are ``<name>_count``,
    ``<name>_sum`` and ``<name>_bucket`` (with ``le``).
    """
    return registry.get_sample_value(name, dict(labels or {}))


def series(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    """Label sets of every sample named ``name`` (e.g. to count series of a family)."""
    return [
        dict(s.labels)
        for family in registry.collect()
        for s in family.samples
        if s.name == name
    ]


def wait_until(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.01,
               message: str = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value (returned); AssertionError on timeout."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def wait_for_logs(scope: Scope, n: int, timeout: float = 5.0, *, side: str | None = None,
                  method: str | None = None) -> list[dict[str, Any]]:
    """Wait until the scope's :class:`CaptureSink` holds at least ``n`` matching access logs.

    The scope must have been built with ``access_log=CaptureSink()``. Returns the matching
    documents (possibly more than ``n`` if more arrived).
    """
    sink = scope.config.access_log
    if not isinstance(sink, CaptureSink):
        raise TypeError(
            "wait_for_logs() needs a scope built with access_log=rpcscope.testing.CaptureSink(), "
            f"got access_log={sink!r}"
        )

    def ready() -> list[dict[str, Any]]:
        scope.flush(timeout=0.5)
        docs = sink.access_logs(side, method)
        return docs if len(docs) >= n else []

    return wait_until(ready, timeout, message=f"{n} access-log record(s)")
