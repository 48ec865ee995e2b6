"""The ``rpcscope`` command.

``rpcscope demo`` (what ``make demo`` runs) starts the example shop service instrumented with
rpcscope, drives load against it through instrumented clients for ``--duration`` seconds, serves
``/metrics`` meanwhile, and ends with a summary per method — calls, error %, p50 and p99, read
back from the server's own Prometheus series — plus where the metrics and logs went. With
``--report FILE.json`` it also writes the numbers for scripts and CI.

The demo is a list of *stages* (see :class:`Stage`). Each stage starts something the demo needs
(the scope and its ``/metrics`` endpoint, the shop server), may add to the report once the load
has run, and stops in reverse order. Later stages — a real Prometheus scraping the endpoint,
Alertmanager receiving alerts, log shipping to Fluentd — slot into :func:`_stages` without
touching the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import IO, Any, Final, Protocol, TypeVar

import grpc
from prometheus_client import CollectorRegistry

from rpcscope import schema

__all__ = ["histogram_quantile", "main"]

_T = TypeVar("_T")

#: Where the demo writes the access log unless told otherwise: a file, so the terminal stays
#: readable (``--access-log stdout`` shows the JSON lines instead).
DEMO_ACCESS_LOG: Final = "rpcscope-demo-access.log"
#: The longest demo the command accepts; the load generator itself allows a day.
MAX_DEMO_SECONDS: Final = 3600.0
#: Grace period for calls still in flight when the shop stops.
_STOP_GRACE: Final = 5.0


# --- the report's numbers, from the registry ---------------------------------------------------


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Estimate the ``q``-quantile from cumulative buckets ``[(le, count), ..., (inf, total)]``.

    The same estimate as PromQL's ``histogram_quantile``: linear interpolation inside the bucket
    the rank falls in, the first bucket starting at 0, and the highest finite bound when the rank
    lands in the ``+Inf`` bucket. ``None`` when there are no observations.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be between 0 and 1 (exclusive), got {q!r}")
    ordered = sorted(buckets)
    if not ordered or not math.isinf(ordered[-1][0]) or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return None  # unreachable: the +Inf bucket holds every observation


@dataclasses.dataclass
class MethodStats:
    """One method's server-side numbers, as its Prometheus series say."""

    rpc_type: str = ""
    codes: dict[str, int] = dataclasses.field(default_factory=dict)
    buckets: dict[float, float] = dataclasses.field(default_factory=dict)

    @property
    def calls(self) -> int:
        return sum(self.codes.values())

    @property
    def errors(self) -> int:
        return sum(n for code, n in self.codes.items() if code != "OK")

    def quantile(self, q: float) -> float | None:
        return histogram_quantile(q, list(self.buckets.items()))


def read_method_stats(
    registry: CollectorRegistry, service: str, *, side: str = "server"
) -> dict[str, MethodStats]:
    """Per-method calls by code and latency buckets for ``service``, from registry samples.

    ``side`` is ``server`` or ``client``: which family of go-grpc-prometheus series to read.
    """
    handled = schema.SERVER_HANDLED if side == "server" else schema.CLIENT_HANDLED
    seconds = schema.SERVER_HANDLING_SECONDS if side == "server" else schema.CLIENT_HANDLING_SECONDS
    stats: dict[str, MethodStats] = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = sample.labels
            if labels.get(schema.LABEL_SERVICE) != service:
                continue
            if sample.name == handled:
                entry = stats.setdefault(labels[schema.LABEL_METHOD], MethodStats())
                entry.rpc_type = labels[schema.LABEL_TYPE]
                if sample.value:
                    code = labels[schema.LABEL_CODE]
                    entry.codes[code] = entry.codes.get(code, 0) + int(sample.value)
            elif sample.name == f"{seconds}_bucket":
                entry = stats.setdefault(labels[schema.LABEL_METHOD], MethodStats())
                entry.buckets[float(labels["le"])] = sample.value
    return stats


# --- progress ------------------------------------------------------------------------------------


