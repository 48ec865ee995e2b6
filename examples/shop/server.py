"""The shop service: a servicer for sync and ``grpc.aio`` servers, with injectable faults.

Faults exist so that the telemetry has something to show: each method can be told to fail with
chosen status codes at chosen probabilities, to raise an uncaught exception (clients see
``UNKNOWN``), and to be slow (a base latency, jitter, and a rare slow "tail"). The service also
fails *naturally* on bad input — an unknown SKU is ``NOT_FOUND``, stock that would go negative is
``INVALID_ARGUMENT`` — the client-fault codes that must not count against an availability SLO.

Run it alone::

    python -m rpcscope.example_shop.server --port 50051            # instrumented, /metrics on 9464
    python -m rpcscope.example_shop.server --port 50051 --no-rpcscope
    python -m rpcscope.example_shop.server --fault GetProduct:unavailable=0.2,latency=0.05
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import random
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import Any, Final, NoReturn, Protocol

import grpc

from . import shop_pb2, shop_pb2_grpc

__all__ = [
    "DEMO_FAULTS",
    "METHODS",
    "SERVICE",
    "SERVICE_NAME",
    "AioShopServicer",
    "Catalog",
    "Fault",
    "InjectedCrash",
    "ShopServicer",
    "parse_fault",
    "parse_faults",
    "serve",
    "serve_aio",
]

_LOG = logging.getLogger(__name__)

#: The service descriptor: what ``Scope.initialize_metrics`` pre-creates zero series from.
SERVICE: Final = shop_pb2.DESCRIPTOR.services_by_name["Shop"]
#: ``shop.v1.Shop`` — the ``grpc_service`` label value.
SERVICE_NAME: Final[str] = SERVICE.full_name
#: Bare method names in proto order — the ``grpc_method`` label values.
METHODS: Final[tuple[str, ...]] = tuple(m.name for m in SERVICE.methods)


class InjectedCrash(RuntimeError):
    """Raised by a handler on purpose, to show what an uncaught exception looks like (UNKNOWN)."""


def _check_probability(name: str, value: float) -> None:
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a probability between 0 and 1, got {value!r}")


def _check_seconds(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Fault:
    """How one method misbehaves. All probabilities are per call; latencies are in seconds.

    ``latency`` and ``jitter`` apply before every response message (so a streaming call that
    sends ten messages takes about ten times as long), and once per call for client streaming.
    ``tail`` is the probability that a call additionally stalls for ``tail_latency`` — what makes
    p99 differ from p50. Invalid values raise ``ValueError`` here, not in the middle of a call.
    """

    #: status code -> probability that a call ends with it (via ``context.abort``)
    errors: Mapping[grpc.StatusCode, float] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )
    #: probability that the handler raises :class:`InjectedCrash` (clients see UNKNOWN)
    crash: float = 0.0
    latency: float = 0.0
    jitter: float = 0.0
    tail: float = 0.0
    tail_latency: float = 0.0

    def __post_init__(self) -> None:
        # Freeze a caller's dict so a shared Fault cannot change under a running server.
        object.__setattr__(self, "errors", MappingProxyType(dict(self.errors)))
        for code, probability in self.errors.items():
            if not isinstance(code, grpc.StatusCode) or code is grpc.StatusCode.OK:
                raise ValueError(f"errors keys must be non-OK grpc.StatusCode values, got {code!r}")
            _check_probability(f"errors[{code.name}]", probability)
        _check_probability("crash", self.crash)
        _check_probability("tail", self.tail)
        if sum(self.errors.values()) + self.crash > 1.0 + 1e-9:
            raise ValueError("error and crash probabilities of one method must add up to <= 1")
        _check_seconds("latency", self.latency)
        _check_seconds("jitter", self.jitter)
        _check_seconds("tail_latency", self.tail_latency)


#: The demo's default misbehaviour: a few percent of server faults per method, millisecond
#: latencies, and a slow tail on GetProduct so that its p99 stands apart from its p50.
DEMO_FAULTS: Final[Mapping[str, Fault]] = MappingProxyType(
    {
        "GetProduct": Fault(
            errors={grpc.StatusCode.UNAVAILABLE: 0.02},
            crash=0.005,
            latency=0.002,
            jitter=0.006,
            tail=0.02,
            tail_latency=0.15,
        ),
        "ListProducts": Fault(errors={grpc.StatusCode.INTERNAL: 0.02}, latency=0.001, jitter=0.002),
        "UploadInventory": Fault(
            errors={grpc.StatusCode.UNAVAILABLE: 0.03}, crash=0.01, latency=0.002, jitter=0.003
        ),
        "Chat": Fault(
            errors={grpc.StatusCode.RESOURCE_EXHAUSTED: 0.02}, latency=0.002, jitter=0.002
        ),
    }
)

_FAULT_KEYS: Final = ("crash", "latency", "jitter", "tail", "tail_latency")


def _status_code(name: str) -> grpc.StatusCode:
    """Accept ``NOT_FOUND``, ``not_found``, ``NotFound`` and Go's ``Canceled``."""
    wanted = name.replace("_", "").replace("-", "").lower()
    for code in grpc.StatusCode:
        if code.name.replace("_", "").lower() == wanted:
            return code
    if wanted == "canceled":
        return grpc.StatusCode.CANCELLED
    raise ValueError(f"unknown status code {name!r}")


