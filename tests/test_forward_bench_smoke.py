"""The Fluentd shipping benchmark still runs end to end on a few records (no timing asserted):
every sender delivered every record, and the report it writes has each sender's row, the three
target verdicts and the profile, inside its own section of the Markdown file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "forward.py"
SENDERS = ("rpcscope", "rpcscope-sink", "fl-sync", "fl-async", "fl-handler",
           "fl-async-handler")


def test_bench_forward_smoke(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nother sections stay\n")
    for _ in range(2):  # the second run replaces the section instead of appending another
        proc = subprocess.run(
            [sys.executable, str(BENCH), "--records", "300", "--repeats", "1",
             "--profile-records", "300", "--write-docs", "--out", str(out)],
            capture_output=True, text=True, timeout=180, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nother sections stay\n")
    assert text.count("<!-- bench/forward.py: begin -->") == 1
    for name in SENDERS:
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        assert row.split("|")[-3].strip() == "0", row  # lost
    for target in ("throughput ≥ 5x", "caller p99 < 20 µs", "zero loss: PASS"):
        assert target in text
    assert "log_record_document" in text  # the profile names where the time goes
