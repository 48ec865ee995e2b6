"""A load generator for the shop, driven by a traffic profile.

A :class:`Profile` says which methods to call and how often (weights), how fast (a target rate
over all workers), how many calls at once (concurrency), and when to stop — after ``duration``
seconds or ``max_calls`` calls, whichever comes first; both are bounded so a run always ends. It
also says how to misbehave the way real clients do: a share of calls gets a deadline too short to
be met, a share is cancelled mid-flight, and a share sends bad input (an unknown SKU, a stock
change that would go negative).

:class:`LoadGenerator` runs on a sync channel with threads, :class:`AsyncLoadGenerator` on a
``grpc.aio`` channel with tasks. Pass a channel built with rpcscope's client interceptors and the
client side is measured too. Both return a :class:`LoadResult`: what was sent, and which status
code each call ended with, as the client saw it.

Run it alone against a running shop::

    python -m rpcscope.example_shop.loadgen --target 127.0.0.1:50051 --duration 10 --rate 50
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import math
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import Any, Final

import grpc

from .. import schema
from . import shop_pb2, shop_pb2_grpc
from .server import METHODS, Catalog

__all__ = [
    "DEFAULT_WEIGHTS",
    "AsyncLoadGenerator",
    "CallPlan",
    "LoadGenerator",
    "LoadResult",
    "Profile",
    "parse_weights",
]

#: Mostly reads, like a real shop: many product lookups, some listings, few writes and chats.
DEFAULT_WEIGHTS: Final[Mapping[str, float]] = MappingProxyType(
    {"GetProduct": 6.0, "ListProducts": 2.0, "UploadInventory": 1.0, "Chat": 1.0}
)

#: Longest run a profile accepts: the generator is for demos and tests, not soak tests.
MAX_DURATION: Final = 24 * 3600.0


def _check_ratio(name: str, value: float) -> None:
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"Profile.{name} must be between 0 and 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Profile:
    """The traffic to send. Invalid values raise ``ValueError`` on construction."""

    #: method name -> relative weight; methods left out are not called
    weights: Mapping[str, float] = dataclasses.field(default_factory=lambda: DEFAULT_WEIGHTS)
    #: target calls per second over all workers; 0 sends as fast as the workers can
    rate: float = 50.0
    #: calls in flight at most (threads for the sync generator, tasks for aio)
    concurrency: int = 4
    #: seconds after which no new call starts (calls in flight finish)
    duration: float = 10.0
    #: calls after which no new call starts; None means only ``duration`` bounds the run
    max_calls: int | None = None
    #: share of calls given ``short_deadline`` instead of ``timeout``
    deadline_ratio: float = 0.03
    short_deadline: float = 0.005
    #: share of calls cancelled by the client ``cancel_after`` seconds after they start
    cancel_ratio: float = 0.02
    cancel_after: float = 0.003
    #: share of calls with bad input: NOT_FOUND / INVALID_ARGUMENT from the service itself
    bad_input_ratio: float = 0.03
    #: messages per client-streaming and bidi call, and ListProducts page size
    stream_length: int = 5
    #: deadline of every other call, so a stuck server cannot hang the generator
    timeout: float = 5.0
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        unknown = set(self.weights) - set(METHODS)
        if unknown:
            raise ValueError(
                f"Profile.weights: unknown methods {sorted(unknown)}; known: {METHODS}"
            )
        if any(not (math.isfinite(w) and w >= 0.0) for w in self.weights.values()):
            raise ValueError("Profile.weights must be finite and >= 0")
        if sum(self.weights.values()) <= 0.0:
            raise ValueError("Profile.weights: give at least one method a positive weight")
        if not (math.isfinite(self.rate) and self.rate >= 0.0):
            raise ValueError(f"Profile.rate must be >= 0 calls per second, got {self.rate!r}")
        if not (1 <= self.concurrency <= 1024):
            raise ValueError(f"Profile.concurrency must be 1..1024, got {self.concurrency!r}")
        if not (0.0 < self.duration <= MAX_DURATION):
            raise ValueError(
                f"Profile.duration must be > 0 and <= {MAX_DURATION:.0f} seconds, "
                f"got {self.duration!r}"
            )
        if self.max_calls is not None and self.max_calls < 1:
            raise ValueError(f"Profile.max_calls must be >= 1 or None, got {self.max_calls!r}")
        _check_ratio("deadline_ratio", self.deadline_ratio)
        _check_ratio("cancel_ratio", self.cancel_ratio)
        _check_ratio("bad_input_ratio", self.bad_input_ratio)
        if self.deadline_ratio + self.cancel_ratio > 1.0:
            raise ValueError("Profile.deadline_ratio + cancel_ratio must be <= 1")
        for name in ("short_deadline", "cancel_after", "timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"Profile.{name} must be > 0 seconds, got {value!r}")
        if not (1 <= self.stream_length <= 100):
            raise ValueError(f"Profile.stream_length must be 1..100, got {self.stream_length!r}")


def parse_weights(text: str) -> dict[str, float]:
    """Parse ``GetProduct=6,ListProducts=2`` (as given to ``--weights``)."""
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        method, eq, raw = item.partition("=")
        try:
            weights[method.strip()] = float(raw)
        except ValueError:
            raise ValueError(f"weights: {item!r} is not METHOD=number") from None
        if not eq:
            raise ValueError(f"weights: {item!r} is not METHOD=number")
    return weights


@dataclasses.dataclass(frozen=True)
class CallPlan:
    """One call, decided before it is made."""

    method: str
    #: "normal", "deadline" (short deadline, expected to expire) or "cancel"
    twist: str
    #: whether the requests carry bad input (see ``Profile.bad_input_ratio``)
    bad_input: bool
    #: the request messages: one for unary and server streaming, several for client streams
    requests: tuple[Any, ...]


@dataclasses.dataclass
class LoadResult:
    """What a run sent and how each call ended, as the client saw it.

    ``codes`` uses Go's code names (``OK``, ``NotFound``, ``Canceled``), the same spelling as the
    ``grpc_code`` metric label, so it compares directly with ``grpc_client_handled_total``.
    """

    sent: dict[str, int]
    codes: dict[str, dict[str, int]]
    #: calls per method given a short deadline / cancelled on purpose: these may never reach
    #: the server, so a server can count fewer calls than ``sent``
    deadlines: dict[str, int]
    cancels: dict[str, int]
    elapsed: float

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": dict(self.sent),
            "codes": {method: dict(codes) for method, codes in self.codes.items()},
            "deadlines": dict(self.deadlines),
            "cancels": dict(self.cancels),
            "elapsed_seconds": round(self.elapsed, 3),
        }


class _Tally:
    """Thread-safe counters; the demo's progress line reads them while the run goes on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent: collections.Counter[str] = collections.Counter()
        self.deadlines: collections.Counter[str] = collections.Counter()
        self.cancels: collections.Counter[str] = collections.Counter()
        self.codes: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.started_at = time.monotonic()
        self.finished_at: float | None = None

    def start(self, plan: CallPlan) -> None:
        with self._lock:
            self.sent[plan.method] += 1
            if plan.twist == "deadline":
                self.deadlines[plan.method] += 1
            elif plan.twist == "cancel":
                self.cancels[plan.method] += 1

    def finish(self, plan: CallPlan, code: grpc.StatusCode) -> None:
        with self._lock:
            self.codes[plan.method][schema.GO_CODE_NAMES[code]] += 1

    def progress(self) -> tuple[int, int, float]:
        """(calls finished, of which not OK, seconds elapsed)."""
        with self._lock:
            done = sum(sum(c.values()) for c in self.codes.values())
            failed = sum(n for c in self.codes.values() for code, n in c.items() if code != "OK")
            end = self.finished_at if self.finished_at is not None else time.monotonic()
            return done, failed, end - self.started_at

    def result(self) -> LoadResult:
        with self._lock:
            end = self.finished_at if self.finished_at is not None else time.monotonic()
            return LoadResult(
                sent=dict(self.sent),
                codes={method: dict(codes) for method, codes in self.codes.items()},
                deadlines=dict(self.deadlines),
                cancels=dict(self.cancels),
                elapsed=end - self.started_at,
            )


