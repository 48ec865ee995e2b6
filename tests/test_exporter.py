"""/metrics over HTTP, WSGI and ASGI: OpenMetrics exemplars, gzip, /healthz, 404, multiprocess."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import re
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import grpc
import pytest

import rpcscope
from rpcscope.testing import wait_for_logs

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
EXEMPLAR = re.compile(r' # \{trace_id="([0-9a-f]{32})"\} [0-9.e+-]+(?: [0-9.e+-]+)?$')


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def served(scope: rpcscope.Scope, serve_sync: Callable[..., int],
           sync_channel: Callable[..., grpc.Channel]) -> tuple[rpcscope.Scope, str, str]:
    """One OK unary call made through an instrumented server; (scope, base URL, its trace id)."""
    channel = sync_channel(serve_sync(scope.server_interceptors()))
    channel.unary_unary("/test.v1.Echo/Unary")(b"ok")
    [doc] = wait_for_logs(scope, 1, side="server")
    server = scope.serve_metrics(port=0, addr="127.0.0.1")
    assert server.port != 0
    return scope, server.url.removesuffix("/metrics"), doc["trace.id"]


def _exemplar_ids(text: str, family: str) -> list[str]:
    ids = []
    for line in text.splitlines():
        if line.startswith(f"{family}_bucket{{"):
            m = EXEMPLAR.search(line)
            if m:
                ids.append(m.group(1))
    return ids


def test_openmetrics_exemplar_is_the_access_log_trace_id(served: Any) -> None:
    _, base, trace_id = served
    status, headers, body = _get(f"{base}/metrics", {"Accept": OPENMETRICS})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    text = body.decode()
    assert text.rstrip().endswith("# EOF")
    assert _exemplar_ids(text, "grpc_server_handling_seconds") == [trace_id]


def test_plain_text_format_has_no_exemplars(served: Any) -> None:
    _, base, _ = served
    status, headers, body = _get(f"{base}/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert 'grpc_server_started_total{grpc_method="Unary"' in text
    assert "# {" not in text


def test_gzip_when_accepted(served: Any) -> None:
    _, base, _ = served
    status, headers, body = _get(f"{base}/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers.get("Content-Encoding") == "gzip"
    assert b"grpc_server_started_total" in gzip.decompress(body)


def test_healthz_and_unknown_paths(served: Any) -> None:
    _, base, _ = served
    assert _get(f"{base}/healthz")[0] == 200
    assert _get(f"{base}/nope")[0] == 404
    assert _get(f"{base}/")[0] == 404


def _wsgi(app: Any, path: str, headers: dict[str, str]) -> tuple[str, bytes]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    for k, v in headers.items():
        environ["HTTP_" + k.upper().replace("-", "_")] = v
    setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO()
    got: list[str] = []

    def start_response(status: str, hdrs: list[tuple[str, str]], exc: Any = None) -> Any:
        got.append(status)

    body = b"".join(app(environ, start_response))
    return got[0], body


def _asgi(app: Any, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return status, body


def test_wsgi_and_asgi_apps_serve_the_same(served: Any) -> None:
    scope, base, trace_id = served
    _, _, http_body = _get(f"{base}/metrics", {"Accept": OPENMETRICS})
    status, wsgi_body = _wsgi(scope.wsgi_app(), "/metrics", {"Accept": OPENMETRICS})
    assert status.startswith("200")
    asgi_status, asgi_body = _asgi(scope.asgi_app(), "/metrics", {"Accept": OPENMETRICS})
    assert asgi_status == 200
    assert wsgi_body == http_body
    assert asgi_body == http_body
    assert _exemplar_ids(asgi_body.decode(), "grpc_server_handling_seconds") == [trace_id]
    assert _wsgi(scope.wsgi_app(), "/healthz", {})[0].startswith("200")
    assert _wsgi(scope.wsgi_app(), "/other", {})[0].startswith("404")
    assert _asgi(scope.asgi_app(), "/healthz", {})[0] == 200
    assert _asgi(scope.asgi_app(), "/other", {})[0] == 404


def test_exemplars_can_be_turned_off(make_scope: Callable[..., rpcscope.Scope],
                                     serve_sync: Callable[..., int],
                                     sync_channel: Callable[..., grpc.Channel]) -> None:
    scope = make_scope(exemplars=False)
    sync_channel(serve_sync(scope.server_interceptors())).unary_unary(
        "/test.v1.Echo/Unary")(b"ok")
    _, body = _wsgi(scope.wsgi_app(), "/metrics", {"Accept": OPENMETRICS})
    assert b"grpc_server_handling_seconds_bucket" in body
    assert b"# {" not in body


# --- multiprocess mode -------------------------------------------------------------------------

_WORKER = textwrap.dedent('''
    import sys
    from concurrent.futures import ThreadPoolExecutor
    sys.path.insert(0, sys.argv[2])
    import grpc, _svc, rpcscope
    scope = rpcscope.Scope(service="w", access_log="off")
    server = grpc.server(ThreadPoolExecutor(2), interceptors=scope.server_interceptors())
    server.add_generic_rpc_handlers((_svc.sync_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        for _ in range(int(sys.argv[1])):
            ch.unary_unary("/test.v1.Echo/Unary")(b"ok")
    server.stop(None)
    scope.close()
''')

_SCRAPE = textwrap.dedent('''
    import rpcscope
    scope = rpcscope.Scope(service="scraper", access_log="off")
    chunks = []
    environ = {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET"}
    from wsgiref.util import setup_testing_defaults
    setup_testing_defaults(environ)
    print(b"".join(scope.wsgi_app()(environ, lambda *a: None)).decode())
''')


def test_multiprocess_workers_aggregate_on_one_scrape(tmp_path: Path) -> None:
    """prometheus_client reads PROMETHEUS_MULTIPROC_DIR at import: run workers as processes."""
    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPCSCOPE_")}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(mp_dir)
    tests_dir = str(Path(__file__).parent)
    for calls in (3, 5):
        subprocess.run([sys.executable, "-c", _WORKER, str(calls), tests_dir], env=env,
                       check=True, timeout=60)
    out = subprocess.run([sys.executable, "-c", _SCRAPE], env=env, check=True, timeout=60,
                         capture_output=True, text=True).stdout
    started = [line for line in out.splitlines()
               if line.startswith("grpc_server_started_total{") and 'grpc_method="Unary"' in line]
    assert len(started) == 1
    assert float(started[0].rsplit(" ", 1)[1]) == 8
    handled_ok = [line for line in out.splitlines()
                  if line.startswith("grpc_server_handled_total{") and 'grpc_code="OK"' in line]
    assert [float(line.rsplit(" ", 1)[1]) for line in handled_ok] == [8]
