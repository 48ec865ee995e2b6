"""Benchmark server: a unary echo service under one or several instrumentation configs.

Run by ``bench/run.py``; never by hand except to debug::

    python bench/server.py --config rpcscope-full --mode sync --log-dir /tmp/x
    python bench/server.py --config bare,rpcscope-full,otel-grpc --mode sync --log-dir /tmp/x

Why processes of their own: the number we want is the server's CPU per call, and the only honest
way to attribute CPU (gRPC core threads, log writer threads, span exporter threads included) is a
process that runs nothing else. Process CPU is read with ``time.process_time_ns()``, i.e.
``CLOCK_PROCESS_CPUTIME_ID``: user + system time summed over every thread, at nanosecond
resolution (``/proc/<pid>/stat`` has only 10 ms ticks).

**Switch mode** (several configs, or ``--switch``): every config is built at start-up, each with
its own log directory, and the server gets one *switch* interceptor that hands
``intercept_service`` to the active config's interceptors (straight to ``continuation`` for
``bare``). The harness selects a config before each phase, so configs are compared *inside one
process*: twin processes differ in CPU per call for their whole life (see docs/performance.md), and
a paired difference within a process cancels that. Only configs that leave global state alone
can share a process: ``grpcio-observability`` registers a process-global plugin that instruments
every call, so it is refused here (run it alone, with ``--switch`` so its gRPC pipeline matches
the bare phases it is compared with); and the switch process checks that no config installed a
global OTel ``TracerProvider`` (otel-grpc gets its own provider passed explicitly), which would
flip rpcscope-full from ids mode into span mode.

Control protocol on stdin/stdout (stdout carries nothing else, so no access log may go there):

* the server prints ``READY <port>`` once it serves;
* ``use <config>`` → make ``config`` the active one (after flushing the previously active one's
  buffers), answer ``OK <config>``; with a single config only that config is accepted;
* ``sample`` → flush every telemetry buffer of the active config (so work queued during a phase
  is paid inside the phase), then print ``CPU <ns>``;
* ``stats`` → print ``STATS <json>``, keyed by config: what each instrumentation itself recorded
  (calls counted, spans exported, access-log lines), so the harness can prove each config really
  instrumented every call it was timed on;
* ``cpus`` → print ``CPUS <list>``: the CPUs any thread of this process may run on (with
  ``--cpus``, the harness checks that every thread, gRPC's and telemetry's included, stayed
  pinned);
* ``quit`` or EOF → flush, shut down, and (with ``--profile``) write the cProfile stats.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

SERVICE = "bench.v1.Bench"
METHOD = "Echo"
FULL_METHOD = f"/{SERVICE}/{METHOD}"
#: The trace id every benchmark request carries in its ``traceparent`` (see ``bench/client.py``).
CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CALLER_TRACE_ID}-00f067aa0ba902b7-01"

#: Every config the harness knows, in table order. ``bare`` is the reference for all deltas.
CONFIGS = (
    "bare",
    "rpcscope-metrics",
    "rpcscope-metrics-log",
    "rpcscope-full",
    "py-grpc-prometheus",
    "otel-grpc",
    "grpcio-observability",
)
#: Configs that change process-global state, so they cannot share a switch process with others.
UNSWITCHABLE = ("grpcio-observability",)
#: Diagnostic floors, run only when named in ``--configs``: what any interceptor pays before it
#: records anything, so a profile of rpcscope can be split into "unavoidable" and "ours".
DIAGNOSTIC_CONFIGS = ("noop-interceptor", "noop-context-reads")

DESCRIPTIONS = {
    "bare": "no instrumentation",
    "rpcscope-metrics": 'rpcscope metrics only: `Scope(access_log="off", trace=False)`',
    "rpcscope-metrics-log": "rpcscope metrics + access log: `Scope(access_log=<file in a temp "
    "dir>, trace=False)`",
    "rpcscope-full": "rpcscope full: metrics + access log (file) + W3C trace context "
    "(`trace=True`, no OTel SDK configured, so ids mode)",
    "py-grpc-prometheus": "py-grpc-prometheus `PromServerInterceptor("
    "enable_handling_time_histogram=True)`; on aio through `bench/server.py`'s adapter "
    "(it has no aio interceptor)",
    "otel-grpc": "opentelemetry-instrumentation-grpc server interceptor, SDK `TracerProvider` + "
    "`BatchSpanProcessor` with a no-op exporter",
    "grpcio-observability": "grpcio-observability `OpenTelemetryPlugin` (global) with an SDK "
    "`MeterProvider` + `InMemoryMetricReader`",
    "noop-interceptor": "diagnostic floor: an interceptor that re-wraps the handler (cached per "
    "method) and records nothing",
    "noop-context-reads": "diagnostic floor: `noop-interceptor` + the context reads rpcscope "
    "makes per call (`invocation_metadata`, `peer`, `time_remaining`, then `code`, and "
    "`is_active`/`cancelled`)",
}


# --- the service -----------------------------------------------------------------------------


def echo(request: bytes, context: Any) -> bytes:
    return request


async def aecho(request: bytes, context: Any) -> bytes:
    return request


def handler(mode: str) -> grpc.GenericRpcHandler:
    behaviour = echo if mode == "sync" else aecho
    return grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(behaviour)}
    )


# --- instrumentation configs -----------------------------------------------------------------


@dataclass
class Instrumentation:
    """What one config adds to a server, and how to flush/close what it buffers."""

    interceptors: list[Any] = field(default_factory=list)
    flush: Callable[[], None] = lambda: None
    close: Callable[[], None] = lambda: None
    observed: Callable[[], dict[str, int]] = dict


def _count_lines(path: str, needle: str | None = None) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            return sum(1 for line in f if needle is None or needle in line)
    except FileNotFoundError:
        return 0


class _PromStateShim:
    """Gives py-grpc-prometheus the ``context._state`` it reads; forwards everything else.

    py-grpc-prometheus reads the private ``_state.code`` / ``_state.client`` of the *sync*
    context; an aio context has neither.
    """

    class _State:
        code = None
        client = None

    _state = _State()

    def __init__(self, context: Any) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class PromAioAdapter(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Runs py-grpc-prometheus's sync interceptor on an aio server (unary methods only).

    py-grpc-prometheus ships no aio interceptor, yet the issue quotes an aio number for it. This
    adapter lets its own code do its per-call work (method split, handler re-wrap, started and
    handled counters, histogram observe); the wrapped behaviour returns the handler's coroutine,
    which we await. So the metric work is py-grpc-prometheus's, plus one thin async layer that
    any aio port would need; only the histogram's timing is wrong (it ends before the await),
    which does not change its cost.
    """

    def __init__(self, sync_interceptor: Any) -> None:
        self._sync = sync_interceptor

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        inner = await continuation(details)
        if inner is None or inner.request_streaming or inner.response_streaming:
            return inner
        wrapped = self._sync.intercept_service(lambda _details: inner, details)
        behaviour = wrapped.unary_unary

        async def run(request: Any, context: Any) -> Any:
            return await behaviour(request, _PromStateShim(context))

        return grpc.unary_unary_rpc_method_handler(
            run,
            request_deserializer=inner.request_deserializer,
            response_serializer=inner.response_serializer,
        )


