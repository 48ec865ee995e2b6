"""The load side of the benchmark: sequential sync calls, or N in flight on ``grpc.aio``.

Every call is the same small unary request carrying a W3C ``traceparent``, as a request from an
instrumented upstream would: tracing configs then take their "continue the caller's trace" path,
and every config receives byte-identical requests.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

import grpc
from server import TRACEPARENT

PAYLOAD = b"x" * 32
METADATA = (("traceparent", TRACEPARENT),)
#: Generous: a healthy call takes about a millisecond. Hitting it means the server stalled.
CALL_TIMEOUT_S = 5.0


@dataclass
class Phase:
    """What one timed phase against one server produced."""

    latencies_ns: list[int]
    elapsed_ns: int
    error: str | None = None  # first failure; the phase stops there


def sync_phase(channel: grpc.Channel, method: str, calls: int) -> Phase:
    """``calls`` sequential unary calls: 1 in flight, so latency is the per-call path."""
    call = channel.unary_unary(method)
    latencies: list[int] = []
    clock = time.perf_counter_ns
    begin = clock()
    for _ in range(calls):
        start = clock()
        try:
            call(PAYLOAD, metadata=METADATA, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            return Phase(latencies, clock() - begin, _describe(exc, len(latencies)))
        latencies.append(clock() - start)
    return Phase(latencies, clock() - begin)


async def aio_phase(channel: Any, method: str, calls: int, concurrency: int) -> Phase:
    """``calls`` unary calls spread over ``concurrency`` workers, each keeping one in flight."""
    call = channel.unary_unary(method)
    latencies: list[int] = []
    clock = time.perf_counter_ns
    remaining = calls
    error: str | None = None

    async def worker() -> None:
        nonlocal remaining, error
        while remaining > 0 and error is None:
            remaining -= 1
            start = clock()
            try:
                await call(PAYLOAD, metadata=METADATA, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as exc:
                error = error or _describe(exc, len(latencies))
                return
            latencies.append(clock() - start)

    begin = clock()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Phase(latencies, clock() - begin, error)


def _describe(exc: grpc.RpcError, ok_so_far: int) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    name = code.name if code is not None else type(exc).__name__
    return f"{name} after {ok_so_far} successful calls in the phase"


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q * len(sorted_values))))
    return float(sorted_values[rank - 1])