def parse_fault(spec: str) -> tuple[str, Fault]:
    """Parse ``METHOD:key=value,...`` as given to ``--fault``.

    Keys are status code names (``unavailable=0.05``, any spelling of the code) or one of
    ``crash``, ``latency``, ``jitter``, ``tail``, ``tail_latency``; latencies are seconds.
    ``METHOD:`` with nothing after it means "no faults" for that method.
    """
    method, sep, body = spec.partition(":")
    method = method.strip()
    if not sep or method not in METHODS:
        raise ValueError(
            f"fault {spec!r}: expected METHOD:key=value,... with METHOD one of {', '.join(METHODS)}"
        )
    errors: dict[grpc.StatusCode, float] = {}
    options: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not eq or math.isnan(value):
            raise ValueError(f"fault {spec!r}: {item!r} is not key=number")
        if key in _FAULT_KEYS:
            options[key] = value
        else:
            try:
                errors[_status_code(key)] = value
            except ValueError:
                raise ValueError(
                    f"fault {spec!r}: {key!r} is neither a status code nor one of "
                    f"{', '.join(_FAULT_KEYS)}"
                ) from None
    return method, Fault(errors=errors, **options)


def parse_faults(specs: Iterable[str], base: Mapping[str, Fault] | None = None) -> dict[str, Fault]:
    """Apply ``--fault`` specs over ``base`` (each spec replaces its method's entry)."""
    faults = dict(base or {})
    for spec in specs:
        method, fault = parse_fault(spec)
        faults[method] = fault
    return faults


class Catalog:
    """A fixed set of products with mutable stock. Thread-safe; shared by sync and aio servicers."""

    CATEGORIES: Final = ("books", "games", "garden", "kitchen", "music")

    def __init__(self, size: int = 50) -> None:
        self._lock = threading.Lock()
        self._products: dict[str, shop_pb2.Product] = {}
        for i in range(1, size + 1):
            sku = f"SKU-{i:04d}"
            self._products[sku] = shop_pb2.Product(
                sku=sku,
                name=f"Product {i}",
                category=self.CATEGORIES[i % len(self.CATEGORIES)],
                price_cents=100 * i + 99,
                stock=100,
            )

    @property
    def skus(self) -> tuple[str, ...]:
        return tuple(self._products)

    def get(self, sku: str) -> shop_pb2.Product | None:
        with self._lock:
            product = self._products.get(sku)
            # Copies, here and in list(): gRPC serialises the response on another thread
            # while UploadInventory may be changing the stock.
            return None if product is None else _copy(product)

    def list(self, category: str, limit: int) -> list[shop_pb2.Product]:
        with self._lock:
            chosen = [p for p in self._products.values() if category in ("", p.category)]
            return [_copy(p) for p in chosen[: max(limit, 0)]]

    def apply(self, updates: Sequence[tuple[str, int]]) -> tuple[int, int, str | None]:
        """Apply stock changes all-or-nothing.

        Returns ``(accepted, rejected, problem)``: unknown SKUs are rejected and skipped;
        ``problem`` names an update that would make stock negative, in which case nothing is
        applied (the caller turns that into INVALID_ARGUMENT).
        """
        with self._lock:
            known = [(sku, delta) for sku, delta in updates if sku in self._products]
            stock = {sku: p.stock for sku, p in self._products.items()}
            for sku, delta in known:
                stock[sku] += delta
                if stock[sku] < 0:
                    return 0, len(updates), f"stock of {sku} would become {stock[sku]}"
            for sku, _ in known:
                self._products[sku].stock = stock[sku]
            return len(known), len(updates) - len(known), None


