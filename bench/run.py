"""Overhead benchmark (issue 2 §6): server CPU per call, throughput and latency vs a bare server.

``make bench`` runs this file. The extra CPU of a config is a **paired difference inside one server
process**: ``--procs`` K switch processes per mode (``bench/server.py`` in switch mode) each build
every config at once, and a control command selects which one the next phase runs under.

Why pair inside a process: twin server processes differ by ~15 µs/call sd for their whole life, as
if each drew a lottery ticket at start-up (thread placement, memory layout): three bare sync
servers measured for 30 x 500 calls each had medians of 340.5, 310.7 and 310.7 µs/call; six had
means of 312.7 to 354.8 µs/call, a process effect of ~16 µs/call sd on top of the repetition noise,
as large as the differences this benchmark is after. With a process per config, "config minus
bare" compared two lottery tickets (a no-op interceptor that costs < 1 µs per call in-process once
came out at +21 µs), and the previous cure, K processes per config, only shrinks the lottery by
√K. A config phase minus a bare phase *of the same process* does not draw at all: the lottery
cancels. A first run of the prototype (4 processes x 8 repetitions x 500 calls, sync) gave
py-grpc-prometheus +44.0 µs/call with per-process values 39 to 49, far tighter than before.

``grpcio-observability`` cannot be switched (a process-global plugin registered before the server
exists, instrumenting every call): it runs in K processes of its own, compared with the bare
phases of the switch processes, i.e. *across* processes, lottery included (its extra, +55 to
+135 µs/call in the runs so far, is well beyond the lottery, and the verdict does not use it).

Method, one mode after the other (a mode's servers are stopped before the next mode's start):

1. start K switch processes (every switchable config) and K processes per unswitchable config;
   warm every (process, config) up;
2. every repetition runs one phase of ``--calls`` calls on every (process, config), in an order
   shuffled afresh per repetition (seeded by ``--seed``, so reruns repeat it): slow patches of
   the machine and any carry-over from the phase before fall on all configs alike;
3. per switch process and config: extra = the median over repetitions of (the config's phase
   minus bare's phase of the same repetition); estimate = median over the K processes of those
   extras, bracket = their min .. max. Throughput and latency: per-process medians over
   repetitions, ratios (deltas) vs bare, then the median over processes.

Why pair phases of one repetition, not medians: the phases of a repetition run within seconds of
each other, and in a run of 6 processes x 30 repetitions (sync, 9d914a1) a config's phase and
bare's phase of the same repetition were correlated (0.3 to 0.4): whatever drifts slower than a
repetition cancels in their difference, and not in the difference of two medians.

Why pin (``--no-pin`` turns it off): on this 2-CPU machine the harness is the client, and
unpinned, where the scheduler puts the client's and the server's threads for a phase moves that
phase's cost: bare sync cost 367 µs/call with both free, 258 with only the client pinned and 295
with the server on one CPU and the client on the other. The servers therefore run on the last
CPU and the harness on the others, which is also a deployment's shape: the callers are not on
the server's CPUs. In runs of the same code (sync, 6 processes x 30 repetitions, rpcscope-full
and py-grpc-prometheus), the spread of the per-process extras was 15 and 28 µs/call unpinned
and 7 to 12 pinned (two runs); aio was not quieter pinned (one run). What pinning the server to
one CPU hides is the cost of rpcscope's background batch running on another CPU than the calls
it reads: measured in-process (calls made on one CPU, then their batch drained on the same or
the other CPU, alternating, 57 rounds of 300), about 0.5 µs per call for rpcscope-full.

    .venv/bin/python bench/run.py                          # defaults: about 11 minutes
    .venv/bin/python bench/run.py --reps 60                # tighter numbers, ~18 minutes
    .venv/bin/python bench/run.py --profile rpcscope-full  # where does the time go?
    .venv/bin/python bench/run.py --smoke --out /tmp/b.md  # seconds; proves the harness works
    .venv/bin/python bench/run.py --no-pin                 # let the scheduler place everything

Writes ``docs/benchmarks.md`` (``--out``) and, with ``--json``, the raw per-phase numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import select
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
from client import Phase, aio_phase, percentile, sync_phase
from server import (
    CONFIGS,
    DESCRIPTIONS,
    DIAGNOSTIC_CONFIGS,
    FULL_METHOD,
    UNSWITCHABLE,
    allowed_cpus,
    format_cpus,
    parse_cpus,
    pin_process,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVER = HERE / "server.py"
MICRO = HERE / "micro.py"
MODES = ("sync", "aio")
BARE = "bare"
TARGET_CONFIG = "rpcscope-full"
REFERENCE_CONFIG = "py-grpc-prometheus"
#: Table order: bare, then the diagnostic floors, then the configs.
ORDER = (BARE, *DIAGNOSTIC_CONFIGS, *CONFIGS[1:])
#: Import name that must be present for a config to run; missing → the config is skipped.
REQUIRES = {
    "py-grpc-prometheus": "py_grpc_prometheus",
    "otel-grpc": "opentelemetry.instrumentation.grpc",
    "grpcio-observability": "grpc_observability",
}
VERSIONS_OF = (
    "grpcio",
    "protobuf",
    "prometheus-client",
    "opentelemetry-sdk",
    "py-grpc-prometheus",
    "opentelemetry-instrumentation-grpc",
    "grpcio-observability",
    "rpcscope",
)
#: Filename regex of each config's own code, to list it apart in ``--profile`` output.
OWN_CODE = {
    "rpcscope-metrics": r"(collector|exporters|rpcscope)/",
    "rpcscope-metrics-log": r"(collector|exporters|rpcscope)/",
    "rpcscope-full": r"(collector|exporters|rpcscope)/",
    "py-grpc-prometheus": r"(py_grpc_prometheus|prometheus_client)/",
    "otel-grpc": r"opentelemetry/",
}
#: Per server, counted from when the harness starts waiting; a mode starts its servers at once.
START_TIMEOUT_S = 120.0
#: Defaults sized for ``make bench`` (7 configs, both modes) to take about 11 minutes on 2 CPUs.
#: Measured 2026-11-26 (5 switch + 5 grpcio-observability processes per mode, 4 x 500 calls, idle
#: machine): a phase of 500 calls takes ~0.24 s sync and ~0.18 s aio, so ~9 + ~6 s per repetition
#: over both modes (35 phases each), ~15-16 s with some load; on top come ~130 s of start-up,
#: warm-up, grpcio-observability's aio hangs (~12 s per hung process; most of its 5 hang) and the
#: micro-benchmark. 32 repetitions: ~510 + ~130 s. More repetitions rather than more processes:
#: pairing inside a process cancels the process lottery, so what is left to average is the phase
#: noise (sd per phase of 500 calls: ~8-30 µs/call sync, ~40 aio).
DEFAULT_PROCS = 5
DEFAULT_CALLS = 500
DEFAULT_REPS = 32
CONTROL_TIMEOUT_S = 30.0


# --- server processes ------------------------------------------------------------------------


class ServerError(RuntimeError):
    pass


class ServerProc:
    """A ``bench/server.py`` child (one or several configs) and its stdin/stdout control channel."""

    def __init__(
        self,
        configs: list[str],
        mode: str,
        workdir: str,
        name: str,
        profile: str | None = None,
        switch: bool = True,
        wrapper: list[str] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.configs, self.mode = configs, mode
        self.active: str | None = None
        # A log dir per process (and, inside, per config): no two configs share an access log.
        log_dir = os.path.join(workdir, name)
        os.makedirs(log_dir, exist_ok=True)
        self.stderr_path = os.path.join(workdir, f"{name}.stderr")
        cmd = [
            *(wrapper or []),
            sys.executable,
            str(SERVER),
            "--config",
            ",".join(configs),
            "--mode",
            mode,
            "--log-dir",
            log_dir,
        ]
        if switch:
            cmd.append("--switch")
        if profile:
            cmd += ["--profile", profile]
        cmd += extra_args or []
        self._stderr: TextIO = open(self.stderr_path, "w")  # noqa: SIM115 - lives with the child
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
        self.port = 0

    def wait_ready(self) -> None:
        line = self._readline(START_TIMEOUT_S)
        if not line.startswith("READY "):
            raise ServerError(f"did not start: {line or self.stderr_tail()}")
        self.port = int(line.split()[1])

    def _ask(self, command: str, answer: str, timeout: float = CONTROL_TIMEOUT_S) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self._readline(timeout)
        if not line.startswith(answer):
            raise ServerError(f"bad control answer {line!r}: {self.stderr_tail()}")
        return line[len(answer) :]

    def use(self, config: str) -> None:
        """Make ``config`` the one the next calls run under (a no-op if it already is)."""
        if self.active != config:
            self._ask(f"use {config}", f"OK {config}")
            self.active = config

    def cpu_ns(self, timeout: float = CONTROL_TIMEOUT_S) -> int:
        """Flush the active config's telemetry buffers, then read the process CPU (all threads)."""
        return int(self._ask("sample", "CPU ", timeout))

    def observed(self) -> dict[str, dict[str, int]]:
        """What each config's instrumentation recorded so far, by config (``stats``)."""
        return dict(json.loads(self._ask("stats", "STATS ")))

    def cpus(self) -> set[int]:
        """The CPUs any of the server's threads may run on now (``cpus``)."""
        return parse_cpus(self._ask("cpus", "CPUS "))

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise ServerError(f"no answer on the control channel within {timeout:.0f}s (hung)")
        return self.proc.stdout.readline().strip()

    def stderr_tail(self, lines: int = 5) -> str:
        self._stderr.flush()
        text = Path(self.stderr_path).read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or f"exit code {self.proc.poll()}"

    def request_stop(self) -> None:
        """Ask the child to flush and exit, without waiting (see ``stop``)."""
        if self.proc.poll() is None and self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass

    def stop(self, timeout: float = 10.0) -> None:
        """Ask politely; kill only this child if it hangs (grpcio-observability can, #38500)."""
        if self.proc.poll() is None:
            self.request_stop()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