def _read_context_start(context: Any) -> None:
    context.invocation_metadata()
    context.peer()
    context.time_remaining()


class NoopInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Diagnostic floor (sync): wrap unary handlers the way any instrumentation must."""

    def __init__(self, read_context: bool) -> None:
        self._read = read_context
        self._cache: dict[str, tuple[Any, Any]] = {}

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        cached = self._cache.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        if handler is None or handler.unary_unary is None:
            return handler
        behaviour, read = handler.unary_unary, self._read

        def unary_unary(request: Any, context: Any) -> Any:
            if read:
                _read_context_start(context)
            response = behaviour(request, context)
            if read:
                context.code()
                context.is_active()
            return response

        wrapped = grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
        self._cache[details.method] = (handler, wrapped)
        return wrapped


class NoopAioInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Diagnostic floor (aio): the same as :class:`NoopInterceptor` on ``grpc.aio``."""

    def __init__(self, read_context: bool) -> None:
        self._read = read_context
        self._cache: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        handler = await continuation(details)
        cached = self._cache.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        if handler is None or handler.unary_unary is None:
            return handler
        behaviour, read = handler.unary_unary, self._read

        async def unary_unary(request: Any, context: Any) -> Any:
            if read:
                _read_context_start(context)
            response = await behaviour(request, context)
            if read:
                context.code()
                context.cancelled()
            return response

        wrapped = grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
        self._cache[details.method] = (handler, wrapped)
        return wrapped