def _copy(product: shop_pb2.Product) -> shop_pb2.Product:
    copy = shop_pb2.Product()
    copy.CopyFrom(product)
    return copy


#: Page size when a ListProducts request leaves it at 0.
DEFAULT_PAGE_SIZE: Final = 10
_MAX_PAGE_SIZE: Final = 100


@dataclasses.dataclass(frozen=True)
class _Decision:
    """What one call will do wrong, drawn once when it starts."""

    code: grpc.StatusCode | None
    crash: bool
    stall: float  # extra seconds for a tail call

    @property
    def fails(self) -> bool:
        return self.crash or self.code is not None


class _Core:
    """Draws fault decisions and delays; the servicers only apply them."""

    def __init__(self, faults: Mapping[str, Fault] | None, seed: int | None) -> None:
        self.set_faults(faults)
        # One lock around the generator keeps a seeded run reproducible in its draws.
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def set_faults(self, faults: Mapping[str, Fault] | None) -> None:
        """Replace the fault plan (whole: calls already running keep the decision they drew)."""
        unknown = set(faults or {}) - set(METHODS)
        if unknown:
            raise ValueError(f"faults for unknown methods {sorted(unknown)}; known: {METHODS}")
        self.faults: Mapping[str, Fault] = MappingProxyType(dict(faults or {}))

    def decide(self, method: str) -> _Decision:
        fault = self.faults.get(method)
        if fault is None:
            return _Decision(None, False, 0.0)
        with self._lock:
            roll = self._rng.random()
            stall = fault.tail_latency if self._rng.random() < fault.tail else 0.0
        for code, probability in fault.errors.items():
            if roll < probability:
                return _Decision(code, False, stall)
            roll -= probability
        return _Decision(None, roll < fault.crash, stall)

    def delay(self, method: str) -> float:
        fault = self.faults.get(method)
        if fault is None or (fault.latency == 0.0 and fault.jitter == 0.0):
            return 0.0
        with self._lock:
            return fault.latency + self._rng.uniform(0.0, fault.jitter)


def _details(method: str, code: grpc.StatusCode) -> str:
    return f"injected fault: {method} fails with {code.name}"


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    context.abort(code, details)
    raise AssertionError("ServicerContext.abort() returned")  # it always raises


async def _aabort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str
) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("ServicerContext.abort() returned")  # it always raises


#: The generated grpc module is untyped; these typed handles keep mypy --strict checking callers.
_add_servicer: Callable[[Any, Any], None] = shop_pb2_grpc.add_ShopServicer_to_server


def _wait(context: grpc.ServicerContext, seconds: float) -> None:
    """Sleep, but wake up as soon as the RPC ends (cancelled, deadline) to free the worker."""
    if seconds <= 0.0:
        return
    ended = threading.Event()
    if context.add_callback(ended.set):
        ended.wait(seconds)


class _ShopState:
    """What both servicers hold: the fault plan and the catalog."""

    def __init__(
        self,
        faults: Mapping[str, Fault] | None = None,
        *,
        catalog: Catalog | None = None,
        seed: int | None = None,
    ) -> None:
        self._core = _Core(faults, seed)
        self.catalog = catalog or Catalog()

    def set_faults(self, faults: Mapping[str, Fault] | None) -> None:
        """Change how the running shop misbehaves (the demo's incident starts and ends so)."""
        self._core.set_faults(faults)