# --- clients ---------------------------------------------------------------------------------


class Clients:
    """One channel per server, created once: sync channels for sync, aio channels for aio."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.loop = asyncio.new_event_loop()
        self._sync: dict[int, grpc.Channel] = {}
        self._aio: dict[int, Any] = {}

    def run(self, server: ServerProc, calls: int) -> Phase:
        target = f"127.0.0.1:{server.port}"
        if server.mode == "sync":
            channel = self._sync.get(server.port)
            if channel is None:
                channel = self._sync[server.port] = grpc.insecure_channel(target)
            return sync_phase(channel, FULL_METHOD, calls)
        return self.loop.run_until_complete(self._run_aio(target, server.port, calls))

    async def _run_aio(self, target: str, port: int, calls: int) -> Phase:
        channel = self._aio.get(port)
        if channel is None:
            channel = self._aio[port] = grpc.aio.insecure_channel(target)
        return await aio_phase(channel, FULL_METHOD, calls, self.concurrency)

    def close(self) -> None:
        for channel in self._sync.values():
            channel.close()
        for achannel in self._aio.values():
            self.loop.run_until_complete(achannel.close())
        self.loop.close()


# --- measurement -----------------------------------------------------------------------------


#: Configs whose servers record nothing of their own: the sanity check has nothing to compare.
RECORDS_NOTHING = (BARE, *DIAGNOSTIC_CONFIGS)


@dataclass
class Sample:
    """One phase: one repetition of one config on one server process."""

    rep: int
    calls: int
    cpu_us_per_call: float
    calls_per_s: float
    p50_us: float
    p99_us: float


@dataclass
class Process:
    """One server process: a switch process (``paired``: every switchable config of the mode, bare
    included) or a process of its own for an unswitchable config (``own``)."""

    mode: str
    kind: str  # "paired" or "own"
    index: int  # 0..K-1 within its kind (and, for "own", its config)
    configs: list[str]
    server: ServerProc | None = None
    skipped: str | None = None  # did not start
    failure: str | None = None  # stopped answering part-way: every config of it is retired
    cpus: set[int] | None = None  # where its threads could run, read back at the end

    @property
    def name(self) -> str:
        what = "switch" if self.kind == "paired" else "-".join(self.configs)
        return f"{self.mode}-{what}-p{self.index + 1}"


@dataclass
class Slot:
    """One (mode, config, process): the phases of one config in one server process."""

    mode: str
    config: str
    proc: int  # the process's index; for a paired config, bare's slot of the same index pairs it
    process: Process | None = None  # None: the config was skipped before any process existed
    samples: list[Sample] = field(default_factory=list)
    skipped: str | None = None  # why it did not run (not installed, failed to start)
    failure: str | None = None  # why it stopped part-way (stall, error)
    sent: int = 0  # successful calls under this config, warm-up included
    observed: dict[str, int] = field(default_factory=dict)

    @property
    def paired(self) -> bool:
        return self.config not in UNSWITCHABLE

    @property
    def server(self) -> ServerProc | None:
        return self.process.server if self.process is not None else None

    @property
    def name(self) -> str:
        return f"{self.mode}-{self.config}-p{self.proc + 1}"

    @property
    def label(self) -> str:
        return f"{self.mode}/{self.config}#{self.proc + 1}"

    @property
    def live(self) -> bool:
        return self.server is not None and self.skipped is None and self.failure is None

    def call(self, clients: Clients, calls: int) -> Phase:
        assert self.server is not None
        self.server.use(self.config)
        phase = clients.run(self.server, calls)
        self.sent += len(phase.latencies_ns)
        return phase

    def sane(self) -> bool:
        """Did the instrumentation record every call we made (and log/trace each, where on)?"""
        if self.config in RECORDS_NOTHING:
            return True
        return bool(self.observed) and all(v == self.sent for v in self.observed.values())


def measure(slot: Slot, clients: Clients, calls: int, rep: int) -> None:
    """One phase. A failed call fails the slot; a server that then stops answering raises."""
    server = slot.server
    assert server is not None
    server.use(slot.config)  # before the first CPU reading: switching is not part of the phase
    before = server.cpu_ns()
    phase = slot.call(clients, calls)
    if phase.error is not None:
        slot.failure = f"rep {rep + 1}: {phase.error}"
        try:
            server.cpu_ns(timeout=5.0)
        except ServerError as exc:
            raise ServerError(
                f"{slot.failure}; the server process then stopped answering its control "
                "thread too (hung)"
            ) from exc
        return
    after = server.cpu_ns()
    latencies = sorted(phase.latencies_ns)
    slot.samples.append(
        Sample(
            rep=rep,
            calls=len(latencies),
            cpu_us_per_call=(after - before) / 1000 / len(latencies),
            calls_per_s=len(latencies) / (phase.elapsed_ns / 1e9),
            p50_us=percentile(latencies, 0.50) / 1000,
            p99_us=percentile(latencies, 0.99) / 1000,
        )
    )


def plan(mode: str, args: argparse.Namespace, profiling: bool) -> tuple[list[Process], list[Slot]]:
    """The processes of one mode and a slot per (config, process); uninstalled configs skipped."""
    slots: list[Slot] = []
    available = []
    for config in args.configs:
        module = REQUIRES.get(config)
        if module is not None and importlib.util.find_spec(module.split(".")[0]) is None:
            why = f"not installed (`import {module}` fails)"
            slots += [Slot(mode, config, k, skipped=why) for k in range(args.procs)]
        else:
            available.append(config)
    processes = []
    if profiling:  # one config, alone, as a user would run it: no switch in the profile
        processes = [Process(mode, "own", 0, [c]) for c in available]
    else:
        switchable = [c for c in available if c not in UNSWITCHABLE]
        if switchable:
            processes += [Process(mode, "paired", k, switchable) for k in range(args.procs)]
        for config in available:
            if config in UNSWITCHABLE:
                processes += [Process(mode, "own", k, [config]) for k in range(args.procs)]
    for process in processes:
        slots += [Slot(mode, config, process.index, process) for config in process.configs]
    return processes, slots


def start_servers(
    processes: list[Process],
    slots: list[Slot],
    workdir: str,
    profile_dir: str | None,
    server_cpus: set[int] | None,
) -> None:
    pin = ["--cpus", format_cpus(server_cpus)] if server_cpus else []
    for process in processes:
        profile = os.path.join(profile_dir, f"{process.name}.prof") if profile_dir else None
        process.server = ServerProc(
            process.configs,
            process.mode,
            workdir,
            process.name,
            profile,
            switch=profile_dir is None,
            extra_args=pin,
        )
    for process in processes:
        assert process.server is not None
        try:
            process.server.wait_ready()
        except ServerError as exc:
            process.skipped = str(exc)
            process.server.stop()
            process.server = None
            for slot in slots:
                if slot.process is process:
                    slot.skipped = process.skipped


def retire_process(process: Process, slots: list[Slot], why: str) -> None:
    """Stop a server that failed now, not at the end of the mode: a hung process may keep
    burning CPU, and several may hang (grpcio-observability on aio does), which would tax every
    phase measured after it. Every config of the process is retired with it.
    """
    log(f"{process.name} failed: {why}; stopping it")
    process.failure = why
    for slot in slots:
        if slot.process is process and slot.failure is None:
            slot.failure = why
    if process.server is not None:
        process.server.stop(timeout=2.0)


def stop_servers(processes: list[Process], timeout: float = 10.0) -> None:
    """Ask every server to quit first, then wait: they flush and shut down in parallel, and
    hung ones (grpcio-observability, see ``ServerProc.stop``) share one deadline, not 10 s each.
    """
    servers = [p.server for p in processes if p.server is not None]
    for server in servers:
        server.request_stop()
    deadline = time.monotonic() + timeout
    for server in servers:
        server.stop(max(0.1, deadline - time.monotonic()))


def run_mode(
    mode: str, args: argparse.Namespace, workdir: str, profile_dir: str | None
) -> list[Slot]:
    """Start one mode's servers, warm every (process, config) up, measure, stop them."""
    processes, slots = plan(mode, args, profiling=profile_dir is not None)
    began = time.monotonic()
    start_servers(processes, slots, workdir, profile_dir, args.server_cpus)
    up = [p for p in processes if p.server is not None]
    log(f"{mode}: {len(up)} server processes up in {time.monotonic() - began:.1f}s")
    clients = Clients(args.concurrency)
    # Seeded per mode, so a rerun with the same --seed visits in the same order.
    rng = random.Random(f"{args.seed}/{mode}")

    def visit(slot: Slot, rep: int | None) -> None:
        process = slot.process
        assert process is not None
        try:
            if rep is None:
                phase = slot.call(clients, args.warmup)
                if phase.error is not None:
                    slot.failure = f"warm-up: {phase.error}"
            else:
                measure(slot, clients, args.calls, rep)
        except ServerError as exc:
            # One process misbehaving must not cost the others their results.
            retire_process(
                process,
                slots,
                f"{'warm-up' if rep is None else f'rep {rep + 1}'}: server control: {exc}",
            )
        if slot.failure is not None and process.failure is None:
            log(f"{slot.label} failed: {slot.failure}")
            if not slot.paired or len(process.configs) == 1 or slot.config == BARE:
                retire_process(process, slots, slot.failure)

    try:
        began = time.monotonic()
        for slot in slots:
            if slot.live:
                visit(slot, None)
        log(
            f"{mode}: warm-up ({args.warmup} calls per process and config) in "
            f"{time.monotonic() - began:.1f}s"
        )
        for rep in range(args.reps):
            # A fresh shuffle of every (process, config) per repetition: see the module docstring.
            order = [s for s in slots if s.live]
            rng.shuffle(order)
            began = time.monotonic()
            for slot in order:
                if slot.live:  # a process retired earlier in this repetition is skipped
                    visit(slot, rep)
            log(
                f"{mode}: rep {rep + 1}/{args.reps} ({len(order)} phases) done in "
                f"{time.monotonic() - began:.1f}s"
            )
        for process in processes:
            if process.server is None or process.failure is not None:
                continue
            try:
                observed = process.server.observed()
                process.cpus = process.server.cpus()
            except ServerError as exc:
                retire_process(process, slots, f"stats: {exc}")
                continue
            for slot in slots:
                if slot.process is process:
                    slot.observed = observed.get(slot.config, {})
    finally:
        began = time.monotonic()
        clients.close()
        stop_servers(processes)
        log(f"{mode}: servers stopped in {time.monotonic() - began:.1f}s")
    return slots


