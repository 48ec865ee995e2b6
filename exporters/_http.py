"""``/metrics`` and ``/healthz`` over HTTP, as a server or as WSGI/ASGI apps.

prometheus_client's own apps do the exposition: OpenMetrics content negotiation (exemplars are
only rendered in OpenMetrics), gzip when the scraper accepts it, ``name[]`` filtering. We add the
routing its apps do not have (``/healthz``, 404 elsewhere) and multiprocess mode: with
``PROMETHEUS_MULTIPROC_DIR`` set, a scrape aggregates every worker's files via
``MultiProcessCollector`` instead of reading this process's registry.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_asgi_app, make_wsgi_app
from prometheus_client import multiprocess as _mp

from rpcscope import schema

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def multiprocess_dir() -> str | None:
    # prometheus_client still honours the old lower-case spelling; so do we.
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get(
        "prometheus_multiproc_dir"  # noqa: SIM112
    )


def exposition_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """The registry a scrape should read: this process's, or all workers' in multiprocess mode."""
    if multiprocess_dir() is None:
        return registry
    aggregated = CollectorRegistry()
    _mp.MultiProcessCollector(aggregated)  # type: ignore[no-untyped-call]
    return aggregated


def make_metrics_wsgi_app(registry: CollectorRegistry) -> WSGIApp:
    """WSGI app serving ``/metrics`` and ``/healthz`` (mount it in your own web server)."""
    metrics_app = make_wsgi_app(exposition_registry(registry))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == schema.METRICS_PATH:
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result
        if path == schema.HEALTH_PATH:
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def make_metrics_asgi_app(registry: CollectorRegistry) -> Callable[..., Awaitable[None]]:
    """ASGI app serving ``/metrics`` and ``/healthz`` (e.g. mounted in Starlette/FastAPI)."""
    metrics_app = make_asgi_app(exposition_registry(registry))

    async def app(scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope.get("type") != "http":
            return
        path = scope.get("path", "")
        if path == schema.METRICS_PATH:
            await metrics_app(scope, receive, send)
            return
        status, body = (200, b"ok\n") if path == schema.HEALTH_PATH else (404, b"not found\n")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
        await send({"type": "http.response.body", "body": body})

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would flood stderr; stay quiet like prometheus_client."""


class MetricsServer:
    """A running ``/metrics`` endpoint. ``port`` is the real port (useful with ``port=0``)."""

    def __init__(self, registry: CollectorRegistry, port: int, addr: str) -> None:
        self._httpd = make_server(
            addr, port, make_metrics_wsgi_app(registry), _ThreadingServer, _QuietHandler
        )
        self.addr = addr
        self.port: int = self._httpd.server_port
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="rpcscope-metrics", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.addr in ("", "0.0.0.0") else self.addr
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}{schema.METRICS_PATH}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
