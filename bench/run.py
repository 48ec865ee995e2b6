"""Overhead benchmark (issue 2 §6): server CPU per call, throughput and latency vs a bare server.

``make bench`` runs this file; method, why it pairs and pins, and the figures: docs/performance.md.

    .venv/bin/python bench/run.py                          # defaults: about 11 minutes
    .venv/bin/python bench/run.py --reps 60                # tighter numbers, ~18 minutes
    .venv/bin/python bench/run.py --profile rpcscope-full  # where does the time go?
    .venv/bin/python bench/run.py --smoke --out /tmp/b.md  # seconds; proves the harness works
    .venv/bin/python bench/run.py --no-pin                 # let the scheduler place everything

Writes ``docs/benchmarks.md`` (``--out``) and, with ``--json``, the raw per-phase numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import BARE, MODES, ORDER, log, run
from report import machine, print_summary, render
from server import CONFIGS, DIAGNOSTIC_CONFIGS, allowed_cpus, pin_process
from stats import analyse, verdicts

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MICRO = HERE / "micro.py"
#: Filename regex of each config's own code, to list it apart in ``--profile`` output.
OWN_CODE = {
    "rpcscope-metrics": r"(collector|exporters|rpcscope)/",
    "rpcscope-metrics-log": r"(collector|exporters|rpcscope)/",
    "rpcscope-full": r"(collector|exporters|rpcscope)/",
    "py-grpc-prometheus": r"(py_grpc_prometheus|prometheus_client)/",
    "otel-grpc": r"opentelemetry/",
}
#: Defaults sized for ``make bench`` to take about 11 minutes on 2 CPUs: docs/performance.md.
DEFAULT_PROCS = 5
DEFAULT_CALLS = 500
DEFAULT_REPS = 32


def run_micro(args: argparse.Namespace, workdir: str) -> dict[str, Any] | None:
    """``bench/micro.py`` in a fresh process (no harness threads or channels around it), warm
    and with ``--cold`` (caches evicted before every call); ``cold`` is None if that run failed."""
    runs: dict[str, Any] = {}
    for name, extra, calls, repeats in (
        ("warm", [], *((200, 1) if args.smoke else (20_000, 5))),
        ("cold", ["--cold"], *((100, 1) if args.smoke else (3_000, 10))),
    ):
        out = os.path.join(workdir, f"micro-{name}.json")
        log(f"micro-benchmark ({name}): {repeats} x {calls} in-process calls per config")
        proc = subprocess.run(
            [sys.executable, str(MICRO), "--calls", str(calls), "--repeats", str(repeats),
             "--json", out, *extra],
            check=False,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            log(f"micro-benchmark ({name}) failed (left out of the report): "
                f"{proc.stderr[-2000:]}")
            runs[name] = None
            continue
        runs[name] = json.loads(Path(out).read_text(encoding="utf-8"))
    warm = runs["warm"]
    if warm is None:
        return None
    return {**warm, "cold": runs["cold"]}


# --- profile mode ----------------------------------------------------------------------------


def profile(args: argparse.Namespace, workdir: str) -> None:
    import pstats

    args.configs = [args.profile]
    args.procs = 1  # a profile wants one process's story, not K of them
    slots = run(args, workdir, profile_dir=workdir)
    for slot in slots:
        mode = slot.mode
        name = slot.process.name if slot.process is not None else slot.name
        path = os.path.join(workdir, f"{name}.prof")
        if not os.path.exists(path):
            print(f"{mode}: no profile written")
            continue
        total_calls = args.warmup + args.calls * args.reps
        print(f"\n=== {args.profile} / {mode}: top functions by own time ({total_calls} calls) ===")
        stats = pstats.Stats(path)
        stats.sort_stats("tottime").print_stats(30)
        print(f"=== {args.profile} / {mode}: by cumulative time ===")
        stats.sort_stats("cumulative").print_stats(30)
        own = OWN_CODE.get(args.profile)
        if own:
            print(f"=== {args.profile} / {mode}: the instrumentation's own code, by own time ===")
            stats.sort_stats("tottime").print_stats(own, 30)


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Why repetitions narrow the result more than processes do: docs/performance.md.
    parser.add_argument(
        "--procs",
        type=int,
        default=DEFAULT_PROCS,
        help=f"switch server processes per mode, and processes per unswitchable config "
        f"(default {DEFAULT_PROCS})",
    )
    parser.add_argument(
        "--calls",
        type=int,
        default=DEFAULT_CALLS,
        help=f"calls per phase (default {DEFAULT_CALLS})",
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=DEFAULT_REPS,
        help=f"repetitions, each visiting every (process, config) once (default {DEFAULT_REPS})",
    )
    parser.add_argument(
        "--warmup", type=int, default=500, help="warm-up calls per (process, config)"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the visiting order and of the bootstrap"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="aio calls in flight")
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="let the scheduler place servers and clients on any CPU (default: servers on the "
        "last CPU, the harness on the others; see docs/performance.md)",
    )
    parser.add_argument("--modes", default=",".join(MODES), help="comma list: sync,aio")
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"comma list from: {','.join(CONFIGS)} (bare is always added; the default); "
        f"diagnostic floors, only when named: {','.join(DIAGNOSTIC_CONFIGS)}",
    )
    parser.add_argument(
        "--out",
        default=str(ROOT / "docs" / "benchmarks.md"),
        help="markdown report to write (default docs/benchmarks.md)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write raw numbers as JSON")
    parser.add_argument(
        "--no-micro",
        dest="micro",
        action="store_false",
        help="skip the in-process micro-benchmark section (bench/micro.py, warm and cold, ~90 s)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few calls only: proves the harness end to end, numbers are noise",
    )
    parser.add_argument(
        "--profile",
        metavar="CONFIG",
        choices=CONFIGS + DIAGNOSTIC_CONFIGS,
        help="profile one config's server with cProfile instead of benchmarking",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.calls, args.reps, args.warmup = min(args.calls, 40), min(args.reps, 2), 10
        args.procs = min(args.procs, 2)
    args.modes = [m for m in args.modes.split(",") if m]
    args.configs = [c for c in args.configs.split(",") if c]
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"--modes: unknown mode {mode!r}; use sync and/or aio")
    known = CONFIGS + DIAGNOSTIC_CONFIGS
    for config in args.configs:
        if config not in known:
            parser.error(f"--configs: unknown config {config!r}; choose from {known}")
    if BARE not in args.configs:
        args.configs.insert(0, BARE)  # every delta is against bare: it always runs
    args.configs = [c for c in ORDER if c in args.configs]
    if min(args.calls, args.reps, args.procs, args.concurrency) < 1 or args.warmup < 0:
        parser.error("--calls, --reps, --procs and --concurrency must be positive, --warmup ≥ 0")
    return args


def split_cpus(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, harness CPUs): the servers on the last CPU this process may use, the
    harness and its clients on the others; (None, None) with ``--no-pin`` or a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def keep_forward_section(doc: str, previous: str) -> str:
    """``doc`` with the shipper's section of ``previous`` (``make bench-forward`` writes it)
    appended unchanged: each benchmark rewrites only its own part of docs/benchmarks.md."""
    from forward import BEGIN, END

    if BEGIN not in previous or END not in previous:
        return doc
    section = previous[previous.index(BEGIN):previous.index(END) + len(END)]
    return doc.rstrip("\n") + "\n\n" + section + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    info = machine()  # before pinning, which leaves this process fewer CPUs to count
    args.server_cpus, args.client_cpus = split_cpus(args.pin)
    if args.client_cpus:
        pin_process(args.client_cpus)  # before any channel starts gRPC's threads here
    with tempfile.TemporaryDirectory(prefix="rpcscope-bench-") as workdir:
        if args.profile:
            profile(args, workdir)
            return 0
        started = dt.datetime.now(dt.timezone.utc)
        t0 = time.monotonic()
        slots = run(args, workdir)
        wall = time.monotonic() - t0
        info["harness_cpus"] = allowed_cpus()
        micro = run_micro(args, workdir) if args.micro else None
    rows = analyse(slots)
    verdict = verdicts(rows, args.modes, args.seed)
    print_summary(rows, verdict, slots)
    doc = render(args, argv, info, slots, rows, verdict, started, wall, micro)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = keep_forward_section(doc, out.read_text(encoding="utf-8") if out.exists() else "")
    out.write_text(doc, encoding="utf-8")
    log(f"wrote {args.out}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": info,
                    "args": {k: v for k, v in vars(args).items() if k != "json"},
                    "slots": [
                        {
                            "mode": s.mode,
                            "config": s.config,
                            "proc": s.proc + 1,
                            "process": s.process.name if s.process else None,
                            "paired": s.paired,
                            "skipped": s.skipped,
                            "failure": s.failure,
                            "sent": s.sent,
                            "observed": s.observed,
                            "samples": [vars(x) for x in s.samples],
                        }
                        for s in slots
                    ],
                    "rows": [
                        {
                            **vars(r),
                            "cpu_by_proc": {p + 1: v for p, v in r.cpu_by_proc.items()},
                            "extra_by_proc": {p + 1: v for p, v in r.extra_by_proc.items()},
                        }
                        for r in rows
                    ],
                    "verdicts": [vars(x) for x in verdict],
                    "micro": micro,
                },
                indent=2,
                default=lambda o: sorted(o) if isinstance(o, set) else str(o),
            ),
            encoding="utf-8",
        )
    # A missed target is a result to report, not a harness failure: exit 0 either way.
    return 0


if __name__ == "__main__":
    sys.exit(main())