class _Planner:
    """Hands out calls: which method, with which twist, and when it may start.

    Pacing spaces start times ``1/rate`` apart over all workers. A worker that falls behind does
    not make up for lost slots with a burst: the next slot is never earlier than now.
    """

    def __init__(self, profile: Profile, skus: Sequence[str]) -> None:
        self._profile = profile
        self._rng = random.Random(profile.seed)
        self._methods = [m for m, w in profile.weights.items() if w > 0]
        self._weights = [profile.weights[m] for m in self._methods]
        self._skus = tuple(skus)
        self._lock = threading.Lock()
        self._claimed = 0
        self._start = time.monotonic()
        self._end = self._start + profile.duration
        self._next = self._start

    def claim(self) -> tuple[float, CallPlan] | None:
        """Return (monotonic start time, plan), or None when the run is over."""
        profile = self._profile
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now)
            over_count = profile.max_calls is not None and self._claimed >= profile.max_calls
            if over_count or slot >= self._end:
                return None
            self._claimed += 1
            self._next = slot + (1.0 / profile.rate if profile.rate > 0 else 0.0)
            return slot, self._plan()

    def _plan(self) -> CallPlan:
        rng, profile = self._rng, self._profile
        method = rng.choices(self._methods, self._weights)[0]
        roll = rng.random()
        if roll < profile.deadline_ratio:
            twist = "deadline"
        elif roll < profile.deadline_ratio + profile.cancel_ratio:
            twist = "cancel"
        else:
            twist = "normal"
        bad = rng.random() < profile.bad_input_ratio
        return CallPlan(method, twist, bad, self._requests(method, bad))

    def _requests(self, method: str, bad: bool) -> tuple[Any, ...]:
        rng, length = self._rng, self._profile.stream_length
        if method == "GetProduct":
            # bad input: an unknown SKU -> NOT_FOUND
            sku = f"SKU-MISSING-{rng.randrange(10_000):04d}" if bad else rng.choice(self._skus)
            return (shop_pb2.GetProductRequest(sku=sku),)
        if method == "ListProducts":
            # bad input: a category with no products -> an empty stream, still OK
            category = "none-such" if bad else rng.choice(Catalog.CATEGORIES)
            return (shop_pb2.ListProductsRequest(category=category, page_size=length),)
        if method == "UploadInventory":
            updates = [
                shop_pb2.InventoryUpdate(sku=rng.choice(self._skus), delta=rng.randint(0, 5))
                for _ in range(length)
            ]
            if bad:  # stock below zero -> INVALID_ARGUMENT
                updates[-1].delta = -1_000_000
            return tuple(updates)
        # Chat has no bad input: every question gets an answer.
        return tuple(
            shop_pb2.ChatMessage(user="loadgen", text=f"question {i}") for i in range(length)
        )


