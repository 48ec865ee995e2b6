"""``rpcscope demo``: the command ``make demo`` runs, end to end.

The demo is the first thing a user runs, and CI reads its ``--report``. These tests run it for
real (shop server, load generator, rpcscope middleware, /metrics endpoint) and check that its
numbers agree with each other: the server's metrics, the client's metrics, what the load
generator says it sent, and the access log on disk.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from rpcscope import _cli
from rpcscope._cli import histogram_quantile
from rpcscope.example_shop.server import METHODS

REQUIRED_KEYS = {"calls", "latency", "logs", "alerts"}


def _command() -> list[str]:
    script = Path(sys.executable).with_name("rpcscope")
    if script.exists():
        return [str(script)]
    found = shutil.which("rpcscope")
    return [found] if found else [sys.executable, "-m", "rpcscope._cli"]


#: grpcio aio sometimes ends a streaming call whose deadline expires with INTERNAL ("Internal
#: error from Core") on one layer of an intercepted call and DEADLINE_EXCEEDED on the other.
_AIO_DEADLINE_CODES = ("DeadlineExceeded", "Internal")


def _merge_aio_deadline_codes(codes: dict[str, int]) -> dict[str, int]:
    merged = {c: n for c, n in codes.items() if c not in _AIO_DEADLINE_CODES}
    merged["DeadlineExceeded|Internal"] = sum(codes.get(c, 0) for c in _AIO_DEADLINE_CODES)
    return merged


def _check_consistent(report: dict[str, Any]) -> None:
    """The report's numbers must agree with each other, method by method."""
    assert set(report) >= REQUIRED_KEYS
    assert report["alerts"] == []
    load = report["load"]
    for method in METHODS:
        server_calls = sum(report["calls"][method].values())
        sent = load["sent"][method]
        # Calls with a short deadline or a cancellation may end before reaching the server;
        # every other call must be counted by it, exactly once.
        may_miss = load["deadlines"].get(method, 0) + load["cancels"].get(method, 0)
        assert 0 < server_calls <= sent, method
        assert server_calls >= sent - may_miss, method
        # The client interceptors saw every call the generator made, with the same outcome.
        seen, made = report["client_calls"][method], load["codes"][method]
        if report["mode"] == "aio":
            seen, made = _merge_aio_deadline_codes(seen), _merge_aio_deadline_codes(made)
        assert seen == made, method
        p50, p99 = report["latency"][method]["p50"], report["latency"][method]["p99"]
        assert 0 < p50 <= p99, method
    logs = report["logs"]
    assert set(logs) == {"emitted", "delivered", "lost"}
    # One access-log record per server call and per client call, at least (plus app logs).
    total_server = sum(sum(codes.values()) for codes in report["calls"].values())
    total_client = sum(sum(codes.values()) for codes in report["client_calls"].values())
    assert logs["emitted"] >= total_server + total_client
    assert logs["delivered"] == logs["emitted"]
    assert logs["lost"] == 0
    assert report["instrumentation_errors"] == 0