def run(args: argparse.Namespace, workdir: str, profile_dir: str | None = None) -> list[Slot]:
    slots: list[Slot] = []
    for mode in args.modes:
        slots += run_mode(mode, args, workdir, profile_dir)
    return slots


# --- analysis --------------------------------------------------------------------------------

med = statistics.median


@dataclass
class ProcStats:
    """Medians over the repetitions of one config in one server process."""

    proc: int
    reps: int
    cpu_us: float
    calls_per_s: float
    p50_us: float
    p99_us: float
    cpu_by_rep: dict[int, float] = field(default_factory=dict)  # repetition -> CPU µs/call


def proc_stats(slot: Slot) -> ProcStats | None:
    """A slot counts only if it completed every repetition: a failure makes it atypical."""
    if slot.failure is not None or slot.skipped is not None or not slot.samples:
        return None
    x = slot.samples
    return ProcStats(
        proc=slot.proc,
        reps=len(x),
        cpu_us=med(s.cpu_us_per_call for s in x),
        calls_per_s=med(s.calls_per_s for s in x),
        p50_us=med(s.p50_us for s in x),
        p99_us=med(s.p99_us for s in x),
        cpu_by_rep={s.rep: s.cpu_us_per_call for s in x},
    )


@dataclass
class Row:
    """One (mode, config): medians over its processes of per-process comparisons with bare."""

    mode: str
    config: str
    paired: bool  # True: compared with bare inside each process; False: with bare's processes
    procs: int  # processes that completed every repetition (and, if paired, bare too)
    cpu_us: float  # median over processes of the per-process median CPU µs/call
    extra_cpu_us: float  # median over processes of (config - bare); bare: 0
    extra_cpu_min: float  # the lowest per-process extra (bare: lowest median minus bare's median)
    extra_cpu_max: float  # ... and the highest
    calls_per_s: float
    throughput_ratio: float  # median over processes of calls/s vs bare
    p50_us: float
    p50_delta_us: float
    p99_us: float
    p99_ratio: float
    cpu_by_proc: dict[int, float]  # process number -> its median CPU µs/call
    extra_by_proc: dict[int, float]  # process number -> its extra over bare (bare: 0)


