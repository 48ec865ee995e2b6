"""Shared fixtures: a fresh registry and capture sink per test, real gRPC servers on port 0.

Every server binds 127.0.0.1:0 and every test builds its own ``Scope`` on its own
``CollectorRegistry``, so tests never see each other's series and can run in any order.
aio tests drive their own event loop with ``asyncio.run`` (no pytest plugin needed) and
start servers with ``_calls.aio_server``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

import rpcscope
from rpcscope.testing import CaptureSink

sys.path.insert(0, str(Path(__file__).parent))
# Shared assertion helpers get pytest's detailed failure messages too.
pytest.register_assert_rewrite("_calls")
import _svc  # noqa: E402 - the test service lives beside the tests, not in the package


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's RPCSCOPE_*/OTEL_* variables must not change what the tests assert."""
    for key in list(os.environ):
        if key.startswith(("RPCSCOPE_", "OTEL_")) or key.lower() == "prometheus_multiproc_dir":
            monkeypatch.delenv(key)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def sink() -> CaptureSink:
    return CaptureSink()


@pytest.fixture
def make_scope(registry: CollectorRegistry, sink: CaptureSink
               ) -> Iterator[Callable[..., rpcscope.Scope]]:
    """Build Scopes on the test's registry and capture sink (overridable); closed at teardown."""
    scopes: list[rpcscope.Scope] = []

    def make(**options: Any) -> rpcscope.Scope:
        options.setdefault("service", "test-svc")
        options.setdefault("registry", registry)
        options.setdefault("access_log", sink)
        scope = rpcscope.Scope(**options)
        scopes.append(scope)
        return scope

    yield make
    for scope in scopes:
        scope.close(timeout=2.0)


@pytest.fixture
def scope(make_scope: Callable[..., rpcscope.Scope]) -> rpcscope.Scope:
    return make_scope()


@pytest.fixture
def serve_sync() -> Iterator[Callable[..., int]]:
    """Start a sync grpc server with the test service (and optional interceptors); its port."""
    servers: list[grpc.Server] = []

    def serve(interceptors: Sequence[Any] = (), handlers: Sequence[Any] | None = None) -> int:
        server = grpc.server(ThreadPoolExecutor(max_workers=8), interceptors=list(interceptors))
        server.add_generic_rpc_handlers(tuple(handlers) if handlers else (_svc.sync_handler(),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return port

    yield serve
    for server in servers:
        server.stop(None)


@pytest.fixture
def sync_channel() -> Iterator[Callable[..., grpc.Channel]]:
    """Open a channel to 127.0.0.1:port, optionally intercepted; closed at teardown."""
    channels: list[grpc.Channel] = []

    def open_channel(port: int, interceptors: Sequence[Any] = ()) -> grpc.Channel:
        raw = grpc.insecure_channel(f"127.0.0.1:{port}")
        channels.append(raw)
        return grpc.intercept_channel(raw, *interceptors) if interceptors else raw

    yield open_channel
    for channel in channels:
        channel.close()


@pytest.fixture
def handler_sleeping(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set when a test-service handler starts a ``sleep:`` command (sync or aio).

    Cancelling only after this point makes the server-side outcome deterministic: the handler
    has consumed every request message and is inside the call.
    """
    event = threading.Event()
    real_sleep, real_async_sleep = time.sleep, asyncio.sleep

    def sleep(seconds: float) -> None:
        event.set()
        real_sleep(seconds)

    async def async_sleep(seconds: float) -> None:
        event.set()
        await real_async_sleep(seconds)

    monkeypatch.setattr(_svc, "time", types.SimpleNamespace(sleep=sleep))
    monkeypatch.setattr(_svc, "asyncio", types.SimpleNamespace(sleep=async_sleep))
    return event