#: ``--batch-interval``: how often rpcscope's background thread wakes (None: its default).
BATCH_INTERVAL_S: float | None = None


def build(config: str, mode: str, log_dir: str) -> Instrumentation:
    """Create the instrumentation for ``config``; imports stay local so bare pays for none."""
    if config == "bare":
        return Instrumentation()

    if config in DIAGNOSTIC_CONFIGS:
        read = config == "noop-context-reads"
        return Instrumentation(
            [NoopInterceptor(read) if mode == "sync" else NoopAioInterceptor(read)]
        )

    if config.startswith("rpcscope-"):
        from prometheus_client import CollectorRegistry

        import rpcscope  # type: ignore[import-not-found,unused-ignore]
        from rpcscope import schema  # type: ignore[import-not-found,unused-ignore]

        log_path = os.path.join(log_dir, f"{config}-{mode}.jsonl")
        options: dict[str, Any] = {
            "rpcscope-metrics": {"access_log": "off", "trace": False},
            "rpcscope-metrics-log": {"access_log": log_path, "trace": False},
            "rpcscope-full": {"access_log": log_path, "trace": True},
        }[config]
        # A registry of its own, whatever Scope's default: a switch process hosts three rpcscope
        # configs, and each must count only the calls it was active for.
        if BATCH_INTERVAL_S is not None:
            # Only bench/instructions.py sets it: under valgrind a call is many times slower,
            # so the default round would see batches far smaller than a real run's and charge
            # their fixed cost too heavily per call (docs/performance.md).
            options["batch_interval"] = BATCH_INTERVAL_S
        scope = rpcscope.Scope(service="bench", registry=CollectorRegistry(), **options)
        interceptors = (
            scope.server_interceptors() if mode == "sync" else scope.aio_server_interceptors()
        )
        handled = {
            schema.LABEL_TYPE: schema.TYPE_UNARY,
            schema.LABEL_SERVICE: SERVICE,
            schema.LABEL_METHOD: METHOD,
            schema.LABEL_CODE: schema.GO_CODE_NAMES[grpc.StatusCode.OK],
        }

        def observed_rpcscope() -> dict[str, int]:
            scope.flush()
            value = scope.registry.get_sample_value(schema.SERVER_HANDLED, handled)
            out = {"calls": int(value or 0)}
            if options["access_log"] != "off":
                out["log_lines"] = _count_lines(log_path)
            if options["trace"]:
                out["log_lines_with_caller_trace_id"] = _count_lines(log_path, CALLER_TRACE_ID)
            return out

        return Instrumentation(interceptors, scope.flush, scope.close, observed_rpcscope)

    if config == "py-grpc-prometheus":
        from prometheus_client import CollectorRegistry
        from py_grpc_prometheus.prometheus_server_interceptor import PromServerInterceptor  # type: ignore[import-untyped]

        registry = CollectorRegistry()
        prom = PromServerInterceptor(enable_handling_time_histogram=True, registry=registry)
        labels = {
            "grpc_type": "UNARY",
            "grpc_service": SERVICE,
            "grpc_method": METHOD,
            "grpc_code": "OK",
        }

        def observed_prom() -> dict[str, int]:
            value = registry.get_sample_value("grpc_server_handled_total", labels)
            return {"calls": int(value or 0)}

        return Instrumentation(
            [prom if mode == "sync" else PromAioAdapter(prom)], observed=observed_prom
        )

    if config == "otel-grpc":
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, server_interceptor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class NullExporter(SpanExporter):
            """Drops spans (counting them): we measure the instrumentation, not a network."""

            spans = 0

            def export(self, spans: Any) -> SpanExportResult:
                self.spans += len(spans)
                return SpanExportResult.SUCCESS

        exporter = NullExporter()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        make = server_interceptor if mode == "sync" else aio_server_interceptor

        def flush_spans() -> None:
            provider.force_flush()

        def observed_spans() -> dict[str, int]:
            provider.force_flush()
            return {"calls": exporter.spans}

        interceptor = make(tracer_provider=provider)  # type: ignore[no-untyped-call]
        return Instrumentation([interceptor], flush_spans, provider.shutdown, observed_spans)

    if config == "grpcio-observability":
        import grpc_observability  # type: ignore[import-untyped]
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        reader = InMemoryMetricReader()
        meter_provider = MeterProvider(metric_readers=[reader])
        plugin = grpc_observability.OpenTelemetryPlugin(meter_provider=meter_provider)
        # Process-global, so it must be registered before the server exists; and it must be
        # deregistered or interpreter exit hangs (grpc/grpc#38500).
        plugin.register_global()

        def observed_obs() -> dict[str, int]:
            # Core hands stats to Python every 0.5 s (GRPC_PYTHON_CENSUS_EXPORT_BATCH_INTERVAL).
            time.sleep(1.5)
            data = reader.get_metrics_data()
            calls = 0
            for resource in data.resource_metrics if data else ():
                for scope_metrics in resource.scope_metrics:
                    for metric in scope_metrics.metrics:
                        if metric.name == "grpc.server.call.duration":
                            points = metric.data.data_points
                            calls += sum(int(getattr(p, "count", 0)) for p in points)
            return {"calls": calls}

        return Instrumentation([], close=plugin.deregister_global, observed=observed_obs)

    raise SystemExit(f"unknown config {config!r}; choose from {', '.join(CONFIGS)}")