def analyse(slots: list[Slot]) -> list[Row]:
    stats: dict[tuple[str, str], dict[int, ProcStats]] = {}
    for slot in slots:
        ps = proc_stats(slot)
        if ps is not None:
            stats.setdefault((slot.mode, slot.config), {})[slot.proc] = ps

    rows = []
    for (mode, config), group in stats.items():
        bare = stats.get((mode, BARE))
        if not bare:
            continue
        # The reference of each process: bare in the same process when the config could share
        # it; else (grpcio-observability) bare's medians over the switch processes, i.e. a
        # comparison across processes, process lottery included.
        ref: dict[int, ProcStats]
        paired = config not in UNSWITCHABLE
        if paired:
            ref = {k: bare[k] for k in group if k in bare}
        else:
            centre = ProcStats(
                -1,
                0,
                med(b.cpu_us for b in bare.values()),
                med(b.calls_per_s for b in bare.values()),
                med(b.p50_us for b in bare.values()),
                med(b.p99_us for b in bare.values()),
            )
            ref = dict.fromkeys(group, centre)
        used = {k: v for k, v in group.items() if k in ref}
        if not used:
            continue
        if paired:
            # The median of the differences between the config's phase and bare's phase of the
            # same repetition, not the difference of the two medians: phases of one repetition
            # run within seconds of each other, so whatever drifts slower than that (the
            # machine's other load, the process's state) cancels in each difference.
            extra = {
                k: float(med(v.cpu_by_rep[r] - ref[k].cpu_by_rep[r]
                             for r in v.cpu_by_rep.keys() & ref[k].cpu_by_rep.keys()))
                for k, v in used.items()
            }
        else:
            extra = {k: v.cpu_us - ref[k].cpu_us for k, v in used.items()}
        if config == BARE:
            mid = med(v.cpu_us for v in used.values())
            low = min(v.cpu_us for v in used.values()) - mid
            high = max(v.cpu_us for v in used.values()) - mid
        else:
            low, high = min(extra.values()), max(extra.values())
        rows.append(
            Row(
                mode=mode,
                config=config,
                paired=paired,
                procs=len(used),
                cpu_us=float(med(v.cpu_us for v in used.values())),
                extra_cpu_us=float(med(extra.values())),
                extra_cpu_min=low,
                extra_cpu_max=high,
                calls_per_s=float(med(v.calls_per_s for v in used.values())),
                throughput_ratio=float(
                    med(v.calls_per_s / ref[k].calls_per_s for k, v in used.items())
                ),
                p50_us=float(med(v.p50_us for v in used.values())),
                p50_delta_us=float(med(v.p50_us - ref[k].p50_us for k, v in used.items())),
                p99_us=float(med(v.p99_us for v in used.values())),
                p99_ratio=float(med(v.p99_us / ref[k].p99_us for k, v in used.items())),
                cpu_by_proc={k: v.cpu_us for k, v in used.items()},
                extra_by_proc=extra,
            )
        )
    rows.sort(key=lambda r: (MODES.index(r.mode), ORDER.index(r.config)))
    return rows


