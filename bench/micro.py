"""In-process micro-benchmark: each config's Python cost per unary call, without gRPC.

``bench/run.py`` measures what a user pays end to end, but on a shared 2-CPU machine its noise
band (tens of µs) is as wide as the differences we need to optimise. This drives each server
interceptor directly with a fake ``ServicerContext`` (cheap, lock-free accessors), so what is
left is the instrumentation's own Python work, measured as process CPU (background threads
such as the access-log writer included: every buffer is flushed inside the timed region).
It understates the end-to-end cost: real context accessors take grpc's locks, and in a tight
loop the instrumentation's code and data stay in the CPU caches, which a real server's gRPC
machinery evicts between two calls. ``--cold`` models that: before each call it touches a few
thousand objects scattered over ~10 MB (the same work for every config, so it cancels out of
the "over bare" column), and the per-call costs grow several-fold, unequally across configs.
Code that runs in batches on a background thread (rpcscope's deferred metrics and log writer)
stays warm either way.

    .venv/bin/python bench/micro.py [--calls 20000] [--repeats 5] [--cold]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

import grpc
from server import FULL_METHOD, TRACEPARENT, build, handler

MICRO_CONFIGS = (
    "bare",
    "noop-interceptor",
    "noop-context-reads",
    "rpcscope-metrics",
    "rpcscope-metrics-log",
    "rpcscope-full",
    "py-grpc-prometheus",
    "otel-grpc",
)


class Metadatum(NamedTuple):
    """What grpc hands out as metadata: a (key, value) tuple with named fields."""

    key: str
    value: str


class FakeContext:
    """The sync ``ServicerContext`` surface the interceptors touch, at near-zero cost.

    Including grpc's private per-call state that py-grpc-prometheus and rpcscope's sync
    interceptor read directly (``_state``, ``_rpc_event``), so both take the path they take in
    a real server rather than a fallback.
    """

    class _State:
        code = None
        client = "open"  # grpc._server._OPEN

    class _Call:
        def peer(self) -> bytes:
            return b"ipv4:127.0.0.1:54321"

    class _CallDetails:
        deadline = 9.2e18  # grpc's "no deadline": gpr_inf_future as wall-clock seconds

    _state = _State()
    _METADATA = (
        Metadatum("traceparent", TRACEPARENT),
        Metadatum("user-agent", "grpc-python/1.85.3 grpc-c/52.0.0 (linux; chttp2)"),
    )

    _rpc_event = SimpleNamespace(
        call=_Call(), call_details=_CallDetails(), invocation_metadata=_METADATA
    )

    def invocation_metadata(self) -> Any:
        return self._METADATA

    def peer(self) -> str:
        return "ipv4:127.0.0.1:54321"

    def time_remaining(self) -> float | None:
        return None

    def code(self) -> Any:
        return None

    def details(self) -> Any:
        return None

    def is_active(self) -> bool:
        return True

    def trailing_metadata(self) -> Any:
        return ()

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def set_code(self, code: Any) -> None:
        pass

    def set_details(self, details: Any) -> None:
        pass


class Details:
    """``grpc.HandlerCallDetails`` for the benchmark method."""

    method = FULL_METHOD
    invocation_metadata = FakeContext._METADATA


def one_call(config: str, workdir: str) -> tuple[Callable[[], Any], Callable[[], None]]:
    """A zero-argument function doing one intercepted call, and the config's flush."""
    instr = build(config, "sync", workdir)
    generic = handler("sync")
    details, context, request = Details(), FakeContext(), b"x" * 32

    def continuation(d: Any) -> Any:
        return generic.service(d)

    if not instr.interceptors:
        behaviour = continuation(details).unary_unary
        return (lambda: behaviour(request, context)), instr.flush
    (interceptor,) = instr.interceptors

    def call() -> Any:
        return interceptor.intercept_service(continuation, details).unary_unary(request, context)

    return call, instr.flush


_BIG = [float(i) for i in range(300_000)]  # ~10 MB of float objects and list slots
_SCATTER = range(0, len(_BIG), 37)  # ~8k of them, far apart: defeats the caches and prefetcher


def evict() -> float:
    """Touch scattered memory, evicting most of L1/L2 and much of L3, as gRPC does between calls."""
    total = 0.0
    big = _BIG
    for i in _SCATTER:
        total += big[i]
    return total


def measure(call: Callable[[], Any], flush: Callable[[], None], calls: int,
            cold: bool = False) -> float:
    """Process CPU µs per call, flushing background buffers inside the timed region."""
    start = time.process_time_ns()
    if cold:
        for _ in range(calls):
            evict()
            call()
    else:
        for _ in range(calls):
            call()
    flush()
    return (time.process_time_ns() - start) / 1000 / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", default=",".join(MICRO_CONFIGS))
    parser.add_argument("--cold", action="store_true",
                        help="evict the CPU caches before every call (see the module doc)")
    parser.add_argument("--json", metavar="FILE", help="also write {config: µs/call} here")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="rpcscope-micro-") as workdir:
        calls = {c: one_call(c, workdir) for c in configs}
        for call, flush in calls.values():
            measure(call, flush, min(args.calls, 2000))  # warm caches and lazy set-up
        every: dict[str, list[float]] = {c: [] for c in configs}
        for _ in range(args.repeats):  # interleaved, like run.py; min is the least disturbed
            for config, (call, flush) in calls.items():
                every[config].append(measure(call, flush, args.calls, args.cold))
        best = {c: min(values) for c, values in every.items()}
    base = best.get("bare", 0.0)
    print(
        f"{'config':22} {'CPU µs/call':>12} {'over bare':>10}   "
        f"({'cold, ' if args.cold else ''}min of {args.repeats} x "
        f"{args.calls} calls, Python {sys.version.split()[0]}, grpcio {grpc.__version__}, "
        f"pid {os.getpid()})"
    )
    for config in configs:
        print(f"{config:22} {best[config]:12.2f} {best[config] - base:+10.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            # every repeat too: the spread of bare's is the noise band of the "over bare" column
            json.dump({"calls": args.calls, "repeats": args.repeats, "cold": args.cold,
                       "cpu_us": best, "every_us": every}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