class ShopServicer(_ShopState, shop_pb2_grpc.ShopServicer):
    """The shop for ``grpc.server`` (thread pool)."""

    def _fail(self, method: str, decision: _Decision, context: grpc.ServicerContext) -> None:
        if decision.crash:
            raise InjectedCrash(f"injected crash in {method}")
        if decision.code is not None:
            _abort(context, decision.code, _details(method, decision.code))

    def GetProduct(
        self, request: shop_pb2.GetProductRequest, context: grpc.ServicerContext
    ) -> shop_pb2.Product:
        decision = self._core.decide("GetProduct")
        _wait(context, decision.stall + self._core.delay("GetProduct"))
        self._fail("GetProduct", decision, context)
        product = self.catalog.get(request.sku)
        if product is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"no product with SKU {request.sku!r}")
        return product

    def ListProducts(
        self, request: shop_pb2.ListProductsRequest, context: grpc.ServicerContext
    ) -> Iterator[shop_pb2.Product]:
        decision = self._core.decide("ListProducts")
        page = _page_size(request.page_size)
        products = self.catalog.list(request.category, page)
        # A failing stream fails half-way, after some messages went out: that is what
        # msg_sent counters and clients have to cope with in real life.
        fail_at = len(products) // 2 if decision.fails else -1
        _wait(context, decision.stall)
        for index, product in enumerate(products):
            if index == fail_at:
                self._fail("ListProducts", decision, context)
            _wait(context, self._core.delay("ListProducts"))
            if not context.is_active():
                return
            yield product
        if fail_at >= 0 and not products:
            self._fail("ListProducts", decision, context)

    def UploadInventory(
        self, request_iterator: Iterator[shop_pb2.InventoryUpdate], context: grpc.ServicerContext
    ) -> shop_pb2.InventorySummary:
        decision = self._core.decide("UploadInventory")
        updates = [(update.sku, update.delta) for update in request_iterator]
        _wait(context, decision.stall + self._core.delay("UploadInventory"))
        self._fail("UploadInventory", decision, context)
        accepted, rejected, problem = self.catalog.apply(updates)
        if problem is not None:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        return shop_pb2.InventorySummary(accepted=accepted, rejected=rejected)

    def Chat(
        self, request_iterator: Iterator[shop_pb2.ChatMessage], context: grpc.ServicerContext
    ) -> Iterator[shop_pb2.ChatMessage]:
        decision = self._core.decide("Chat")
        _wait(context, decision.stall)
        for count, message in enumerate(request_iterator):
            if count == 1:  # fail after the first reply, mid-conversation
                self._fail("Chat", decision, context)
            _wait(context, self._core.delay("Chat"))
            if not context.is_active():
                return
            yield _reply(message)
        if decision.fails:  # a conversation of 0 or 1 messages still fails
            self._fail("Chat", decision, context)