@dataclass
class Verdict:
    mode: str
    status: str  # PASS, FAIL, INCONCLUSIVE or N/A
    text: str


BOOTSTRAP_ROUNDS = 2000


def bootstrap_met(full: list[float], prom: list[float], seed: str) -> float:
    """Share of resamplings (with replacement) of the processes that meet the target.

    ``full[i]`` and ``prom[i]`` are the extras of the same process, so a process is drawn with
    both (a paired bootstrap). Crude with K ~ 5 processes, but it says how firm the verdict is.
    """
    rng = random.Random(seed)
    met = 0
    n = len(full)
    for _ in range(BOOTSTRAP_ROUNDS):
        pick = [rng.randrange(n) for _ in range(n)]
        f = med(full[i] for i in pick)
        p = med(prom[i] for i in pick)
        met += p > 0 and f <= p / 2
    return met / BOOTSTRAP_ROUNDS


def verdicts(rows: list[Row], modes: list[str], seed: int = 0) -> list[Verdict]:
    """The issue's target: rpcscope full's extra CPU <= half py-grpc-prometheus's, per mode."""
    out = []
    for mode in modes:
        by = {r.config: r for r in rows if r.mode == mode}
        full, prom = by.get(TARGET_CONFIG), by.get(REFERENCE_CONFIG)
        if full is None or prom is None:
            out.append(Verdict(mode, "N/A", f"{TARGET_CONFIG} or {REFERENCE_CONFIG} did not run"))
            continue
        if prom.extra_cpu_us <= 0:
            # Noise swallowed the reference: there is no limit to compare with.
            out.append(Verdict(mode, "INCONCLUSIVE", "py-grpc-prometheus showed no extra CPU"))
            continue
        limit = prom.extra_cpu_us / 2
        both = sorted(set(full.extra_by_proc) & set(prom.extra_by_proc))
        f_extra = [full.extra_by_proc[k] for k in both]
        p_extra = [prom.extra_by_proc[k] for k in both]
        within = sum(f <= p / 2 for f, p in zip(f_extra, p_extra, strict=True))
        share = bootstrap_met(f_extra, p_extra, f"{seed}/{mode}") if both else 0.0
        status = "PASS" if full.extra_cpu_us <= limit else "FAIL"
        out.append(
            Verdict(
                mode,
                status,
                f"rpcscope full {fmt_signed(full.extra_cpu_us)} µs/call "
                f"[{fmt_signed(full.extra_cpu_min)} .. {fmt_signed(full.extra_cpu_max)}] vs "
                f"py-grpc-prometheus {fmt_signed(prom.extra_cpu_us)} "
                f"[{fmt_signed(prom.extra_cpu_min)} .. {fmt_signed(prom.extra_cpu_max)}] "
                f"(limit +{limit:.1f}); ratio {full.extra_cpu_us / prom.extra_cpu_us:.2f}; "
                f"met inside {within}/{len(both)} processes on their own (each process's "
                "rpcscope-full extra vs half its own py-grpc-prometheus extra); met in "
                f"{share:.0%} of {BOOTSTRAP_ROUNDS} bootstrap resamplings of the processes",
            )
        )
    return out


# --- report ----------------------------------------------------------------------------------


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONS_OF:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "loadavg_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions(),
    }


def install_notes(v: dict[str, str]) -> list[str]:
    """What a reader needs to reproduce the optional configs (grpcio-observability pins grpcio)."""
    notes = []
    obs, core = v.get("grpcio-observability", "not installed"), v.get("grpcio", "")
    if obs == "not installed":
        notes.append(
            "grpcio-observability is not installed, so it was skipped. `pip install "
            "grpcio-observability` pins `grpcio==` its own version (it would replace the "
            "installed grpcio), which is why it is not in the `bench` extra."
        )
    elif obs != core:
        notes.append(
            f"grpcio-observability {obs} requires exactly grpcio=={obs}; this venv has grpcio "
            f"{core}, so it was installed with `pip install --no-deps "
            f"grpcio-observability=={obs}` (a version mismatch: the sanity check above shows "
            "whether it still recorded every call). It is not in the `bench` extra because of "
            "that exact pin."
        )
    return notes


def command_line(argv: list[str]) -> str:
    if not argv:
        return "make bench  # = .venv/bin/python bench/run.py"
    return ".venv/bin/python bench/run.py " + shlex.join(argv)


def pinning_text(args: argparse.Namespace, info: dict[str, Any], slots: list[Slot]) -> str:
    """Where servers and clients ran, as read back from them (see "Why pin" in the docstring)."""
    if not args.server_cpus:
        return (
            "not pinned (`--no-pin`, or a single CPU): the scheduler placed the servers' and "
            "the harness's threads"
        )
    want = args.server_cpus
    seen = {s.process.name: s.process.cpus for s in slots if s.process and s.process.cpus}
    strays = [f"{name} on {format_cpus(cpus)}" for name, cpus in seen.items() if cpus != want]
    harness = info.get("harness_cpus")
    text = (
        f"every server process pinned to CPU {format_cpus(want)}, the harness (the clients) to "
        f"CPU {format_cpus(args.client_cpus)}; read back at the end of each mode from every "
        f"thread: {len(seen) - len(strays)} of {len(seen)} server processes on CPU "
        f"{format_cpus(want)} only"
    )
    if strays:
        text += f" (**not pinned as asked:** {', '.join(strays)})"
    if harness is not None:
        ok = harness == args.client_cpus
        text += (
            f", the harness on CPU {format_cpus(harness)}"
            + ("" if ok else " (**not pinned as asked**)")
        )
    return text + " (why: `bench/run.py`'s docstring)"


def md_cell(text: str) -> str:
    """One line, pipes escaped: safe inside a markdown table cell (stderr tails are neither)."""
    return " ".join(text.split()).replace("|", "\\|")


def fmt_signed(value: float, digits: int = 1) -> str:
    return f"{value:+.{digits}f}"


def group_problems(slots: list[Slot]) -> dict[tuple[str, str], list[Slot]]:
    """Processes that were skipped or failed, by (mode, config)."""
    out: dict[tuple[str, str], list[Slot]] = {}
    for slot in slots:
        if slot.skipped or slot.failure:
            out.setdefault((slot.mode, slot.config), []).append(slot)
    return out