#: The generated grpc module is untyped; a typed handle keeps mypy --strict checking callers.
_stub: Callable[[Any], Any] = shop_pb2_grpc.ShopStub


class _Generator:
    """What both generators share: the stub, the tally and the stop flag."""

    def __init__(self, channel: Any, profile: Profile) -> None:
        self._stub: Any = _stub(channel)
        self.profile = profile
        self._tally = _Tally()
        # A threading.Event so another thread (the demo's main thread) can stop an aio run too.
        self._stop = threading.Event()

    def progress(self) -> tuple[int, int, float]:
        """(calls finished, of which not OK, seconds elapsed) — safe to call from any thread."""
        return self._tally.progress()

    def stop(self) -> None:
        """Start no new calls; :meth:`run` returns once the calls in flight have ended."""
        self._stop.set()


class LoadGenerator(_Generator):
    """Sends a profile's traffic over a sync channel from ``profile.concurrency`` threads."""

    def run(self) -> LoadResult:
        """Run the profile to its end (or until :meth:`stop`) and return what happened."""
        self._tally = _Tally()
        planner = _Planner(self.profile, Catalog().skus)
        with ThreadPoolExecutor(self.profile.concurrency, thread_name_prefix="loadgen") as pool:
            workers = [pool.submit(self._worker, planner) for _ in range(self.profile.concurrency)]
            for worker in workers:
                worker.result()  # re-raises a bug in the generator itself
        self._tally.finished_at = time.monotonic()
        return self._tally.result()

    def _worker(self, planner: _Planner) -> None:
        while not self._stop.is_set():
            claimed = planner.claim()
            if claimed is None:
                return
            slot, plan = claimed
            if self._stop.wait(max(0.0, slot - time.monotonic())):
                return
            self._tally.start(plan)
            self._tally.finish(plan, self._call(plan))

    def _call(self, plan: CallPlan) -> grpc.StatusCode:
        profile = self.profile
        timeout = profile.short_deadline if plan.twist == "deadline" else profile.timeout
        requests = plan.requests
        call: Any
        if plan.method == "GetProduct":
            call = self._stub.GetProduct.future(requests[0], timeout=timeout)
        elif plan.method == "UploadInventory":
            call = self._stub.UploadInventory.future(iter(requests), timeout=timeout)
        elif plan.method == "ListProducts":
            call = self._stub.ListProducts(requests[0], timeout=timeout)
        else:
            call = self._stub.Chat(_paced(requests), timeout=timeout)
        if plan.twist == "cancel":
            time.sleep(profile.cancel_after)
            call.cancel()
        if plan.method in ("ListProducts", "Chat"):
            try:
                for _ in call:
                    pass
            except grpc.RpcError:
                pass  # the code is read below, whatever ended the stream
        # code() blocks until the call has ended; it is CANCELLED after cancel(), without
        # raising FutureCancelledError the way result() would.
        code: grpc.StatusCode = call.code()
        return code


def _paced(messages: Sequence[Any]) -> Iterator[Any]:
    """Yield a bidi request stream one message at a time, as a chatting client would."""
    for message in messages:
        yield message
        time.sleep(0.001)