class AioShopServicer(_ShopState, shop_pb2_grpc.ShopServicer):
    """The shop for ``grpc.aio.server``: the same behaviour, with ``await`` instead of threads."""

    async def _fail(
        self, method: str, decision: _Decision, context: grpc.aio.ServicerContext
    ) -> None:
        if decision.crash:
            raise InjectedCrash(f"injected crash in {method}")
        if decision.code is not None:
            await _aabort(context, decision.code, _details(method, decision.code))

    async def GetProduct(
        self, request: shop_pb2.GetProductRequest, context: grpc.aio.ServicerContext
    ) -> shop_pb2.Product:
        decision = self._core.decide("GetProduct")
        await _sleep(decision.stall + self._core.delay("GetProduct"))
        await self._fail("GetProduct", decision, context)
        product = self.catalog.get(request.sku)
        if product is None:
            await _aabort(
                context, grpc.StatusCode.NOT_FOUND, f"no product with SKU {request.sku!r}"
            )
        return product

    async def ListProducts(
        self, request: shop_pb2.ListProductsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[shop_pb2.Product]:
        decision = self._core.decide("ListProducts")
        products = self.catalog.list(request.category, _page_size(request.page_size))
        fail_at = len(products) // 2 if decision.fails else -1
        await _sleep(decision.stall)
        for index, product in enumerate(products):
            if index == fail_at:
                await self._fail("ListProducts", decision, context)
            await _sleep(self._core.delay("ListProducts"))
            yield product
        if fail_at >= 0 and not products:
            await self._fail("ListProducts", decision, context)

    async def UploadInventory(
        self,
        request_iterator: AsyncIterator[shop_pb2.InventoryUpdate],
        context: grpc.aio.ServicerContext,
    ) -> shop_pb2.InventorySummary:
        decision = self._core.decide("UploadInventory")
        updates = [(update.sku, update.delta) async for update in request_iterator]
        await _sleep(decision.stall + self._core.delay("UploadInventory"))
        await self._fail("UploadInventory", decision, context)
        accepted, rejected, problem = self.catalog.apply(updates)
        if problem is not None:
            await _aabort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        return shop_pb2.InventorySummary(accepted=accepted, rejected=rejected)

    async def Chat(
        self,
        request_iterator: AsyncIterator[shop_pb2.ChatMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[shop_pb2.ChatMessage]:
        decision = self._core.decide("Chat")
        await _sleep(decision.stall)
        count = 0
        async for message in request_iterator:
            if count == 1:
                await self._fail("Chat", decision, context)
            count += 1
            await _sleep(self._core.delay("Chat"))
            yield _reply(message)
        if decision.fails:
            await self._fail("Chat", decision, context)


def _page_size(requested: int) -> int:
    if requested <= 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, _MAX_PAGE_SIZE)


def _reply(message: shop_pb2.ChatMessage) -> shop_pb2.ChatMessage:
    return shop_pb2.ChatMessage(user="shop", text=f"re: {message.text}")


async def _sleep(seconds: float) -> None:
    if seconds > 0.0:
        await asyncio.sleep(seconds)


class ServerInstrumentation(Protocol):
    """The part of ``rpcscope.Scope`` the server helpers use (any object with these works)."""

    def server_interceptors(self) -> Sequence[Any]: ...

    def aio_server_interceptors(self) -> Sequence[Any]: ...

    def initialize_metrics(self, service: Any) -> None: ...


def serve(
    scope: ServerInstrumentation | None = None,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    faults: Mapping[str, Fault] | None = None,
    seed: int | None = None,
    max_workers: int = 16,
    servicer: ShopServicer | None = None,
) -> tuple[grpc.Server, int]:
    """Start the shop on a thread-pool server; returns the running server and its real port.

    Binds loopback by default (pass ``host="0.0.0.0"`` inside a container). With ``scope``, the
    server runs rpcscope's interceptors and zero series are created for every Shop method.
    The caller stops it: ``server.stop(grace).wait()``. ``servicer``: one the caller built (to
    change its faults later with ``set_faults``); ``faults`` and ``seed`` are then its own.
    """
    interceptors = list(scope.server_interceptors()) if scope is not None else []
    server = grpc.server(ThreadPoolExecutor(max_workers=max_workers), interceptors=interceptors)
    _add_servicer(servicer or ShopServicer(faults, seed=seed), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if scope is not None:
        scope.initialize_metrics(SERVICE)
    server.start()
    return server, bound


async def serve_aio(
    scope: ServerInstrumentation | None = None,
    port: int = 0,
    *,
    host: str = "127.0.0.1",
    faults: Mapping[str, Fault] | None = None,
    seed: int | None = None,
    servicer: AioShopServicer | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Like :func:`serve`, for ``grpc.aio``; call it inside the event loop that will run it."""
    interceptors = list(scope.aio_server_interceptors()) if scope is not None else []
    server = grpc.aio.server(interceptors=interceptors)
    _add_servicer(servicer or AioShopServicer(faults, seed=seed), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if scope is not None:
        scope.initialize_metrics(SERVICE)
    await server.start()
    return server, bound


def main(argv: Sequence[str] | None = None) -> int:
    """Run the shop until SIGINT/SIGTERM (``python -m rpcscope.example_shop.server``)."""
    parser = argparse.ArgumentParser(
        prog="python -m rpcscope.example_shop.server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--aio", action="store_true", help="use grpc.aio instead of threads")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="METHOD:key=value,...",
        help="override one method's faults, e.g. GetProduct:unavailable=0.1,latency=0.02",
    )
    parser.add_argument("--no-faults", action="store_true", help="start from no faults at all")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-rpcscope", action="store_true", help="serve without instrumentation")
    parser.add_argument("--metrics-port", type=int, default=9464)
    args = parser.parse_args(argv)
    try:
        faults = parse_faults(args.fault, base=None if args.no_faults else DEMO_FAULTS)
    except ValueError as error:
        parser.error(str(error))

    scope: Any = None
    if not args.no_rpcscope:
        import rpcscope

        scope = rpcscope.Scope(service="shop")
        metrics = scope.serve_metrics(port=args.metrics_port, addr=args.host)
        print(f"metrics: {metrics.url}", flush=True)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        if args.aio:
            asyncio.run(
                _run_aio(
                    scope, host=args.host, port=args.port, faults=faults, seed=args.seed, stop=stop
                )
            )
        else:
            server, port = serve(scope, args.port, host=args.host, faults=faults, seed=args.seed)
            print(f"shop listening on {args.host}:{port}", flush=True)
            stop.wait()
            server.stop(grace=5).wait()
    finally:
        if scope is not None:
            scope.close(timeout=5.0)
    return 0


async def _run_aio(
    scope: Any,
    *,
    host: str,
    port: int,
    faults: Mapping[str, Fault],
    seed: int | None,
    stop: threading.Event,
) -> None:
    server, bound = await serve_aio(scope, port, host=host, faults=faults, seed=seed)
    print(f"shop (aio) listening on {host}:{bound}", flush=True)
    while not stop.is_set():
        await asyncio.sleep(0.2)
    await server.stop(grace=5)


if __name__ == "__main__":
    raise SystemExit(main())