def describe_problems(bad: list[Slot], procs: int) -> str:
    """'skipped in all 6 processes: reason' or 'failed in #2 (reason); skipped in #5 (reason)'."""
    reasons = {(("skipped" if s.skipped else "failed"), s.skipped or s.failure or "") for s in bad}
    if len(bad) == procs and len(reasons) == 1:
        state, why = next(iter(reasons))
        return f"{state} in all {procs} processes: {why}"
    parts = []
    for s in bad:
        state = "skipped" if s.skipped else "failed"
        parts.append(f"{state} in #{s.proc + 1} ({s.skipped or s.failure})")
    return "; ".join(parts)


def process_effect(slots: list[Slot], mode: str) -> str:
    """Bare's per-process means in ``mode``, split into repetition noise and a process effect.

    One-way analysis of variance: the variance of the K process means, minus what repetition
    noise alone gives a mean of R phases (within-process variance / R), leaves the variance of
    the process effect.
    """
    groups = [
        [x.cpu_us_per_call for x in s.samples]
        for s in slots
        if s.mode == mode and s.config == BARE and proc_stats(s) is not None
    ]
    reps = min((len(g) for g in groups), default=0)
    if len(groups) < 2 or reps < 2:
        return ""
    means = sorted(statistics.fmean(g) for g in groups)
    within = statistics.fmean(statistics.variance(g) for g in groups)
    between = statistics.variance(means)
    effect = max(0.0, between - within / reps) ** 0.5
    return (
        f"{mode}: means {means[0]:.1f} to {means[-1]:.1f} µs/call, sd {between**0.5:.1f}, where "
        f"repetition noise alone would give {(within / reps) ** 0.5:.1f}: a process effect of "
        f"about {effect:.1f} µs/call sd"
    )


def own_configs(args: argparse.Namespace) -> list[str]:
    return [c for c in args.configs if c in UNSWITCHABLE]