class Progress:
    """A progress indicator on stderr: one rewritten line on a terminal, plain lines otherwise.

    Plain lines (one every ``every`` seconds) keep CI logs and pipes readable, where carriage
    returns would pile up into one unreadable line.
    """

    def __init__(self, stream: IO[str], total: float, *, enabled: bool, every: float = 5.0) -> None:
        self._stream = stream
        self._total = total
        self._enabled = enabled
        self._tty = enabled and stream.isatty()
        self._every = every
        self._last_line = -math.inf

    def update(self, done: int, failed: int, elapsed: float) -> None:
        if not self._enabled:
            return
        if self._tty:
            self._stream.write("\r" + self._line(done, failed, elapsed) + "\x1b[K")
            self._stream.flush()
        elif elapsed - self._last_line >= self._every:
            self._last_line = elapsed
            self._stream.write(self._line(done, failed, elapsed) + "\n")
            self._stream.flush()

    def finish(self, done: int, failed: int, elapsed: float) -> None:
        if not self._enabled:
            return
        prefix = "\r" if self._tty else ""
        self._stream.write(
            prefix + self._line(done, failed, elapsed) + ("\x1b[K\n" if self._tty else "\n")
        )
        self._stream.flush()

    def _line(self, done: int, failed: int, elapsed: float) -> str:
        width = 24
        filled = min(width, int(width * elapsed / self._total)) if self._total > 0 else width
        bar = "#" * filled + "-" * (width - filled)
        rate = done / elapsed if elapsed > 0 else 0.0
        errors = 100.0 * failed / done if done else 0.0
        return (
            f"demo [{bar}] {min(elapsed, self._total):5.1f}/{self._total:.0f}s  "
            f"{done} calls  {rate:.0f}/s  client-side errors {errors:.1f}%"
        )


# --- stages ------------------------------------------------------------------------------------


@dataclasses.dataclass
class DemoRun:
    """What the stages share. Stages read what earlier stages set and add their own."""

    args: argparse.Namespace
    err: IO[str]
    scope: Any = None
    metrics_url: str | None = None
    #: host:port of the shop, set by the shop stage
    target: str | None = None
    #: the event loop thread for ``--mode aio``
    loop: _LoopThread | None = None
    load: Any = None  # rpcscope.example_shop.loadgen.LoadResult once the load has run
    interrupted: bool = False
    #: the JSON report; stages add keys (e.g. a future alerting stage fills "alerts")
    report: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: (what, where) lines for the summary's "where things went" section
    where: list[tuple[str, str]] = dataclasses.field(default_factory=list)


class Stage(Protocol):
    """One part of the demo. ``start`` in order, ``finish`` after the load, ``stop`` reversed.

    ``stop`` runs for every stage whose ``start`` returned, also after an error or Ctrl-C.
    """

    name: str

    def start(self, run: DemoRun) -> None: ...

    def finish(self, run: DemoRun) -> None: ...

    def stop(self, run: DemoRun) -> None: ...


