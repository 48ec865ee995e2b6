"""rpcscope: observability for Python gRPC services in one bundle.

A small public surface on purpose; everything else lives in private modules::

    scope = rpcscope.Scope(service="checkout")
    server = grpc.server(pool, interceptors=scope.server_interceptors())
    scope.serve_metrics(port=9464)
"""

from rpcscope._config import Config, ConfigError
from rpcscope._scope import Scope
from rpcscope.exporters._ecs import EcsFormatter
from rpcscope.exporters._forward import ForwardSink
from rpcscope.exporters._http import MetricsServer, make_metrics_asgi_app, make_metrics_wsgi_app
from rpcscope.exporters._logs import FileSink, LineSink, LogSink, StreamSink

__all__ = [
    "Config",
    "ConfigError",
    "EcsFormatter",
    "FileSink",
    "ForwardSink",
    "LineSink",
    "LogSink",
    "MetricsServer",
    "Scope",
    "StreamSink",
    "current_trace_ids",
    "make_metrics_asgi_app",
    "make_metrics_wsgi_app",
]

__version__ = "0.1.0"


def current_trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the RPC handled in this thread/task, or None outside one."""
    from rpcscope.collector._ids import current_ids

    return current_ids()
