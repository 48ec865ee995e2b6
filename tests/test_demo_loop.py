"""``rpcscope demo``, the whole loop: the shop under load with an incident, a real Prometheus
and Alertmanager on the chart's rendered rules and routing, logs shipped over Forward, and the
alert received by the demo's webhook; then ``--keep`` and a clean stop.

Each demo runs as a subprocess, as ``make demo`` runs it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

HAVE_STACK = shutil.which("prometheus") is not None and (
    shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")) is not None


def _demo(*args: str) -> list[str]:
    found = shutil.which("rpcscope", path=os.path.dirname(sys.executable))
    return [found] if found else [sys.executable, "-m", "rpcscope._cli"]


def _run(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
         timeout: float = 180) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [*_demo(), "demo", "--report", str(report), "--access-log", "off", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    data = json.loads(report.read_text()) if report.exists() else {}
    return proc, data


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _processes_with(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (a listen address only this demo used)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not HAVE_STACK, reason="needs Debian's prometheus and prometheus-alertmanager")
def test_the_incident_pages_and_resolves_and_every_log_is_acknowledged(tmp_path: Path) -> None:
    proc, report = _run(tmp_path, "--duration", "45", "--seed", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {(a["alertname"], a["labels"].get("severity"), a["labels"].get("window"),
              a["status"]) for a in report["alerts"]}
    # The SLO the chart's rules define for GetProduct pages (fast burn: 1h and 5m windows),
    # then the page resolves after the recovery.
    fast = ("GRPCAvailabilityBudgetBurn", "critical", "1h")
    assert (*fast, "firing") in names, report["alerts"]
    assert (*fast, "resolved") in names, report["alerts"]
    page = next(a for a in report["alerts"] if a["alertname"] == "GRPCAvailabilityBudgetBurn"
                and a["status"] == "firing" and a["labels"]["severity"] == "critical")
    assert page["labels"]["slo"] == "shop-getproduct"
    assert page["labels"]["service"] == "shop.v1.Shop"
    # Every access and application log record was shipped and acknowledged.
    logs = report["logs"]
    assert logs["emitted"] > 0 and logs["delivered"] == logs["emitted"] and logs["lost"] == 0
    calls = sum(sum(codes.values()) for codes in report["calls"].values())
    client = sum(sum(codes.values()) for codes in report["client_calls"].values())
    assert logs["emitted"] >= calls + client
    assert report["receiver"]["rpcscope.access"] == calls + client
    assert report["calls"]["GetProduct"].get("Unavailable", 0) > 0
    assert report["skipped"] == []
    # The live view showed the incident and the alerts as they arrived.
    assert "incident: GetProduct fails" in proc.stderr and "alert FIRING" in proc.stderr


@pytest.mark.skipif(not HAVE_STACK, reason="needs Debian's prometheus and prometheus-alertmanager")
def test_keep_serves_the_stack_until_ctrl_c_and_leaves_nothing_behind(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*_demo(), "demo", "--duration", "2", "--no-incident", "--access-log", "off",
         "--no-progress", "--keep"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        urls: dict[str, str] = {}
        for line in proc.stdout:
            match = re.match(r"\s+(/metrics|Prometheus|Alertmanager):\s+(\S+)", line)
            if match:
                urls[match.group(1)] = match.group(2)
            if len(urls) == 3:
                break
        assert set(urls) == {"/metrics", "Prometheus", "Alertmanager"}, urls
        with urllib.request.urlopen(urls["Prometheus"] + "/api/v1/rules", timeout=10) as r:
            groups = json.loads(r.read())["data"]["groups"]
        assert any(rule["name"] == "GRPCAvailabilityBudgetBurn"
                   for group in groups for rule in group["rules"])
        with urllib.request.urlopen(urls["Alertmanager"] + "/-/ready", timeout=10) as r:
            assert r.status == 200
        ports = [int(url.split(":")[2].split("/")[0]) for url in urls.values()]
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert all(_port_free(port) for port in ports), ports
    for port in ports:
        assert _processes_with(f"127.0.0.1:{port}") == []


def test_a_port_given_and_taken_names_the_flag(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc, _ = _run(tmp_path, "--duration", "1", "--receiver-port", str(port))
    assert proc.returncode == 2
    assert f"port {port} on 127.0.0.1 is in use; pass --receiver-port 0" in proc.stderr


def test_without_prometheus_it_runs_and_says_what_it_skipped(tmp_path: Path) -> None:
    bare_path = tmp_path / "bin"
    bare_path.mkdir()
    env = {**os.environ, "PATH": str(bare_path)}
    proc, report = _run(tmp_path, "--duration", "1", "--no-incident", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "skipped Prometheus and the alerts: no `prometheus` binary" in proc.stderr
    assert report["skipped"] and report["alerts"] == []
    assert sum(sum(c.values()) for c in report["calls"].values()) > 0
    assert report["logs"]["delivered"] == report["logs"]["emitted"] > 0