class AsyncLoadGenerator(_Generator):
    """Sends a profile's traffic over a ``grpc.aio`` channel from ``concurrency`` tasks."""

    async def run(self) -> LoadResult:
        """Run the profile to its end (or until :meth:`stop`) and return what happened."""
        self._tally = _Tally()
        planner = _Planner(self.profile, Catalog().skus)
        await asyncio.gather(*(self._worker(planner) for _ in range(self.profile.concurrency)))
        self._tally.finished_at = time.monotonic()
        return self._tally.result()

    async def _worker(self, planner: _Planner) -> None:
        while not self._stop.is_set():
            claimed = planner.claim()
            if claimed is None:
                return
            slot, plan = claimed
            # Sleep in short steps so stop() takes effect even at a low rate.
            while (wait := slot - time.monotonic()) > 0 and not self._stop.is_set():
                await asyncio.sleep(min(wait, 0.1))
            if self._stop.is_set():
                return
            self._tally.start(plan)
            self._tally.finish(plan, await self._call(plan))

    async def _call(self, plan: CallPlan) -> grpc.StatusCode:
        profile = self.profile
        timeout = profile.short_deadline if plan.twist == "deadline" else profile.timeout
        requests = plan.requests
        call: Any
        if plan.method == "GetProduct":
            call = self._stub.GetProduct(requests[0], timeout=timeout)
        elif plan.method == "UploadInventory":
            # A plain iterator: a batch upload has its messages ready. (With an async generator
            # and an expiring deadline, grpcio's aio client sometimes raises CancelledError or
            # reports INTERNAL "Internal error from Core" instead of DEADLINE_EXCEEDED.)
            call = self._stub.UploadInventory(iter(requests), timeout=timeout)
        elif plan.method == "ListProducts":
            call = self._stub.ListProducts(requests[0], timeout=timeout)
        else:
            call = self._stub.Chat(_apaced(requests), timeout=timeout)
        if plan.twist == "cancel":
            await asyncio.sleep(profile.cancel_after)
            call.cancel()
        try:
            if plan.method in ("ListProducts", "Chat"):
                async for _ in call:
                    pass
            else:
                await call
        except grpc.RpcError:
            pass  # the code is read below, whatever ended the call
        except asyncio.CancelledError:
            # Awaiting a call that was cancelled (by us on purpose, or by grpcio itself when a
            # deadline hits a streaming request) raises CancelledError; the call's code says
            # what happened. If this task itself is being cancelled, let that through.
            task = asyncio.current_task()
            cancelling: Callable[[], int] = getattr(task, "cancelling", lambda: 0)  # 3.11+
            if not call.done() or cancelling():
                raise
        code: grpc.StatusCode = await call.code()
        return code


async def _apaced(messages: Sequence[Any]) -> AsyncIterator[Any]:
    for message in messages:
        yield message
        await asyncio.sleep(0.001)


def _print_result(result: LoadResult, out: Callable[[str], None]) -> None:
    out(f"{'method':<16} {'sent':>7}  codes")
    for method in METHODS:
        if method not in result.sent:
            continue
        codes = ", ".join(
            f"{code} {count}" for code, count in sorted(result.codes.get(method, {}).items())
        )
        out(f"{method:<16} {result.sent[method]:>7}  {codes}")
    rate = result.total / result.elapsed if result.elapsed > 0 else 0.0
    out(f"{result.total} calls in {result.elapsed:.1f}s ({rate:.1f}/s)")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rpcscope.example_shop.loadgen``: drive a running shop, print what happened."""
    defaults = Profile()
    parser = argparse.ArgumentParser(
        prog="python -m rpcscope.example_shop.loadgen", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--duration", type=float, default=defaults.duration)
    parser.add_argument("--max-calls", type=int, default=None)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="calls/s, 0 = max")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument(
        "--weights",
        default=",".join(f"{m}={w:g}" for m, w in DEFAULT_WEIGHTS.items()),
        help="METHOD=weight,... (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--aio", action="store_true", help="use a grpc.aio channel")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        profile = Profile(
            weights=parse_weights(args.weights),
            rate=args.rate,
            concurrency=args.concurrency,
            duration=args.duration,
            max_calls=args.max_calls,
            seed=args.seed,
        )
    except ValueError as error:
        parser.error(str(error))

    if args.aio:

        async def run_aio() -> LoadResult:
            async with grpc.aio.insecure_channel(args.target) as channel:
                return await AsyncLoadGenerator(channel, profile).run()

        result = asyncio.run(run_aio())
    else:
        with grpc.insecure_channel(args.target) as channel:
            result = LoadGenerator(channel, profile).run()
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, sort_keys=True))
    else:
        _print_result(result, print)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
