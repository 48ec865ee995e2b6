"""Runs the benchmark: ``bench/server.py`` children under their control channel, the clients
that call them, and one sample per phase, in the shuffled order of every repetition.

A module of its own so that the process plumbing is read and changed apart from the arithmetic
(``bench/stats.py``) and the report (``bench/report.py``), and so that ``bench/instructions.py``
reuses the server control and the clients without the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
from client import Phase, aio_phase, percentile, sync_phase
from server import CONFIGS, DIAGNOSTIC_CONFIGS, FULL_METHOD, UNSWITCHABLE, format_cpus, parse_cpus

HERE = Path(__file__).resolve().parent
SERVER = HERE / "server.py"
MODES = ("sync", "aio")
BARE = "bare"
#: Table order: bare, then the diagnostic floors, then the configs.
ORDER = (BARE, *DIAGNOSTIC_CONFIGS, *CONFIGS[1:])
#: Import name that must be present for a config to run; missing → the config is skipped.
REQUIRES = {
    "py-grpc-prometheus": "py_grpc_prometheus",
    "otel-grpc": "opentelemetry.instrumentation.grpc",
    "grpcio-observability": "grpc_observability",
}
#: Per server, counted from when the harness starts waiting; a mode starts its servers at once.
START_TIMEOUT_S = 120.0
CONTROL_TIMEOUT_S = 30.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
            # A fresh shuffle of every (process, config) per repetition: see docs/performance.md.
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

