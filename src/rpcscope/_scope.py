"""The facade users hold: one ``Scope`` per process wires config, metrics, logs and tracing."""

from __future__ import annotations

import os
import threading
from typing import Any

from prometheus_client import CollectorRegistry

from rpcscope._config import Config
from rpcscope.collector._client import ClientInterceptor, aio_client_interceptors
from rpcscope.collector._core import CLIENT, SERVER, ErrorCounter, Pipeline
from rpcscope.collector._methods import MethodTable
from rpcscope.collector._metrics import GrpcMetrics
from rpcscope.collector._server import AioServerInterceptor, ServerInterceptor
from rpcscope.collector._trace import Tracing
from rpcscope.exporters._ecs import Identity
from rpcscope.exporters._http import (
    MetricsServer,
    make_metrics_asgi_app,
    make_metrics_wsgi_app,
    multiprocess_dir,
)
from rpcscope.exporters._logs import FileSink, LoggingHandler, LogPipe, LogSink, StreamSink


class Scope:
    """Observability for one gRPC process: interceptors, ``/metrics``, access log, trace context.

    Options come from keyword arguments, ``RPCSCOPE_*`` environment variables, or a YAML file
    (``config_file=`` or ``RPCSCOPE_CONFIG``), in that order of precedence; see :class:`Config`.
    Invalid options raise :class:`ConfigError` here, naming the key and the fix.
    """

    def __init__(self, *, config_file: str | os.PathLike[str] | None = None,
                 **options: Any) -> None:
        self.config = cfg = Config.load(config_file=config_file, **options)
        self.registry: CollectorRegistry = (
            cfg.registry if cfg.registry is not None else CollectorRegistry()
        )
        self._errors = ErrorCounter()
        self._metrics_servers: list[MetricsServer] = []
        self._closed = False
        self._lock = threading.Lock()

        metrics = None
        if cfg.metrics and not cfg.disabled:
            # Exemplars need OpenMetrics state per child, which multiprocess mode cannot keep.
            multiprocess = multiprocess_dir() is not None
            exemplars = cfg.exemplars and not multiprocess
            metrics = GrpcMetrics(self.registry, cfg.histogram_buckets, exemplars,
                                  deferred=not multiprocess)
            self._errors.bind(metrics.errors.inc)
        self._metrics = metrics

        self._identity = Identity(cfg.service, cfg.service_version, cfg.environment)
        self._log_pipe: LogPipe | None = None
        sink = _make_sink(cfg.access_log)
        if sink is not None and not cfg.disabled:
            on_outcome = None
            if metrics is not None:
                counter = metrics.log_records

                def on_outcome(outcome: str, n: int) -> None:
                    counter.labels(outcome).inc(n)

            self._log_pipe = LogPipe(sink, self._identity, cfg.log_queue_size,
                                     on_outcome=on_outcome, metadata_allowlist=cfg.log_metadata)
            self._log_pipe.on_error = self._errors.record
        deferred = metrics.deferred if metrics is not None else None
        if deferred is not None:
            deferred.on_error = self._errors.record
            if self._log_pipe is not None:
                # Finished calls reach the access log through deferred metrics' batches: one
                # append on the request path serves both.
                deferred.forward = self._log_pipe.emit_calls
                deferred.log_components = frozenset(
                    (SERVER, CLIENT) if cfg.log_client_calls else (SERVER,)
                )
                self._log_pipe.upstream = deferred.drain
                # One thread for both: the writer folds each batch in, then encodes it.
                deferred.driver = self._log_pipe.start_thread
        self._deferred = deferred
        tracing = Tracing() if cfg.trace else None

        self._server_pipe = Pipeline(metrics, tracing, self._log_pipe, self._errors,
                                     cfg.log_metadata)
        self._client_pipe = Pipeline(
            metrics, tracing, self._log_pipe if cfg.log_client_calls else None,
            self._errors, cfg.log_metadata,
        )
        self._server_table = MethodTable(SERVER, metrics, cfg.exclude_services,
                                         cfg.method_filter, cfg.max_methods)
        self._client_table = MethodTable(CLIENT, metrics, cfg.exclude_services,
                                         cfg.method_filter, cfg.max_methods)

    # -- interceptors -------------------------------------------------------------------------

    def server_interceptors(self) -> list[Any]:
        """For ``grpc.server(executor, interceptors=...)``. Empty when disabled."""
        if self.config.disabled:
            return []
        return [ServerInterceptor(self._server_pipe, self._server_table)]

    def aio_server_interceptors(self) -> list[Any]:
        """For ``grpc.aio.server(interceptors=...)``. Empty when disabled."""
        if self.config.disabled:
            return []
        return [AioServerInterceptor(self._server_pipe, self._server_table)]

    def client_interceptors(self) -> list[Any]:
        """For ``grpc.intercept_channel(channel, *scope.client_interceptors())``."""
        if self.config.disabled:
            return []
        return [ClientInterceptor(self._client_pipe, self._client_table)]

    def aio_client_interceptors(self) -> list[Any]:
        """For ``grpc.aio.insecure_channel(target, interceptors=...)``."""
        if self.config.disabled:
            return []
        return aio_client_interceptors(self._client_pipe, self._client_table)

    def initialize_metrics(self, *services: Any) -> int:
        """Create zero-valued series for every method of these services (Go's InitializeMetrics).

        Pass protobuf service descriptors, file descriptors, or generated ``*_pb2`` modules, so
        ``rate()`` and alerts work from the first scrape. Returns the number of methods.
        """
        if self._metrics is None:
            return 0
        return self._server_table.initialize(services)

    # -- exposition ---------------------------------------------------------------------------

    def serve_metrics(self, port: int = 9464, addr: str = "0.0.0.0") -> MetricsServer:
        """Serve ``/metrics`` and ``/healthz`` on a background thread; ``port=0`` picks one."""
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

    def logging_handler(self) -> Any:
        """A ``logging.Handler`` sending application logs with the access log (ECS, trace ids)."""
        if self._log_pipe is None:
            import logging

            return logging.NullHandler()
        return LoggingHandler(self._log_pipe)

    # -- lifecycle ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts for reports: log records emitted/delivered/lost, instrumentation errors."""
        if self._deferred is not None:
            self._deferred.drain()  # count every call that has finished so far
        logs = (self._log_pipe.stats() if self._log_pipe is not None
                else {"emitted": 0, "delivered": 0, "lost": 0})
        return {"logs": logs, "instrumentation_errors": self._errors.count}

    def flush(self, timeout: float = 5.0) -> None:
        """Fold finished calls into the metrics and hand every queued log record to its sink
        (waits up to ``timeout`` seconds for the sink)."""
        if self._log_pipe is not None:
            self._log_pipe.flush(timeout)  # drains deferred metrics first (its upstream)
        elif self._deferred is not None:
            self._deferred.drain()

    def close(self, timeout: float = 5.0) -> None:
        """Flush logs and stop the metrics servers. Idempotent. (At interpreter exit the log queue
        is flushed even without it.)"""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._deferred is not None:
            self._deferred.close()
        if self._log_pipe is not None:
            self._log_pipe.close(timeout)
        for server in self._metrics_servers:
            server.close()
        self._metrics_servers.clear()

    def __enter__(self) -> Scope:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make_sink(access_log: Any) -> LogSink | None:
    if isinstance(access_log, LogSink):
        return access_log
    if access_log == "off":
        return None
    if access_log == "stdout":
        return StreamSink()
    if isinstance(access_log, str):
        return FileSink(access_log)
    return access_log  # type: ignore[no-any-return]  # duck-typed sink with .write()