def test_demo_command_serves_metrics_and_reports(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    access_log = tmp_path / "access.log"
    argv = [
        *_command(),
        "demo",
        "--duration",
        "3",
        "--no-stack",  # the whole loop, with Prometheus and Alertmanager: test_demo_loop.py
        "--metrics-port",
        "0",
        "--report",
        str(report_path),
        "--access-log",
        str(access_log),
        "--seed",
        "1",
    ]
    proc = subprocess.Popen(
        argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        url = re.search(r"/metrics at (http://\S+),", first)
        assert url, first
        # While the load runs, /metrics serves the Go-compatible series for the shop.
        with urllib.request.urlopen(url.group(1), timeout=5) as response:
            exposition = response.read().decode()
        for method in METHODS:
            assert re.search(
                rf'^grpc_server_started_total{{[^}}]*grpc_method="{method}"', exposition, re.M
            ), method
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err

    report = json.loads(report_path.read_text())
    _check_consistent(report)
    assert report["metrics_url"] == url.group(1)

    # The summary names every method, where the metrics were, and where the logs went.
    for method in METHODS:
        assert re.search(rf"^{method}\s", out, re.MULTILINE), out
    assert url.group(1) in out
    assert str(access_log) in out
    assert "demo [" in err  # progress, as plain lines when stderr is not a terminal

    # The access log on disk holds what the report says was delivered, as ECS JSON lines.
    lines = access_log.read_text().splitlines()
    assert len(lines) == report["logs"]["delivered"]
    records = [json.loads(line) for line in lines]
    server_records = [
        r
        for r in records
        if r.get("log.logger") == "rpcscope.access" and r.get("grpc.component") == "server"
    ]
    assert len(server_records) == sum(sum(c.values()) for c in report["calls"].values())


def test_demo_aio_mode_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report_path = tmp_path / "report.json"
    status = _cli.main(
        [
            "demo",
            "--mode",
            "aio",
            "--no-stack",
            "--duration",
            "2",
            "--rate",
            "80",
            "--metrics-port",
            "0",
            "--report",
            str(report_path),
            "--access-log",
            str(tmp_path / "access.log"),
            "--no-progress",
            "--seed",
            "2",
        ]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    report = json.loads(report_path.read_text())
    assert report["mode"] == "aio"
    _check_consistent(report)
    assert "demo [" not in err
    for method in METHODS:
        assert method in out


def test_demo_without_faults_has_only_client_made_errors(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    status = _cli.main(
        [
            "demo",
            "--duration",
            "1",
            "--rate",
            "100",
            "--no-faults",
            "--no-incident",
            "--no-ship",
            "--no-stack",
            "--metrics-port",
            "0",
            "--access-log",
            "off",
            "--report",
            str(report_path),
            "--no-progress",
        ]
    )
    assert status == 0
    report = json.loads(report_path.read_text())
    # Without injected faults, every non-OK code comes from the client's own doing: bad input,
    # a short deadline, a cancellation.
    allowed = {"OK", "NotFound", "InvalidArgument", "DeadlineExceeded", "Canceled"}
    for codes in report["calls"].values():
        assert set(codes) <= allowed
    assert report["logs"] == {"emitted": 0, "delivered": 0, "lost": 0}


@pytest.mark.parametrize(
    ("flag", "other"),
    [("--metrics-port", []), ("--shop-port", ["--metrics-port", "0"])],
)
def test_busy_port_is_a_clear_error(
    flag: str, other: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status = _cli.main(
            ["demo", "--duration", "1", flag, str(port), *other,
             "--access-log", str(tmp_path / "access.log")]
        )
    assert status == 2
    assert f"{flag} 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--duration", "0"],
        ["--duration", "100000"],
        ["--metrics-port", "70000"],
        ["--fault", "Nope:crash=1"],
        ["--fault", "GetProduct:crash=2"],
        ["--weights", "Nope=1"],
        ["--concurrency", "0"],
    ],
)
def test_invalid_demo_options_fail_before_starting(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _cli.main(["demo", *args])
    assert exited.value.code == 2
    assert "error" in capsys.readouterr().err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main([]) == 2
    assert "demo" in capsys.readouterr().err


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_live_view_redraws_in_place_only_on_a_terminal() -> None:
    import argparse

    from prometheus_client import CollectorRegistry

    import rpcscope

    scope = rpcscope.Scope(service="shop", access_log="off", registry=CollectorRegistry())
    tty, pipe = _Stream(tty=True), _Stream(tty=False)
    try:
        for stream in (tty, pipe):
            run = _cli.DemoRun(args=argparse.Namespace(duration=10.0), err=stream, scope=scope)
            events: list[str] = []
            view = _cli.LiveView(run, events, enabled=True, every=5.0)
            for second in range(10):
                if second == 3:
                    events.append("3.0s  incident: GetProduct fails")
                view.update(done=second * 10, failed=second, elapsed=float(second))
            view.update(done=100, failed=10, elapsed=10.0, final=True)
    finally:
        scope.close()
    block = 2 + len(METHODS)  # the head line, the column titles, a row per method
    # terminal: the block is redrawn in place (cursor up), the event printed once above it
    assert tty.getvalue().count("\x1b[%dA" % block) == 10
    assert tty.getvalue().count("incident: GetProduct fails") == 1
    # pipe (CI logs): a block every 5 s plus the final one, never a cursor movement
    text = pipe.getvalue()
    assert "\x1b[" not in text and "\r" not in text
    heads = [line for line in text.splitlines() if line.startswith("demo [")]
    assert len(heads) == 3
    assert heads[-1].startswith("demo [" + "#" * 24 + "]") and "100 calls" in heads[-1]
    assert text.count("incident: GetProduct fails") == 1


# --- the latency estimate ------------------------------------------------------------------------


def test_histogram_quantile_interpolates_like_promql() -> None:
    inf = float("inf")
    buckets = [(0.1, 50.0), (0.2, 100.0), (inf, 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.198)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)  # first bucket starts at 0
    # a rank in the +Inf bucket reports the highest finite bound, as PromQL does
    assert histogram_quantile(0.99, [(0.1, 10.0), (inf, 20.0)]) == pytest.approx(0.1)
    assert histogram_quantile(0.5, [(0.1, 0.0), (inf, 0.0)]) is None
    with pytest.raises(ValueError):
        histogram_quantile(1.0, buckets)
