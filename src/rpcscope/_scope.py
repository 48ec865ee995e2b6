"""The facade users hold: one ``Scope`` per process wires config, metrics, logs and tracing.

The wiring, in one place (docs/architecture.md draws it): the interceptors append finished
calls to one :class:`~rpcscope.collector._batcher.Batcher`; its folds are the metrics, its
consumers the log writers, one per sink. Nothing else talks to anything else.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry

from rpcscope._config import Config, ConfigError
from rpcscope.collector._batcher import Batcher
from rpcscope.collector._client import ClientInterceptor, aio_client_interceptors
from rpcscope.collector._core import CLIENT, SERVER, ErrorCounter, Pipeline, complete_records
from rpcscope.collector._methods import MethodTable
from rpcscope.collector._metrics import AggregateMetrics, OwnMetrics, SharedMetrics
from rpcscope.collector._server import AioServerInterceptor, ServerInterceptor
from rpcscope.collector._trace import Tracing
from rpcscope.exporters._access import LoggingHandler, LogWriter
from rpcscope.exporters._ecs import Identity
from rpcscope.exporters._http import (
    MetricsServer,
    make_metrics_asgi_app,
    make_metrics_wsgi_app,
    multiprocess_dir,
)
from rpcscope.exporters._logs import FileSink, LogSink, StreamSink


class Scope:
    """Observability for one gRPC process: interceptors, ``/metrics``, access log, trace context.

    Options come from keyword arguments, ``RPCSCOPE_*`` environment variables, or a YAML file
    (``config_file=`` or ``RPCSCOPE_CONFIG``), in that order of precedence; see :class:`Config`.
    Invalid options raise :class:`ConfigError` here, naming the key and the fix.

    Metrics register in prometheus_client's global ``REGISTRY`` unless ``registry=`` names
    another, so an application that already serves ``/metrics`` shows rpcscope's series too.
    One Scope per process and registry: a second one raises :class:`ConfigError` while the
    first is open; once it is closed, its series stay readable until a new Scope takes the
    registry over.
    """

    def __init__(self, *, config_file: str | os.PathLike[str] | None = None,
                 **options: Any) -> None:
        self.config = cfg = Config.load(config_file=config_file, **options)
        self.registry: CollectorRegistry = cfg.registry if cfg.registry is not None else REGISTRY
        self._errors = ErrorCounter()
        self._metrics_servers: list[MetricsServer] = []
        self._registered: list[Any] = []
        self._closed = False
        self._closed_event = threading.Event()
        self._lock = threading.Lock()
        self._batcher = batcher = Batcher(self._errors.record, interval=cfg.batch_interval,
                                          max_ready=cfg.log_queue_size)
        batcher.add_fold(complete_records)  # first: every later fold reads durations
        on = not cfg.disabled

        own: OwnMetrics | None = None
        store: AggregateMetrics | SharedMetrics | None = None
        if cfg.metrics and on:
            previous = _OWNERS.get(id(self.registry))
            if previous is not None and previous[0].is_set():
                _unregister(self.registry, previous[1])
            try:
                if multiprocess_dir() is not None:
                    # Only prometheus_client's own metrics write the files every worker's scrape
                    # aggregates; exemplars need per-child state those files cannot keep.
                    shared = SharedMetrics(self.registry, cfg.histogram_buckets,
                                           self._errors.record)
                    self._registered.extend(shared.collectors)
                    store = shared
                else:
                    aggregate = AggregateMetrics(cfg.histogram_buckets, cfg.exemplars,
                                                 batcher.fold, self._errors.record)
                    self.registry.register(aggregate)
                    self._registered.append(aggregate)
                    store = aggregate
                # After the store: a scrape's fold (which counts errors) runs before these
                # counters are read.
                own = OwnMetrics(self.registry)
                self._registered.extend(own.collectors)
            except ValueError as error:  # "Duplicated timeseries in CollectorRegistry"
                self._unregister()
                raise ConfigError(
                    f"invalid option 'registry' (from {cfg.sources.get('registry', 'default')}):"
                    f" another open Scope's (or another library's) gRPC metrics are already"
                    f" registered in it ({str(error)[:120]}...); fix: build one Scope per process"
                    f" and share it, close()"
                    f" the other one first, or pass registry=prometheus_client.CollectorRegistry()"
                    f" for an isolated one"
                ) from None
            _OWNERS[id(self.registry)] = (self._closed_event, self._registered)
            self._errors.bind(own.errors.inc)
            batcher.add_fold(store.fold, store.handle_types)
        self._own = own

        identity = Identity(cfg.service, cfg.service_version, cfg.environment)
        sides = (SERVER, CLIENT) if cfg.log_client_calls else (SERVER,)
        self._writers: list[LogWriter] = []
        if on:
            for sink in _make_sinks(cfg):
                writer = LogWriter(sink, identity, sides, cfg.log_metadata,
                                   own.count_log_records if own is not None else None,
                                   self._errors.record)
                batcher.add_consumer(writer)
                self._writers.append(writer)
                if own is not None and callable(getattr(sink, "collect", None)):
                    # A sink with metrics of its own (the Forward shipper's) serves them on
                    # the same /metrics.
                    try:
                        self.registry.register(sink)  # type: ignore[arg-type]
                        self._registered.append(sink)
                    except ValueError:
                        self._errors.record("register:sink")
        tracing = Tracing(cfg.tracer_provider) if cfg.trace and on else None
        if tracing is not None:
            batcher.add_fold(tracing.look)
        logging_on = bool(self._writers)
        wanted = store is not None or logging_on
        keep_metadata = logging_on and bool(cfg.log_metadata)
        self._server_pipe = Pipeline(batcher if wanted else None, tracing, self._errors,
                                     keep_details=logging_on, keep_metadata=keep_metadata)
        client_logged = logging_on and cfg.log_client_calls
        self._client_pipe = Pipeline(
            batcher if store is not None or client_logged else None, tracing, self._errors,
            keep_details=client_logged, keep_metadata=False,
        )
        self._server_table = MethodTable(SERVER, store, cfg.exclude_services,
                                         cfg.method_filter, cfg.max_methods)
        self._client_table = MethodTable(CLIENT, store, cfg.exclude_services,
                                         cfg.method_filter, cfg.max_methods)

    # -- interceptors -------------------------------------------------------------------------

    def server_interceptors(self) -> Sequence[grpc.ServerInterceptor]:
        """For ``grpc.server(executor, interceptors=...)``. Empty when disabled."""
        if self.config.disabled:
            return []
        return [ServerInterceptor(self._server_pipe, self._server_table)]

    def aio_server_interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:
        """For ``grpc.aio.server(interceptors=...)``. Empty when disabled."""
        if self.config.disabled:
            return []
        return [AioServerInterceptor(self._server_pipe, self._server_table)]

    def client_interceptors(self) -> Sequence[ClientInterceptor]:
        """For ``grpc.intercept_channel(channel, *scope.client_interceptors())``: one object
        that is a sync interceptor of all four RPC kinds."""
        if self.config.disabled:
            return []
        return [ClientInterceptor(self._client_pipe, self._client_table)]

    def aio_client_interceptors(self) -> Sequence[grpc.aio.ClientInterceptor]:
        """For ``grpc.aio.insecure_channel(target, interceptors=...)``."""
        if self.config.disabled:
            return []
        return aio_client_interceptors(self._client_pipe, self._client_table)

    def initialize_metrics(self, *services: Any) -> int:
        """Create zero-valued series for every method of these services (Go's InitializeMetrics).

        Pass protobuf service descriptors, file descriptors, or generated ``*_pb2`` modules, so
        ``rate()`` and alerts work from the first scrape. Returns the number of methods.
        """
        if self._own is None:
            return 0
        return self._server_table.initialize(services)

    # -- exposition ---------------------------------------------------------------------------

    def serve_metrics(self, port: int = 9464, addr: str = "0.0.0.0") -> MetricsServer:
        """Serve the registry's ``/metrics`` (the application's own series too, with the
        global registry) and ``/healthz`` on a background thread; ``port=0`` picks one."""
        server = MetricsServer(self.registry, port, addr)
        self._metrics_servers.append(server)
        return server

    def wsgi_app(self) -> Any:
        """``/metrics`` + ``/healthz`` as a WSGI app for your own web server."""
        return make_metrics_wsgi_app(self.registry)

    def asgi_app(self) -> Any:
        """``/metrics`` + ``/healthz`` as an ASGI app for your own web server."""
        return make_metrics_asgi_app(self.registry)

    # -- logs -----------------------------------------------------------------------------------

    def logging_handler(self) -> logging.Handler:
        """A ``logging.Handler`` sending application logs with the access log (ECS, trace ids)."""
        if not self._writers:
            return logging.NullHandler()
        return LoggingHandler(self._batcher)

    # -- lifecycle ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts for reports: log records emitted / delivered / dropped, summed over the sinks
        (``logs``) and per sink (``sinks``), and instrumentation errors."""
        self._batcher.fold()  # count every call that has finished so far
        logs = {"emitted": 0, "delivered": 0, "dropped": 0}
        sinks = []
        for writer in self._writers:
            counts = writer.stats()
            sinks.append({"sink": type(writer.sink).__name__, **counts})
            for key, value in counts.items():
                logs[key] += value
        return {"logs": logs, "sinks": sinks, "instrumentation_errors": self._errors.count}

    def flush(self, timeout: float = 5.0) -> None:
        """Fold finished calls into the metrics and hand every queued log record to its sinks
        (waits up to ``timeout`` seconds in all)."""
        self._batcher.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (within ``timeout``) and stop the metrics servers; the series
        stay readable. Idempotent. (At interpreter exit the queue is delivered even without
        it.)"""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._closed_event.set()
        self._batcher.close(timeout)
        for server in self._metrics_servers:
            server.close()
        self._metrics_servers.clear()

    def _unregister(self) -> None:
        _unregister(self.registry, self._registered)

    def __enter__(self) -> Scope:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Per registry (by id): whether the Scope whose metrics are in it was closed, and what it
#: registered; kept after that Scope is gone, so a new one can take the registry over.
_OWNERS: dict[int, tuple[threading.Event, list[Any]]] = {}


def _unregister(registry: CollectorRegistry, collectors: list[Any]) -> None:
    for collector in collectors:
        try:
            registry.unregister(collector)
        except KeyError:
            pass
    collectors.clear()


def _make_sinks(cfg: Config) -> list[LogSink]:
    """The sinks the options name: ``access_log``'s, and the Forward shipper when ``fluentd``
    is set. With ``fluentd`` set and ``access_log`` left at its default, records are shipped
    only (not printed too): a service that ships directly is usually one no node agent tails.
    Set both to get both (the same record by both paths is one Elasticsearch document)."""
    sinks: list[LogSink] = []
    access_log = cfg.access_log
    shipping = cfg.fluentd is not None
    if isinstance(access_log, LogSink):
        sinks.append(access_log)
    elif access_log == "off" or (shipping and "access_log" not in cfg.sources):
        pass
    elif access_log == "stdout":
        sinks.append(StreamSink())
    elif isinstance(access_log, str):
        sinks.append(FileSink(access_log))
    else:
        sinks.append(access_log)  # a duck-typed sink with .write()
    if shipping:
        from rpcscope.exporters._forward import ForwardSink, forward_options

        sinks.append(ForwardSink(**forward_options(cfg)))
    return sinks