# --- switch and control loop ----------------------------------------------------------------


class Switch:
    """The configs of this process and which one is active (see the module docstring)."""

    def __init__(self, instrs: dict[str, Instrumentation]) -> None:
        self.instrs = instrs
        self.active = next(iter(instrs))
        #: The active config's interceptors, read by the switch interceptor on every call.
        self.interceptors: tuple[Any, ...] = tuple(instrs[self.active].interceptors)

    @property
    def current(self) -> Instrumentation:
        return self.instrs[self.active]

    def use(self, config: str) -> None:
        """Activate ``config`` (KeyError if this process lacks it). No call may be in flight."""
        chosen = self.instrs[config]
        self.current.flush()  # nothing of the previous config's left to pay in the next phase
        self.active = config
        self.interceptors = tuple(chosen.interceptors)

    def close(self) -> None:
        for instr in self.instrs.values():
            instr.close()


def _intercept_sync(interceptors: tuple[Any, ...], continuation: Any, details: Any) -> Any:
    first, rest = interceptors[0], interceptors[1:]
    if not rest:
        return first.intercept_service(continuation, details)
    return first.intercept_service(lambda d: _intercept_sync(rest, continuation, d), details)


async def _intercept_aio(interceptors: tuple[Any, ...], continuation: Any, details: Any) -> Any:
    first, rest = interceptors[0], interceptors[1:]
    if not rest:
        return await first.intercept_service(continuation, details)

    async def next_(d: Any) -> Any:
        return await _intercept_aio(rest, continuation, d)

    return await first.intercept_service(next_, details)


class SwitchInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Sync: delegate to the active config's interceptors; none (bare) → the handler itself."""

    def __init__(self, switch: Switch) -> None:
        self._switch = switch

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        interceptors = self._switch.interceptors
        if not interceptors:
            return continuation(details)
        return _intercept_sync(interceptors, continuation, details)


class AioSwitchInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Aio: the same as :class:`SwitchInterceptor` on ``grpc.aio``."""

    def __init__(self, switch: Switch) -> None:
        self._switch = switch

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        interceptors = self._switch.interceptors
        if not interceptors:
            return await continuation(details)
        return await _intercept_aio(interceptors, continuation, details)


def check_no_global_tracer_provider() -> None:
    """Fail if a config set a real global OTel TracerProvider: rpcscope-full would see it and
    switch from ids mode to span mode, i.e. measure something else than it does alone."""
    try:
        from opentelemetry import trace
        from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider
    except ImportError:
        return
    provider = trace.get_tracer_provider()
    if not isinstance(provider, ProxyTracerProvider | NoOpTracerProvider):
        raise SystemExit(
            f"a config installed a global TracerProvider ({type(provider).__name__}): configs "
            "sharing a switch process must not change global state"
        )


def _control(switch: Switch, stop: Callable[[], None]) -> None:
    """Answer control commands on stdin until ``quit``/EOF, then ask the server to stop."""
    for line in sys.stdin:
        parts = line.split()
        command = parts[0] if parts else ""
        if command == "use" and len(parts) == 2:
            try:
                switch.use(parts[1])
            except KeyError:
                print(f"ERROR no config {parts[1]!r} in this process", flush=True)
            else:
                print(f"OK {parts[1]}", flush=True)
        elif command == "sample":
            switch.current.flush()
            print(f"CPU {time.process_time_ns()}", flush=True)
        elif command == "stats":
            observed = {config: instr.observed() for config, instr in switch.instrs.items()}
            print(f"STATS {json.dumps(observed)}", flush=True)
        elif command == "cpus":
            print(f"CPUS {format_cpus(allowed_cpus())}", flush=True)
        elif command == "quit":
            break
    stop()


class _Profiler:
    """cProfile in every Python thread, timed with per-thread CPU time.

    cProfile only sees the thread it was enabled in, and the work we want to see is spread over
    gRPC's worker pool, the event loop, the access-log writer and span exporter threads. So
    ``install`` wraps ``threading.Thread.run`` (before any of those threads exist) to give each
    thread its own profile; ``time.thread_time`` as the timer makes blocking free, so the
    numbers are CPU, comparable with what the benchmark measures.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def install(self) -> None:
        if self.path is None:
            return
        original_run = threading.Thread.run
        profiler = self

        def profiled_run(thread: threading.Thread) -> None:
            profiler.start_this_thread()
            original_run(thread)

        threading.Thread.run = profiled_run  # type: ignore[method-assign,assignment]

    def start_this_thread(self) -> None:
        if self.path is None:
            return
        profile = cProfile.Profile(time.thread_time)
        with self._lock:
            self._profiles.append(profile)
        profile.enable()

    def dump(self) -> None:
        if self.path is None or not self._profiles:
            return
        import pstats

        with self._lock:
            profiles = list(self._profiles)
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats.add(profile)
        stats.dump_stats(self.path)