class _LoopThread:
    """An asyncio loop on a daemon thread, so ``--mode aio`` keeps the main thread for progress."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="rpcscope-demo-aio", daemon=True
        )
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class ScopeStage:
    """The rpcscope Scope: interceptors, ``/metrics``, the access log, app logs routed to it."""

    name = "rpcscope"

    def __init__(self) -> None:
        self._handler: logging.Handler | None = None
        self._metrics: Any = None

    def start(self, run: DemoRun) -> None:
        import rpcscope

        args = run.args
        run.scope = rpcscope.Scope(
            service="shop",
            service_version=rpcscope.__version__,
            environment="demo",
            access_log=args.access_log,
        )
        try:
            self._metrics = run.scope.serve_metrics(port=args.metrics_port, addr=args.metrics_addr)
        except OSError as error:
            run.scope.close(timeout=1.0)  # stop() only runs for stages that started
            if error.errno == errno.EADDRINUSE:
                raise _DemoError(
                    f"port {args.metrics_port} on {args.metrics_addr} is in use; pass "
                    "--metrics-port 0 to pick a free one"
                ) from None
            raise
        run.metrics_url = self._metrics.url
        # The shop's injected crashes make grpcio log tracebacks; route them (and any other
        # application log) into the access log as ECS records instead of onto the terminal.
        self._handler = run.scope.logging_handler()
        logging.getLogger().addHandler(self._handler)

    def finish(self, run: DemoRun) -> None:
        pass

    def stop(self, run: DemoRun) -> None:
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
        if run.scope is not None:
            run.scope.close(timeout=5.0)  # flushes the access log and stops /metrics
            stats = run.scope.stats()
            logs = stats["logs"]
            # The report's "lost": records dropped (rpcscope_log_records_total{outcome="dropped"}).
            run.report["logs"] = {"emitted": logs["emitted"], "delivered": logs["delivered"],
                                  "lost": logs["dropped"]}
            run.report["instrumentation_errors"] = stats["instrumentation_errors"]


class ShopStage:
    """The example shop, instrumented, on a free loopback port (sync or aio server)."""

    name = "shop"

    def __init__(self) -> None:
        self._server: Any = None

    def start(self, run: DemoRun) -> None:
        from rpcscope.example_shop import server

        args = run.args
        faults = server.parse_faults(
            args.fault, base=None if args.no_faults else server.DEMO_FAULTS
        )
        try:
            if args.mode == "aio":
                run.loop = _LoopThread()
                self._server, port = run.loop.run(
                    server.serve_aio(run.scope, args.shop_port, faults=faults, seed=args.seed)
                )
            else:
                self._server, port = server.serve(
                    run.scope, args.shop_port, faults=faults, seed=args.seed
                )
        except RuntimeError as error:  # grpcio's "Failed to bind to address"
            if run.loop is not None:
                run.loop.close()
            raise _DemoError(
                f"the shop cannot listen on port {args.shop_port} ({error}); pass --shop-port 0 "
                "to pick a free one"
            ) from None
        run.target = f"127.0.0.1:{port}"

    def finish(self, run: DemoRun) -> None:
        pass

    def stop(self, run: DemoRun) -> None:
        # Graceful: calls in flight complete, so the final counts include them.
        if self._server is not None:
            if run.loop is not None:
                run.loop.run(self._server.stop(_STOP_GRACE), timeout=_STOP_GRACE + 5)
            else:
                self._server.stop(_STOP_GRACE).wait(_STOP_GRACE + 5)
        if run.loop is not None:
            run.loop.close()


def _stages(args: argparse.Namespace) -> list[Stage]:
    """The demo, in start order. Later issues add Prometheus, Alertmanager and log shipping."""
    return [ScopeStage(), ShopStage()]


class _DemoError(Exception):
    """A problem the user can fix; printed without a traceback."""


# --- driving the load --------------------------------------------------------------------------


def _drive_load(run: DemoRun) -> None:
    """Send the profile's traffic through instrumented clients, showing progress until done."""
    from rpcscope.example_shop import loadgen

    args = run.args
    profile = loadgen.Profile(
        weights=loadgen.parse_weights(args.weights) if args.weights else loadgen.DEFAULT_WEIGHTS,
        rate=args.rate,
        concurrency=args.concurrency,
        duration=args.duration,
        seed=args.seed,
    )
    assert run.target is not None  # set by the shop stage
    progress = Progress(run.err, args.duration, enabled=not args.no_progress)
    generator: Any
    with contextlib.ExitStack() as cleanup:
        if run.loop is not None:
            loop = run.loop
            interceptors = run.scope.aio_client_interceptors()
            target = run.target

            async def open_channel() -> Any:
                # An aio channel belongs to the loop it is created on: create it on ours.
                return grpc.aio.insecure_channel(target, interceptors=interceptors)

            channel = loop.run(open_channel())
            cleanup.callback(lambda: loop.run(channel.close(), timeout=10))
            generator = loadgen.AsyncLoadGenerator(channel, profile)
            future = loop.submit(generator.run())
        else:
            channel = grpc.intercept_channel(
                grpc.insecure_channel(run.target), *run.scope.client_interceptors()
            )
            cleanup.callback(channel.close)
            pool = cleanup.enter_context(concurrent.futures.ThreadPoolExecutor(1))
            generator = loadgen.LoadGenerator(channel, profile)
            future = pool.submit(generator.run)
        try:
            while True:
                try:
                    run.load = future.result(timeout=0.25)
                    break
                except concurrent.futures.TimeoutError:
                    progress.update(*generator.progress())
        except KeyboardInterrupt:
            run.interrupted = True
            generator.stop()
            run.err.write("\ninterrupted: letting calls in flight finish...\n")
            run.load = future.result()
        progress.finish(*generator.progress())


