"""Where telemetry leaves the process (``rpcscope.exporters``): /metrics, log sinks, ECS."""

from rpcscope.exporters._ecs import EcsFormatter
from rpcscope.exporters._forward import ForwardSink
from rpcscope.exporters._http import MetricsServer, make_metrics_asgi_app, make_metrics_wsgi_app
from rpcscope.exporters._logs import FileSink, LineSink, LogSink, StreamSink

__all__ = [
    "EcsFormatter",
    "FileSink",
    "ForwardSink",
    "LineSink",
    "LogSink",
    "MetricsServer",
    "StreamSink",
    "make_metrics_asgi_app",
    "make_metrics_wsgi_app",
]
