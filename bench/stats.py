"""From phases to results: per-process medians, each config's extra over bare paired by
repetition, the process effect, and the issue's target verdict with its bootstrap.

A module of its own so that the arithmetic the verdict rests on can be read, and tested on
made-up phases (``tests/test_bench_smoke.py``), without starting a server. Why pair by
repetition inside one process: ``docs/performance.md``.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field

from harness import BARE, MODES, ORDER, Slot
from server import UNSWITCHABLE

TARGET_CONFIG = "rpcscope-full"
REFERENCE_CONFIG = "py-grpc-prometheus"

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


def fmt_signed(value: float, digits: int = 1) -> str:
    return f"{value:+.{digits}f}"


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