# --- summary and report --------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _summary(run: DemoRun, stats: dict[str, MethodStats], methods: Iterable[str]) -> list[str]:
    sent = run.load.sent if run.load is not None else {}
    rows = [("method", "type", "sent", "calls", "error %", "p50", "p99", "non-OK codes")]
    for method in methods:
        entry = stats.get(method, MethodStats())
        error_pct = f"{100.0 * entry.errors / entry.calls:.1f}" if entry.calls else "-"
        others = ", ".join(
            f"{code} {n}"
            for code, n in sorted(entry.codes.items(), key=lambda kv: -kv[1])
            if code != "OK"
        )
        rows.append(
            (
                method,
                entry.rpc_type,
                str(sent.get(method, 0)),
                str(entry.calls),
                error_pct,
                _ms(entry.quantile(0.5)),
                _ms(entry.quantile(0.99)),
                others or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4, 5, 6}
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def _run_demo(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from rpcscope.example_shop import server

    run = DemoRun(args=args, err=err)
    run.report.update({"alerts": []})
    started: list[Stage] = []
    try:
        for stage in _stages(args):
            stage.start(run)
            started.append(stage)
        err.write(
            f"rpcscope demo: shop ({args.mode}) on {run.target}, /metrics at {run.metrics_url}, "
            f"{args.duration:g}s of load at {args.rate:g} calls/s\n"
        )
        _drive_load(run)
        for stage in started:
            stage.finish(run)
    except _DemoError as error:
        err.write(f"rpcscope demo: {error}\n")
        return 2
    finally:
        for stage in reversed(started):
            stage.stop(run)

    scope = run.scope
    stats = read_method_stats(scope.registry, server.SERVICE_NAME)
    client = read_method_stats(scope.registry, server.SERVICE_NAME, side="client")
    methods = server.METHODS
    report = run.report
    report.update(
        {
            "service": server.SERVICE_NAME,
            "mode": args.mode,
            "duration_seconds": args.duration,
            "interrupted": run.interrupted,
            "calls": {m: dict(sorted(stats[m].codes.items())) for m in methods if m in stats},
            "latency": {
                m: {"p50": stats[m].quantile(0.5), "p99": stats[m].quantile(0.99)}
                for m in methods
                if m in stats
            },
            "client_calls": {
                m: dict(sorted(client[m].codes.items())) for m in methods if m in client
            },
            "load": run.load.as_dict() if run.load is not None else None,
            "metrics_url": run.metrics_url,
            "access_log": args.access_log,
        }
    )

    logs = report.get("logs", {})
    access_log = args.access_log
    if access_log not in ("stdout", "off"):
        access_log = report["access_log"] = os.path.abspath(access_log)
    where = [
        ("metrics", f"{run.metrics_url} (served while the demo ran)"),
        (
            "access log",
            f"{access_log}: {logs.get('emitted', 0)} records emitted, "
            f"{logs.get('delivered', 0)} delivered, {logs.get('lost', 0)} lost",
        ),
        *run.where,
    ]
    if args.report:
        with open(args.report, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2, sort_keys=True)
            handle.write("\n")
        where.append(("report", os.path.abspath(args.report)))

    lines = [
        "",
        f"{server.SERVICE_NAME}: {sum(s.calls for s in stats.values())} calls handled by the "
        f"server (p50/p99 estimated from {schema.SERVER_HANDLING_SECONDS} like "
        "histogram_quantile())",
        "",
        *_summary(run, stats, methods),
        "sent: calls the load generator started; calls: calls the server handled "
        f"({schema.SERVER_HANDLED}). Deadlines and cancellations can end a call before it "
        "reaches the server.",
        "",
        *(f"{what + ':':<12} {place}" for what, place in where),
    ]
    errors = report.get("instrumentation_errors", 0)
    if errors:
        lines.append(f"instrumentation errors: {errors} (see {schema.INSTRUMENTATION_ERRORS})")
    out.write("\n".join(lines) + "\n")
    out.flush()

    if run.interrupted:
        return 130
    if not stats or sum(s.calls for s in stats.values()) == 0:
        err.write("rpcscope demo: the server counted no calls; is RPCSCOPE_DISABLED set?\n")
        return 1
    return 1 if errors else 0


# --- argument parsing ----------------------------------------------------------------------------


def _seconds(text: str) -> float:
    value = float(text)
    if not (0.0 < value <= MAX_DEMO_SECONDS):
        raise argparse.ArgumentTypeError(f"must be > 0 and <= {MAX_DEMO_SECONDS:.0f} seconds")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be 0..65535 (0 picks a free port)")
    return value


def _parser() -> argparse.ArgumentParser:
    from rpcscope import __version__

    parser = argparse.ArgumentParser(
        prog="rpcscope", description="Observability for Python gRPC services in one bundle."
    )
    parser.add_argument("--version", action="version", version=f"rpcscope {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run the example shop under rpcscope with generated load, then summarise",
        description=(
            "Start the example shop service instrumented with rpcscope, drive load against it "
            "for --duration seconds while serving /metrics, then print calls, error %% and "
            "latency per method (read back from the server's Prometheus series)."
        ),
    )
    demo.add_argument(
        "--duration", type=_seconds, default=20.0, help="seconds of load (default 20)"
    )
    demo.add_argument("--rate", type=float, default=50.0, help="calls per second (0 = max)")
    demo.add_argument("--concurrency", type=int, default=4, help="calls in flight at most")
    demo.add_argument(
        "--weights",
        default=None,
        metavar="METHOD=W,...",
        help="traffic mix, e.g. GetProduct=6,Chat=1",
    )
    demo.add_argument("--mode", choices=("sync", "aio"), default="sync", help="grpc or grpc.aio")
    demo.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="METHOD:key=value,...",
        help="override a method's injected faults, e.g. GetProduct:unavailable=0.2,latency=0.05",
    )
    demo.add_argument("--no-faults", action="store_true", help="inject no faults or latency")
    demo.add_argument("--seed", type=int, default=None, help="make faults and traffic repeatable")
    demo.add_argument("--shop-port", type=_port, default=0, help="shop port (default: a free one)")
    demo.add_argument(
        "--metrics-port",
        type=_port,
        default=schema.DEFAULT_METRICS_PORT,
        help="port for /metrics (default %(default)s; 0 picks a free one)",
    )
    demo.add_argument(
        "--metrics-addr", default="127.0.0.1", help="bind address for /metrics (default loopback)"
    )
    demo.add_argument(
        "--access-log",
        default=DEMO_ACCESS_LOG,
        metavar="PATH|stdout|off",
        help="where the JSON access log goes (default %(default)s, appended)",
    )
    demo.add_argument("--report", metavar="FILE.json", help="also write the numbers as JSON")
    demo.add_argument("--no-progress", action="store_true", help="no progress indicator")
    demo.set_defaults(handler=_run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rpcscope`` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace, IO[str], IO[str]], int] | None = getattr(
        args, "handler", None
    )
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "demo":
        from rpcscope.example_shop import loadgen, server

        # Validate the traffic and fault options before anything starts.
        try:
            server.parse_faults(args.fault)
            loadgen.Profile(
                weights=loadgen.parse_weights(args.weights)
                if args.weights
                else loadgen.DEFAULT_WEIGHTS,
                rate=args.rate,
                concurrency=args.concurrency,
                duration=args.duration,
            )
        except ValueError as error:
            parser.error(str(error))
    try:
        return handler(args, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
