"""Instructions per call under callgrind: a low-noise companion to ``bench/run.py``.

Why: ``bench/run.py`` measures what the issue's target is about (server CPU time per call), but
on a shared machine its noise between server processes and between runs is too wide to tell
whether a change saved a couple of µs. Valgrind's callgrind counts the instructions the server
executes, and simulates its caches; only thread scheduling varies between runs, so counts repeat
to a few percent. Instructions are not time (a cache miss costs more than an instruction;
callgrind's cache model is one simplified core), so this answers "did the change make rpcscope
do less work, and how much less than py-grpc-prometheus", not the target itself.

How: per mode, one ``bench/server.py`` switch process (every config behind one switch
interceptor, as in ``run.py``) runs under ``valgrind --tool=callgrind --cache-sim=yes``. After
warming every config up, for each config: ``callgrind_control --zero``, ``--calls`` calls,
the ``sample`` command (which flushes the config's telemetry, so its queued work is counted),
``callgrind_control --dump``. Counts are summed over all threads (gRPC core, pool, log
writer). rpcscope's background thread wakes every 6 s here (``--batch-interval``) instead of
0.2, so that under valgrind's slowdown a batch holds about as many calls as in a real run.
The measurements behind the interval and the repeatability: docs/performance.md.

    make bench-instructions          # needs Debian's valgrind (the target installs it)
    .venv/bin/python bench/instructions.py [--calls 1000] [--modes sync,aio] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import Clients, ServerProc

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "instructions.md"
CONFIGS = ("bare", "rpcscope-metrics", "rpcscope-metrics-log", "rpcscope-full",
           "py-grpc-prometheus")
#: Events callgrind reports with --cache-sim=yes, in its order.
EVENTS = ("Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw")
SLOW_CONTROL_S = 600.0  # a flush or a warm-up under valgrind takes a while


@dataclass
class Count:
    config: str
    mode: str
    calls: int
    events: dict[str, int]

    def per_call(self, event: str) -> float:
        return self.events[event] / self.calls


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls counted per config")
    parser.add_argument("--warmup", type=int, default=300, help="calls per config before")
    parser.add_argument("--modes", default="sync,aio")
    parser.add_argument("--concurrency", type=int, default=16, help="aio calls in flight")
    parser.add_argument("--batch-interval", type=float, default=6.0,
                        help="rpcscope's background batch interval under valgrind (seconds)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def dump_totals(path: Path) -> dict[str, int]:
    """The summed events of one callgrind dump (every thread: --separate-threads=no)."""
    text = path.read_text()
    names = re.search(r"^events: (.*)$", text, re.M)
    totals = re.search(r"^summary: (.*)$", text, re.M) or re.search(r"^totals: (.*)$", text, re.M)
    if names is None or totals is None:
        raise RuntimeError(f"{path}: not a callgrind dump")
    values = [int(v) for v in totals.group(1).split()]
    values += [0] * (len(names.group(1).split()) - len(values))
    return dict(zip(names.group(1).split(), values, strict=True))


def count_mode(mode: str, args: argparse.Namespace, workdir: str) -> list[Count]:
    out_prefix = os.path.join(workdir, f"callgrind-{mode}")
    wrapper = ["valgrind", "--tool=callgrind", "--cache-sim=yes", "--separate-threads=no",
               f"--callgrind-out-file={out_prefix}.%p"]
    server = ServerProc(list(CONFIGS), mode, workdir, f"server-{mode}", wrapper=wrapper,
                        extra_args=["--batch-interval", str(args.batch_interval)])
    clients = Clients(args.concurrency)
    counts: list[Count] = []
    try:
        server.wait_ready()
        for config in CONFIGS:
            server.use(config)
            clients.run(server, args.warmup)
            server.cpu_ns(SLOW_CONTROL_S)
        for config in CONFIGS:
            server.use(config)
            clients.run(server, 50)  # back in this config's steady state
            server.cpu_ns(SLOW_CONTROL_S)
            pid = str(server.proc.pid)
            subprocess.run(["callgrind_control", "--zero", pid], check=True, capture_output=True)
            started = time.monotonic()
            phase = clients.run(server, args.calls)
            server.cpu_ns(SLOW_CONTROL_S)  # the flush: queued telemetry work is counted here
            before = set(Path(workdir).glob(f"callgrind-{mode}.*"))
            subprocess.run(["callgrind_control", "--dump", pid], check=True, capture_output=True)
            dump = _new_dump(workdir, mode, before)
            counts.append(Count(config, mode, len(phase.latencies_ns), dump_totals(dump)))
            print(f"{mode} {config}: {len(phase.latencies_ns)} calls in "
                  f"{time.monotonic() - started:.0f}s", flush=True)
    finally:
        clients.close()
        server.stop(timeout=60)
    return counts


def _new_dump(workdir: str, mode: str, before: set[Path]) -> Path:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = [p for p in Path(workdir).glob(f"callgrind-{mode}.*") if p not in before]
        if new:
            time.sleep(0.5)  # let callgrind finish writing it
            return max(new, key=lambda p: p.stat().st_mtime)
        time.sleep(0.2)
    raise RuntimeError("callgrind wrote no dump")


def render(counts: list[Count], args: argparse.Namespace, argv: list[str]) -> str:
    lines = [
        "# Instructions per unary call under callgrind",
        "",
        "<!-- Generated by bench/instructions.py; do not edit by hand: rerun "
        "`make bench-instructions`. -->",
        "",
        f"- **Command:** `{' '.join(['.venv/bin/python', 'bench/instructions.py', *argv])}`",
        f"- **Date:** {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- **Load:** {args.calls} calls per config after {args.warmup} warm-up calls, one "
        f"switch server process per mode; sync = 1 call in flight, aio = {args.concurrency}.",
        "",
        "What this is and is not: see the docstring of `bench/instructions.py`. In short, "
        "instruction and simulated cache-miss counts repeat to a few percent between runs, so "
        "they show whether a change made a config do less work; they are not CPU time, which "
        "is what the issue's "
        "target (and `docs/benchmarks.md`) measures. Columns: server instructions per call "
        "(all threads), and extra per call over bare: instructions, simulated L1 instruction "
        "misses, simulated L1 data misses (read + write). The last column is the config's extra "
        "instructions over py-grpc-prometheus's.",
        "",
    ]
    for mode in dict.fromkeys(c.mode for c in counts):
        rows = {c.config: c for c in counts if c.mode == mode}
        bare, prom = rows["bare"], rows.get("py-grpc-prometheus")
        lines += [
            f"## {mode}",
            "",
            "| config | instructions/call | extra instructions | extra L1i misses "
            "| extra L1d misses | vs py-grpc-prometheus |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        prom_extra = None if prom is None else prom.per_call("Ir") - bare.per_call("Ir")
        for config, c in rows.items():
            extra = c.per_call("Ir") - bare.per_call("Ir")
            i1 = c.per_call("I1mr") - bare.per_call("I1mr")
            d1 = (c.per_call("D1mr") + c.per_call("D1mw")
                  - bare.per_call("D1mr") - bare.per_call("D1mw"))
            ratio = "" if not prom_extra or config == "bare" else f"{extra / prom_extra:.2f}"
            lines.append(f"| {config} | {c.per_call('Ir') / 1000:.1f}k | {extra / 1000:+.1f}k "
                         f"| {round(i1):+d} | {round(d1):+d} | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: install Debian's valgrind (`make bench-instructions` "
                     "does), or `apt-get install valgrind`")
    counts: list[Count] = []
    with tempfile.TemporaryDirectory(prefix="rpcscope-instr-") as workdir:
        for mode in args.modes.split(","):
            counts += count_mode(mode, args, workdir)
    text = render(counts, args, argv)
    args.out.write_text(text + "\n")
    print(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
