"""The report: ``docs/benchmarks.md`` (``--out``) and the console summary, from a run's slots,
rows and verdicts, with the machine and package versions they were measured on.

A module of its own so that the report's wording and layout change without touching how the
numbers are made (``bench/harness.py``, ``bench/stats.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
from pathlib import Path
from typing import Any

from harness import BARE, RECORDS_NOTHING, Slot
from server import DESCRIPTIONS, UNSWITCHABLE, format_cpus
from stats import Row, Verdict, fmt_signed, process_effect

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
    """Where servers and clients ran, as read back from them (why pin: docs/performance.md)."""
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
    return text + " (why: `docs/performance.md`)"


def md_cell(text: str) -> str:
    """One line, pipes escaped: safe inside a markdown table cell (stderr tails are neither)."""
    return " ".join(text.split()).replace("|", "\\|")



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
        "than the calls is not in these numbers (about 0.5 µs per call, see "
        "`docs/performance.md`).",
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