def serve_sync(switch: Switch, interceptors: list[Any]) -> None:
    pool = ThreadPoolExecutor(max_workers=8)
    server = grpc.server(pool, interceptors=interceptors)
    server.add_generic_rpc_handlers((handler("sync"),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"READY {port}", flush=True)
    done = threading.Event()
    threading.Thread(target=_control, args=(switch, done.set), daemon=True).start()
    done.wait()
    switch.current.flush()
    server.stop(grace=None)
    pool.shutdown(wait=True)


async def serve_aio(switch: Switch, interceptors: list[Any], profiler: _Profiler) -> None:
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((handler("aio"),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"READY {port}", flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    threading.Thread(
        target=_control, args=(switch, lambda: loop.call_soon_threadsafe(done.set)), daemon=True
    ).start()
    profiler.start_this_thread()  # aio handlers run on the event loop, i.e. this thread
    await done.wait()
    switch.current.flush()
    await server.stop(grace=None)


def parse_configs(text: str) -> list[str]:
    """``--config``: a comma list of known configs, no repeats; unswitchable ones only alone."""
    configs = [c for c in text.split(",") if c]
    known = CONFIGS + DIAGNOSTIC_CONFIGS
    for config in configs:
        if config not in known:
            raise SystemExit(f"unknown config {config!r}; choose from {', '.join(known)}")
    if not configs or len(set(configs)) != len(configs):
        raise SystemExit(f"--config needs distinct configs, got {text!r}")
    shared = [c for c in configs if c in UNSWITCHABLE]
    if shared and len(configs) > 1:
        raise SystemExit(
            f"{', '.join(shared)} changes process-global state: it needs a process of its own"
        )
    return configs


def pin_process(cpus: set[int]) -> None:
    """Pin every thread of this process to ``cpus``; threads started later inherit it.

    ``os.sched_setaffinity(0, ...)`` moves only the calling thread, so each thread listed in
    ``/proc/self/task`` is moved (one that exits meanwhile is no longer ours to pin).
    """
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except ProcessLookupError:
            pass


def allowed_cpus() -> set[int]:
    """The CPUs any thread of this process may run on (the union over its threads)."""
    cpus: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            cpus |= os.sched_getaffinity(int(task))
        except ProcessLookupError:
            pass
    return cpus


def format_cpus(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def parse_cpus(text: str) -> set[int]:
    return {int(c) for c in text.split(",") if c}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config",
        required=True,
        help=f"one config, or a comma list (switch mode); from {', '.join(CONFIGS)}, "
        f"{', '.join(DIAGNOSTIC_CONFIGS)}",
    )
    parser.add_argument("--mode", required=True, choices=("sync", "aio"))
    parser.add_argument("--log-dir", required=True, help="where access-log configs write")
    parser.add_argument(
        "--switch",
        action="store_true",
        help="install the switch interceptor even for a single config (implied by several)",
    )
    parser.add_argument("--profile", metavar="FILE", help="write merged cProfile stats here")
    parser.add_argument("--cpus", metavar="LIST",
                        help="pin every thread of the server to these CPUs (comma list)")
    parser.add_argument("--batch-interval", type=float, metavar="S",
                        help="rpcscope's background batch interval (bench/instructions.py)")
    args = parser.parse_args(argv)
    if args.cpus:
        pin_process(parse_cpus(args.cpus))  # before any config starts a thread
    global BATCH_INTERVAL_S  # noqa: PLW0603 - read by build(), set once before it runs
    BATCH_INTERVAL_S = args.batch_interval
    configs = parse_configs(args.config)
    switched = args.switch or len(configs) > 1

    profiler = _Profiler(args.profile)
    profiler.install()  # before build(): its background threads must be profiled too
    instrs: dict[str, Instrumentation] = {}
    for config in configs:
        # A directory per config: two configs' access logs never share a file.
        log_dir = os.path.join(args.log_dir, config) if switched else args.log_dir
        os.makedirs(log_dir, exist_ok=True)
        instrs[config] = build(config, args.mode, log_dir)
    switch = Switch(instrs)
    if switched:
        check_no_global_tracer_provider()
        interceptors: list[Any] = [
            SwitchInterceptor(switch) if args.mode == "sync" else AioSwitchInterceptor(switch)
        ]
    else:
        interceptors = list(switch.current.interceptors)
    try:
        if args.mode == "sync":
            serve_sync(switch, interceptors)
        else:
            asyncio.run(serve_aio(switch, interceptors, profiler))
    finally:
        switch.close()  # stops background threads, so their profiles are complete
        profiler.dump()
    return 0


if __name__ == "__main__":
    sys.exit(main())
