"""Start real Prometheus (and later Alertmanager) binaries on free loopback ports for tests."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        # `make test` installs these Debian packages; outside it, say how to get them.
        pytest.fail(f"{name} not found: run `make test` (installs prometheus, "
                    f"prometheus-alertmanager) or apt-get install them")
    return path


@contextmanager
def prometheus(tmp: Path, scrape_targets: list[str], metrics_path: str = "/metrics"
               ) -> Iterator[str]:
    """A real Prometheus scraping ``scrape_targets`` every second; yields its base URL."""
    binary = require_binary("prometheus")
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: rpcscope-test\n"
        f"    metrics_path: {metrics_path}\n"
        f"    static_configs:\n      - targets: {json.dumps(scrape_targets)}\n"
    )
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get(f"{url}/-/ready") is not None, 30, "Prometheus ready", proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            body: bytes = r.read()
            return body
    except OSError:
        return None


def query(base: str, promql: str) -> list[dict[str, Any]]:
    body = _get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    if body is None:
        return []
    data = json.loads(body)
    result: list[dict[str, Any]] = data["data"]["result"]
    return result


def wait_until(check: Any, timeout: float, what: str, proc: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _start(binary: str, args: list[str], log_path: Path, ready_url: str, what: str
           ) -> subprocess.Popen[bytes]:
    log = log_path.open("w")
    proc = subprocess.Popen([binary, *args], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        wait_until(lambda: _get(ready_url) is not None, 30, f"{what} ready", proc)
    except AssertionError:
        _stop(proc)
        raise AssertionError(f"{what} did not start:\n{log_path.read_text()[-3000:]}") from None
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def prometheus_with_config(tmp: Path, config: str, extra_args: tuple[str, ...] = ()
                           ) -> Iterator[str]:
    """A real Prometheus with the given prometheus.yml (rule files and all); yields its URL."""
    port = free_port()
    (tmp / "prometheus.yml").write_text(config)
    url = f"http://127.0.0.1:{port}"
    proc = _start(require_binary("prometheus"),
                  [f"--config.file={tmp / 'prometheus.yml'}",
                   f"--storage.tsdb.path={tmp / 'prom-data'}",
                   f"--web.listen-address=127.0.0.1:{port}", *extra_args],
                  tmp / "prometheus.log", f"{url}/-/ready", "Prometheus")
    try:
        yield url
    finally:
        _stop(proc)


@contextmanager
def alertmanager(tmp: Path, config: str) -> Iterator[str]:
    """A real Alertmanager (Debian's binary is prometheus-alertmanager) with the given config,
    clustering off; yields its URL."""
    binary = shutil.which("prometheus-alertmanager") or require_binary("alertmanager")
    port = free_port()
    (tmp / "alertmanager.yml").write_text(config)
    url = f"http://127.0.0.1:{port}"
    proc = _start(binary,
                  [f"--config.file={tmp / 'alertmanager.yml'}",
                   f"--storage.path={tmp / 'am-data'}",
                   f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                  tmp / "alertmanager.log", f"{url}/-/ready", "Alertmanager")
    try:
        yield url
    finally:
        _stop(proc)


def get_json(url: str) -> Any:
    body = _get(url)
    return None if body is None else json.loads(body)