def render(
    args: argparse.Namespace,
    argv: list[str],
    info: dict[str, Any],
    slots: list[Slot],
    rows: list[Row],
    verdict: list[Verdict],
    started: dt.datetime,
    wall_s: float,
    micro: dict[str, Any] | None = None,
) -> str:
    v = info["versions"]
    k = args.procs
    own = own_configs(args)
    own_text = (
        f", plus {k} processes of its own for {', '.join(own)} (it cannot be switched)"
        if own
        else ""
    )
    out = [
        "# Benchmarks: instrumentation overhead per unary call",
        "",
        "<!-- Generated by bench/run.py; do not edit by hand: rerun `make bench`. -->",
        "",
        f"- **Command:** `{command_line(argv)}`",
        f"- **Date:** {started:%Y-%m-%d %H:%M} UTC, {wall_s:.0f} s wall clock (start-up and "
        "warm-up included)",
        f"- **CPUs:** {pinning_text(args, info, slots)}",
        f"- **Machine:** {info['nproc']} CPUs ({info['cpu']}), 1-minute load average "
        f"{info['loadavg_at_start']:.2f} at start and {os.getloadavg()[0]:.2f} at the end "
        f"(the harness itself accounts for about 2); {info['platform']}",
        f"- **Python** {info['python']}; "
        + ", ".join(f"{name} {version}" for name, version in v.items()),
        f"- **Load:** per mode, {k} switch server processes, each hosting bare and every "
        "switchable config"
        f"{own_text}; {args.reps} repetitions x {args.calls} calls per phase and (process, "
        f"config) (after {args.warmup} warm-up calls each); sync = 1 call in flight, aio = "
        f"{args.concurrency} in flight; {len(b'x' * 32)}-byte unary echo carrying a "
        f"`traceparent`; visiting order shuffled per repetition with seed {args.seed}.",
        "",
        "## Target",
        "",
        "Issue 2 §6: *rpcscope full costs at most half of py-grpc-prometheus's extra CPU per "
        "call*, while doing metrics, logs and trace context together.",
        "",
    ]
    for item in verdict:
        out.append(f"- **{item.mode}: {item.status}** — {item.text}")
    out += [
        "",
        f"The verdict compares the estimates below (median over {k} processes of each "
        "process's own config-minus-bare difference). The brackets are the range of those "
        "per-process differences; the process count says in how many processes rpcscope-full's "
        "extra was at most half of py-grpc-prometheus's extra *in the same process*; the "
        "bootstrap share resamples the processes (each with both of its differences; crude "
        f"with {k} processes): a share far from both 0% and 100% means the verdict is within "
        "the noise.",
        "",
        "## Results",
        "",
        "Server CPU is user + system time of the server process (all threads, including gRPC "
        "core, the access-log writer and span exporters), read with `time.process_time_ns()` "
        "before and after each phase with the active config's telemetry buffers flushed at "
        "both ends, divided by the calls.",
        "",
        "**Why configs are compared inside one process.** Twin server processes of one config "
        "do not cost the same: each keeps, for its whole life, a CPU cost per call drawn at "
        "start-up (thread placement, memory layout, ...), and the spread between twins is as "
        "large as the differences this benchmark is after.",
    ]
    lottery = [process_effect(slots, mode) for mode in args.modes]
    if any(lottery):
        out[-1] += (
            " In this run, bare's phases in the switch processes (identical but for that "
            "draw): " + "; ".join(x for x in lottery if x) + "."
        )
    out[-1] += (
        ' With one process per config, "extra CPU over bare" compared two such draws (a '
        "no-op interceptor, < 1 µs per call in-process, once came out at +21 µs/call), and "
        "running K processes per config only shrank the draw by √K. So each server process "
        "now builds every config at once behind one *switch* interceptor, and the harness "
        "selects the config before each phase: the extra CPU of a config is a difference "
        "between two phases of the same process, where the draw cancels. (The prototype, 4 "
        "processes x 8 repetitions x 500 calls, sync, put py-grpc-prometheus at +44.0 "
        "µs/call with per-process values from 39 to 49.)"
    )
    out += [
        "",
        f"**How the numbers are made.** Modes run one after the other. Per mode, {k} switch "
        "processes are started, each hosting bare and every switchable config (each with its "
        "own access-log file, and none installing a global OTel provider: the server checks "
        "that), and every (process, config) is warmed up. Each repetition then runs one phase "
        "of every (process, config), in an order shuffled afresh (seeded), so slow patches of "
        "the machine land on all configs alike. Per process: extra = the median over "
        "repetitions of the config's phase minus bare's phase of the same repetition (phases "
        "of one repetition run seconds apart, so slower drift cancels in each difference). "
        f"Per config: the median over the {k} processes, bracketed by the smallest and "
        "largest per-process extra. Throughput, p50 and p99 are compared with bare the same "
        "way (per-process ratio or difference, then the median over processes); the absolute "
        "columns are medians over processes of per-process medians. A config that failed "
        "part-way in a process is left out there and listed.",
    ]
    if own:
        out += [
            "",
            f"**Not paired: {', '.join(own)}.** It registers a process-global plugin before "
            "the server exists and instruments every call in the process, so it cannot be "
            f"switched off for a bare phase: it runs in {k} processes of its own (behind the "
            "same switch interceptor, so its gRPC pipeline matches the bare phases), and its "
            "extra is its per-process median minus the median of bare's per-process medians, "
            "a comparison *across* processes: the process lottery applies to its row (its "
            "bracket shows it) and the verdict does not use it.",
        ]
    out.append("")
    problems = group_problems(slots)
    for mode in args.modes:
        concurrency = "1 in flight" if mode == "sync" else f"{args.concurrency} in flight"
        out += [
            f"### {mode} server ({concurrency})",
            "",
            "| config | procs | server CPU µs/call | extra CPU µs/call over bare "
            "[per-process min .. max] | calls/s | throughput vs bare | p50 µs | Δp50 µs | "
            "p99 µs | p99 vs bare |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        by_config = {r.config: r for r in rows if r.mode == mode}
        notes = []
        for config in args.configs:
            row, bad = by_config.get(config), problems.get((mode, config))
            if row is None:
                if bad:
                    why = md_cell(describe_problems(bad, k))
                    out.append(f"| {config} | 0 | {why} | | | | | | | |")
                continue
            if bad:
                why = md_cell(describe_problems(bad, k))
                notes.append(
                    f"- `{config}`: {len(bad)} of {k} processes left out of its row, which is "
                    f"over the {row.procs} that completed (survivors, maybe not typical ones): "
                    f"{why}."
                )
            bracket = f"[{fmt_signed(row.extra_cpu_min)} .. {fmt_signed(row.extra_cpu_max)}]"
            if row.config == BARE:
                extra = f"0 {bracket} (lottery: per-process medians vs their median)"
            elif not row.paired:
                extra = f"**{fmt_signed(row.extra_cpu_us)}** {bracket} (not paired)"
            else:
                extra = f"**{fmt_signed(row.extra_cpu_us)}** {bracket}"
            out.append(
                f"| {row.config} | {row.procs} | {row.cpu_us:.1f} | {extra} | "
                f"{row.calls_per_s:.0f} | {row.throughput_ratio:.2f}x | {row.p50_us:.0f} | "
                f"{fmt_signed(row.p50_delta_us, 0)} | {row.p99_us:.0f} | {row.p99_ratio:.2f}x |"
            )
        out += ["", *notes, ""] if notes else [""]
    out += [
        "### Extra CPU µs/call per process",
        "",
        "Columns are the switch processes: each cell is that process's median over its "
        "repetitions of the config's phase minus bare's phase of the same repetition, so a "
        "column is a self-contained comparison and the spread along a row is what the "
        "pairing leaves (phase noise and any real process-to-process difference in a "
        "config's cost). The bare row shows the per-process medians themselves (µs/call): "
        "the lottery the pairing cancels."
        + (
            f" {', '.join(own)}: columns are its own processes, not the switch processes, each "
            "minus bare's median over the switch processes."
            if own
            else ""
        ),
        "",
        "| mode | config | " + " | ".join(f"#{i + 1}" for i in range(k)) + " | median | spread |",
        "|---|---|" + "---:|" * (k + 2),
    ]
    for row in rows:
        values = row.cpu_by_proc if row.config == BARE else row.extra_by_proc
        cells = []
        for i in range(k):
            value = values.get(i)
            cells.append("—" if value is None else f"{value:.1f}")
        centre = row.cpu_us if row.config == BARE else row.extra_cpu_us
        name = row.config if row.paired else f"{row.config} (own processes)"
        out.append(
            f"| {row.mode} | {name} | {' | '.join(cells)} | {centre:.1f} | "
            f"{max(values.values()) - min(values.values()):.1f} |"
        )
    out += [
        "",
        "### Sanity check: did each config instrument every call?",
        "",
        "What each instrumentation itself recorded at the end (its own handled counter, "
        "exported spans, access-log lines, log lines carrying the caller's trace id), against "
        "the calls sent while that config was the active one (warm-up included), per server "
        "process: in a switch process every config counts only its own phases, so this also "
        "proves the switch routed each call to the config it was timed under.",
        "",
        "| mode | config | calls sent per process | recorded by the instrumentation | |",
        "|---|---|---:|---|---|",
    ]
    for mode in args.modes:
        for config in args.configs:
            if config == BARE:
                continue
            group = [s for s in slots if s.mode == mode and s.config == config]
            ran = [s for s in group if not s.skipped]
            if not ran:
                continue
            out.append(f"| {mode} | {config} | {sanity_cells(group, k)} |")
    if micro:
        cpu = micro["cpu_us"]
        base = cpu.get(BARE, 0.0)
        cold = micro.get("cold")
        cold_cpu: dict[str, float] = cold["cpu_us"] if cold else {}
        cold_base = cold_cpu.get(BARE, 0.0)
        cold_bare = (cold or {}).get("every_us", {}).get(BARE) or [cold_base]
        cold_noise = max(cold_bare) - min(cold_bare)
        out += [
            "",
            "### The instrumentation's own Python work, without gRPC (`bench/micro.py`)",
            "",
            "Each server interceptor driven in-process with a fake, lock-free `ServicerContext` "
            "(sync), process CPU per call including background threads (buffers flushed inside "
            f"the timed region), best of {micro['repeats']} x {micro['calls']} calls. Far less "
            "noisy than the end-to-end table, and several times smaller for every "
            "instrumentation alike: in a tight loop the instrumentation's code and data stay in "
            "the CPU caches, which a real server's gRPC machinery evicts between two calls; and "
            "real context accessors take gRPC's locks. The **cold** column "
            "(`bench/micro.py --cold`"
            + (f", best of {cold['repeats']} x {cold['calls']} calls" if cold else "")
            + ") evicts the caches before every call: it touches ~8k objects scattered over "
            f"~10 MB, which itself costs about {cold_base:.0f} µs per call (bare's cold "
            + (
                f"value) and moved by {cold_noise:.1f} µs between bare's repeats, so a cold "
                "difference smaller than that is noise (why some come out below zero). Where a "
                "difference stands well clear of it, "
                if len(cold_bare) > 1
                else "value; one repeat, so no noise estimate). Where a difference is large, "
            )
            + "it shows how a config's cost grows when its code and data are not "
            "in the caches, as in a real server, and why work moved off the request path "
            "into warm batches is worth more than its in-loop cost suggests.",
            "",
            "| config | CPU µs/call | over bare | cold: over bare |",
            "|---|---:|---:|---:|",
        ]
        for config, value in cpu.items():
            cold_cell = (fmt_signed(cold_cpu[config] - cold_base, 2)
                         if config in cold_cpu else "—")
            out.append(
                f"| {config} | {value:.2f} | {fmt_signed(value - base, 2)} | {cold_cell} |"
            )
    out += ["", "## Configs", ""]
    notes = install_notes(info["versions"])
    described = list(args.configs)
    if micro:
        described += [c for c in micro["cpu_us"] if c not in described]
    for config in described:
        out.append(f"- `{config}`: {DESCRIPTIONS[config]}")
    if notes:
        out += ["", "## Install notes", ""] + [f"- {note}" for note in notes]
    out += [
        "",
        "## How to read and reproduce",
        "",
        f"- Per mode, {k} switch processes (`bench/server.py --config bare,...`) host every "
        "config but the unswitchable ones, which get processes of their own; a mode's servers "
        "are all stopped before the next mode's start. Each repetition visits every (process, "
        "config) once, in a freshly shuffled order (`--seed` fixes it).",
        "- The load generator runs in the harness process on the same machine (pinned to "
        "other CPUs than the servers unless `--no-pin`): throughput and latency are end-to-end "
        "on loopback, CPU per call is the server's alone. Pinned, a server's threads share one "
        "CPU, so a cost that only appears when rpcscope's batch thread runs on another CPU "
        "than the calls is not in these numbers (about 0.5 µs per call, see `bench/run.py`).",
        "- The noise band is the bracket in the table. Differences smaller than it are not "
        "results. Now that the lottery cancels, more repetitions (`--reps`) or calls per phase "
        "(`--calls`) narrow it, as do more processes (`--procs`).",
        "- Every config's objects live in each switch process for its whole life (idle "
        "background threads, a larger heap for the garbage collector to walk), so bare there "
        "is bare *beside* the others; that costs all phases of a process alike, and the "
        "switch interceptor itself (one Python call per RPC) is in every phase, bare's too.",
        "- `--profile CONFIG` reruns one config (one process per mode, alone, without the "
        "switch) under cProfile (every thread, timed in per-thread CPU) and prints where its "
        "time goes; profiling inflates the numbers, so it never writes this file. `--configs "
        "noop-interceptor,noop-context-reads,...` adds the diagnostic floors to a run.",
        "",
    ]
    return "\n".join(out)


def sanity_cells(group: list[Slot], procs: int) -> str:
    """'calls sent | recorded | verdict' for one (mode, config), covering all its processes."""
    ran = [s for s in group if not s.skipped]
    checked = [s for s in ran if not s.failure]
    sent = sorted({s.sent for s in ran})
    sent_text = str(sent[0]) if len(sent) == 1 else " / ".join(str(s.sent) for s in ran)
    if group[0].config in RECORDS_NOTHING:
        recorded = "— (records nothing)"
    else:
        seen = {json.dumps(s.observed, sort_keys=True): s.observed for s in checked}
        recorded = (
            ", ".join(f"{key} {value}" for key, value in next(iter(seen.values())).items())
            if len(seen) == 1
            else "; ".join(
                f"#{s.proc + 1}: " + (", ".join(f"{a} {b}" for a, b in s.observed.items()) or "—")
                for s in checked
            )
        ) or "—"
    bad = [s for s in checked if not s.sane()]
    failed = [s for s in ran if s.failure]
    verdict = f"ok in {len(checked) - len(bad)}/{procs} processes"
    if bad:
        verdict = "**MISMATCH** in " + ", ".join(f"#{s.proc + 1}" for s in bad) + "; " + verdict
    if failed:
        verdict += "; failed (unchecked) in " + ", ".join(f"#{s.proc + 1}" for s in failed)
    if group[0].config in RECORDS_NOTHING:
        verdict = f"n/a ({len(checked)}/{procs} processes answered)"
    return f"{sent_text} | {recorded} | {verdict}"


def print_summary(rows: list[Row], verdict: list[Verdict], slots: list[Slot]) -> None:
    for row in rows:
        print(
            f"{row.mode:5} {row.config:22} x{row.procs} cpu {row.cpu_us:7.1f} µs/call  "
            f"extra {row.extra_cpu_us:+7.1f} [{row.extra_cpu_min:+.1f}..{row.extra_cpu_max:+.1f}]"
            f"  {row.calls_per_s:6.0f}/s ({row.throughput_ratio:.2f}x)  "
            f"p50 {row.p50_us:6.0f}  p99 {row.p99_us:6.0f} ({row.p99_ratio:.2f}x)"
        )
        values = row.cpu_by_proc if row.config == BARE else row.extra_by_proc
        print(
            f"{'':5} {'':22} per process ({'CPU' if row.config == BARE else 'extra'}): "
            + " ".join(f"{v:.1f}" for _, v in sorted(values.items()))
        )
    for slot in slots:
        if slot.skipped or slot.failure:
            print(
                f"{slot.label:28} {'skipped' if slot.skipped else 'failed'}: "
                f"{slot.skipped or slot.failure}"
            )
    for slot in slots:
        if slot.observed and not slot.sane():
            print(
                f"{slot.label:28} MISMATCH: sent {slot.sent}, "
                f"instrumentation recorded {slot.observed}"
            )
    for item in verdict:
        print(f"TARGET {item.mode}: {item.status} — {item.text}")


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
    # The lottery cancels inside a process (see the module docstring), so what narrows the result
    # now is repetitions: each (process, config) median needs enough phases to tame the phase
    # noise. Many short phases beat few long ones on a shared machine: a burst of someone else's
    # work then spoils one phase, which the median over repetitions discards.
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
        "last CPU, the harness on the others; see the module docstring)",
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
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(doc, encoding="utf-8")
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
