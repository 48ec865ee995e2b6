"""The ``rpcscope`` command.

``rpcscope demo`` (what ``make demo`` runs) shows the whole loop on one machine: the example
shop service instrumented with rpcscope under load, with an incident partway through (one method
fails often enough to burn its SLO's error budget) and a recovery; a real Prometheus scraping
its ``/metrics`` with the chart's rules and a real Alertmanager with the chart's routing
(``rpcscope._stack``); the access and application logs shipped over the Forward protocol to a
local receiver (or to the Fluentd ``RPCSCOPE_FLUENTD`` names); and alerts as Alertmanager's
webhook delivers them. A live view shows rate, error ratio and p99 per method, logs emitted and
acknowledged, and the alerts as they fire and resolve; the end is a summary, and with
``--report FILE.json`` the numbers for scripts and CI. ``--keep`` leaves the stack up.

The demo is a list of *stages* (see :class:`Stage`). Each stage starts something the demo needs,
may add to the report once the load has run, and stops in reverse order, also after an error or
Ctrl-C.
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
import time
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
    #: what the demo could not start, and why (printed, and in the report)
    skipped: list[str] = dataclasses.field(default_factory=list)
    #: the shop's servicer, whose faults the incident changes
    servicer: Any = None
    #: the Forward address logs are shipped to (the local receiver, or RPCSCOPE_FLUENTD's)
    fluentd: str | None = None
    receiver: Any = None  # rpcscope.testing.ForwardReceiver, when the demo runs its own
    webhook: Any = None  # rpcscope._stack.Webhook
    alertmanager_url: str | None = None
    prometheus_url: str | None = None
    #: a temporary directory for the children's configuration, data and logs
    workdir: str | None = None


class Stage(Protocol):
    """One part of the demo. ``start`` in order; ``finish`` after the load and ``stop`` at the
    end, both in reverse order.

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
        options: dict[str, Any] = {}
        if run.fluentd is not None and not os.environ.get("RPCSCOPE_FLUENTD"):
            options["fluentd"] = run.fluentd
        run.scope = rpcscope.Scope(
            service="shop",
            service_version=rpcscope.__version__,
            environment="demo",
            access_log=args.access_log,
            # The demo's own registry: its numbers are the shop's alone, whatever the process
            # has registered in prometheus_client's global one.
            registry=CollectorRegistry(),
            **options,
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
        # Every record handed to its sinks, and (shipping) acknowledged, before the report.
        run.scope.flush(timeout=10.0)
        stats = run.scope.stats()
        logs = stats["logs"]
        shipped = [sink for sink in stats["sinks"] if sink["sink"] == "ForwardSink"]
        if shipped:  # the shipper's numbers: delivered = acknowledged by the receiver
            logs = shipped[0]
        # The report's "lost": records dropped (rpcscope_log_records_total{outcome="dropped"}).
        run.report["logs"] = {"emitted": logs["emitted"], "delivered": logs["delivered"],
                              "lost": logs["dropped"]}
        run.report["instrumentation_errors"] = stats["instrumentation_errors"]

    def stop(self, run: DemoRun) -> None:
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
        if run.scope is not None:
            run.scope.close(timeout=5.0)  # delivers what is left and stops /metrics


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
                run.servicer = server.AioShopServicer(faults, seed=args.seed)
                self._server, port = run.loop.run(
                    server.serve_aio(run.scope, args.shop_port, servicer=run.servicer)
                )
            else:
                run.servicer = server.ShopServicer(faults, seed=args.seed)
                self._server, port = server.serve(
                    run.scope, args.shop_port, servicer=run.servicer
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


class ReceiverStage:
    """Where the logs go: the Fluentd ``RPCSCOPE_FLUENTD`` names, else a local Forward receiver
    (``rpcscope.testing.ForwardReceiver``: acknowledges every chunk, as Fluentd does)."""

    name = "logs"

    def start(self, run: DemoRun) -> None:
        configured = os.environ.get("RPCSCOPE_FLUENTD")
        if configured:
            run.fluentd = configured
            run.where.append(("logs", f"shipped to Fluentd at {configured} (RPCSCOPE_FLUENTD)"))
            return
        if run.args.no_ship:
            return
        from rpcscope._forward_receiver import ForwardReceiver
        from rpcscope._stack import claim_port

        port = claim_port(run.args.receiver_port, "--receiver-port")
        run.receiver = ForwardReceiver(port=port).start()
        run.fluentd = run.receiver.address
        run.where.append(("logs", f"shipped over the Forward protocol to a local receiver at "
                                  f"{run.fluentd} (set RPCSCOPE_FLUENTD for a real Fluentd)"))

    def finish(self, run: DemoRun) -> None:
        if run.receiver is not None:
            tags: dict[str, int] = {}
            for event in run.receiver.events:
                tags[event.tag] = tags.get(event.tag, 0) + 1
            run.report["receiver"] = tags

    def stop(self, run: DemoRun) -> None:
        if run.receiver is not None:
            run.receiver.stop()


class AlertingStage:
    """The webhook, a real Alertmanager and a real Prometheus (``rpcscope._stack``), when their
    binaries are installed; without them the demo runs on and says what it skipped."""

    name = "alerting"

    def __init__(self) -> None:
        self._children: list[Any] = []

    def start(self, run: DemoRun) -> None:
        import tempfile
        from pathlib import Path

        from rpcscope import _stack

        args = run.args
        prometheus = _stack.find_binary(_stack.PROMETHEUS_BINARIES)
        alertmanager = _stack.find_binary(_stack.ALERTMANAGER_BINARIES)
        if args.no_stack:
            run.skipped.append("Prometheus and Alertmanager (--no-stack)")
            return
        if prometheus is None:
            run.skipped.append("Prometheus and the alerts: no `prometheus` binary on PATH "
                               "(Debian: apt-get install prometheus; `make demo` installs it)")
            return
        if alertmanager is None:
            run.skipped.append("Alertmanager and the alerts: no `prometheus-alertmanager` "
                               "binary on PATH (Debian: apt-get install prometheus-alertmanager)")
        prom_port = _stack.claim_port(args.prometheus_port, "--prometheus-port")
        am_port = (_stack.claim_port(args.alertmanager_port, "--alertmanager-port")
                   if alertmanager is not None else None)
        hook_port = _stack.claim_port(args.webhook_port, "--webhook-port")
        run.workdir = tempfile.mkdtemp(prefix="rpcscope-demo-")
        workdir = Path(run.workdir)
        try:
            am_address = None
            if alertmanager is not None and am_port is not None:
                run.webhook = _stack.Webhook(hook_port)
                self._children.append(_stack.start_alertmanager(
                    alertmanager, workdir, am_port, run.webhook.url))
                am_address = f"127.0.0.1:{am_port}"
                run.alertmanager_url = f"http://{am_address}"
            assert run.metrics_url is not None
            target = run.metrics_url.split("//", 1)[1].split("/", 1)[0]
            self._children.append(_stack.start_prometheus(
                prometheus, workdir, prom_port, target, am_address))
            run.prometheus_url = f"http://127.0.0.1:{prom_port}"
        except _stack.StackError as error:
            self.stop(run)
            raise _DemoError(str(error)) from None
        run.where.append(("prometheus", f"{run.prometheus_url} (rules: "
                                        f"{run.prometheus_url}/rules, alerts: "
                                        f"{run.prometheus_url}/alerts)"))
        if run.alertmanager_url:
            run.where.append(("alertmanager", run.alertmanager_url))

    def finish(self, run: DemoRun) -> None:
        if run.webhook is not None:
            run.report["alerts"] = [
                {k: a[k] for k in ("alertname", "labels", "status", "received_at",
                                   "seconds_into_demo")}
                for a in run.webhook.received()
            ]

    def stop(self, run: DemoRun) -> None:
        import shutil

        for child in reversed(self._children):
            child.stop()
        self._children.clear()
        if run.webhook is not None:
            run.webhook.close()
        if run.workdir is not None and not run.args.keep_files:
            shutil.rmtree(run.workdir, ignore_errors=True)


def _stages(args: argparse.Namespace) -> list[Stage]:
    """The demo, in start order (stopped in reverse)."""
    return [ReceiverStage(), ScopeStage(), ShopStage(), AlertingStage()]


class _DemoError(Exception):
    """A problem the user can fix; printed without a traceback."""


# --- the incident and the live view ----------------------------------------------------------


class Incident:
    """Partway through the load, GetProduct fails half its calls with UNAVAILABLE (its SLO's
    error budget burns 50x too fast), then recovers: what pages, and then resolves.

    Its length is what a short demo can show: in a demo every SLO window still holds all the
    traffic since the start, so the fast-burn page (1h and 5m windows, 14.4x the budget)
    resolves once the calls since the start are about four times those of the incident,
    within ``--duration``; the slow-burn page (6h and 30m, 6x) stays until far more healthy
    traffic has passed, as it would in production."""

    #: When it starts and ends, as fractions of ``--duration``.
    START, END = 0.2, 0.35
    METHOD = "GetProduct"

    def __init__(self, run: DemoRun, base: Any, events: list[str]) -> None:
        from rpcscope.example_shop import server

        self._run = run
        self._base = dict(base)
        self._bad = {**self._base, self.METHOD: server.Fault(
            errors={grpc.StatusCode.UNAVAILABLE: 0.5}, latency=0.002, jitter=0.004)}
        self._events = events
        self._stop = threading.Event()
        self.active = False
        self._thread = threading.Thread(target=self._script, name="rpcscope-demo-incident",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _script(self) -> None:
        duration = self._run.args.duration
        begin = time.monotonic()
        if self._stop.wait(duration * self.START):
            return
        self._run.servicer.set_faults(self._bad)
        self.active = True
        self._events.append(f"{time.monotonic() - begin:6.1f}s  incident: {self.METHOD} fails "
                            "50% of its calls (UNAVAILABLE)")
        self._stop.wait(max(duration * self.END - (time.monotonic() - begin), 0.0))
        self._run.servicer.set_faults(self._base)
        self.active = False
        self._events.append(f"{time.monotonic() - begin:6.1f}s  recovered: {self.METHOD} is "
                            "healthy again")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.active:
            self._run.servicer.set_faults(self._base)


class LiveView:
    """What the demo shows while it runs, on stderr: per method the rate, server-fault error
    ratio and p99 of the last few seconds, logs emitted and acknowledged, and every alert as
    Alertmanager's webhook delivers it. A terminal gets one block redrawn in place; a pipe or
    a CI log gets a few plain lines every ``every`` seconds."""

    def __init__(self, run: DemoRun, events: list[str], *, enabled: bool,
                 every: float = 5.0) -> None:
        self._run = run
        self._stream = run.err
        self._enabled = enabled
        self._tty = enabled and run.err.isatty()
        self._every = every
        self._events = events
        self._shown_events = 0
        self._shown_alerts = 0
        self._drawn = 0
        self._last_plain = -math.inf
        self._prev: dict[str, MethodStats] = {}
        self._prev_time = time.monotonic()

    def update(self, done: int, failed: int, elapsed: float, final: bool = False) -> None:
        if not self._enabled:
            return
        lines = self._new_events()
        if not self._tty and not final and elapsed - self._last_plain < self._every:
            self._write(lines)
            return
        self._last_plain = elapsed
        lines_block = self._block(done, failed, elapsed)
        if self._tty:
            up = f"\x1b[{self._drawn}A" if self._drawn else ""
            self._stream.write(up + "".join(f"\r{line}\x1b[K\n" for line in lines + lines_block))
            self._drawn = len(lines_block)
            self._stream.flush()
        else:
            self._write(lines + lines_block)

    def _write(self, lines: list[str]) -> None:
        if lines:
            self._stream.write("".join(line + "\n" for line in lines))
            self._stream.flush()

    def _new_events(self) -> list[str]:
        lines = [f"  {event}" for event in self._events[self._shown_events:]]
        self._shown_events += len(lines)
        webhook = self._run.webhook
        if webhook is not None:
            alerts = webhook.received()
            for alert in alerts[self._shown_alerts:]:
                labels = alert["labels"]
                detail = ", ".join(f"{k}={labels[k]}" for k in ("severity", "slo", "window")
                                   if k in labels)
                lines.append(f"  {alert['seconds_into_demo']:6.1f}s  alert "
                             f"{alert['status'].upper()}: {alert['alertname']} ({detail})")
            self._shown_alerts = len(alerts)
        return lines

    def _block(self, done: int, failed: int, elapsed: float) -> list[str]:
        from rpcscope.example_shop import server

        run = self._run
        total = run.args.duration
        width = 24
        filled = min(width, int(width * elapsed / total)) if total > 0 else width
        logs = run.scope.stats()["logs"]
        head = (f"demo [{'#' * filled}{'-' * (width - filled)}] {min(elapsed, total):5.1f}/"
                f"{total:.0f}s  {done} calls  logs: {logs['emitted']} emitted, "
                f"{logs['delivered']} delivered")
        now = time.monotonic()
        stats = read_method_stats(run.scope.registry, server.SERVICE_NAME)
        span = max(now - self._prev_time, 1e-6)
        rows = [head, f"  {'method':<16} {'calls/s':>8} {'server errors':>14} {'p99':>10}"]
        for method in server.METHODS:
            cur, prev = stats.get(method, MethodStats()), self._prev.get(method, MethodStats())
            calls = cur.calls - prev.calls
            faults = sum(n - prev.codes.get(code, 0) for code, n in cur.codes.items()
                         if code in schema.SERVER_FAULT_CODES)
            window = [(le, n - prev.buckets.get(le, 0.0)) for le, n in cur.buckets.items()]
            p99 = histogram_quantile(0.99, window) if calls else None
            ratio = f"{100.0 * faults / calls:.1f}%" if calls else "-"
            rows.append(f"  {method:<16} {calls / span:8.1f} {ratio:>14} {_ms(p99):>10}")
        self._prev, self._prev_time = stats, now
        return rows


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
    events: list[str] = []
    progress = LiveView(run, events, enabled=not args.no_progress)
    incident = None
    if not args.no_incident:
        from rpcscope.example_shop import server

        base = {} if args.no_faults else server.parse_faults(args.fault, base=server.DEMO_FAULTS)
        incident = Incident(run, base, events)
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
        if incident is not None:
            incident.start()
            cleanup.callback(incident.stop)
        try:
            while True:
                try:
                    run.load = future.result(timeout=1.0)
                    break
                except concurrent.futures.TimeoutError:
                    progress.update(*generator.progress())
        except KeyboardInterrupt:
            run.interrupted = True
            generator.stop()
            run.err.write("\ninterrupted: letting calls in flight finish...\n")
            run.load = future.result()
        done, failed, elapsed = generator.progress()
        progress.update(done, failed, elapsed, final=True)


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


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo as Ctrl-C does: every child stopped first


def _run_demo(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    import signal

    from rpcscope._stack import StackError

    run = DemoRun(args=args, err=err)
    run.report.update({"alerts": []})
    started: list[Stage] = []
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        for stage in _stages(args):
            stage.start(run)
            started.append(stage)
        err.write(
            f"rpcscope demo: shop ({args.mode}) on {run.target}, /metrics at {run.metrics_url}, "
            f"{args.duration:g}s of load at {args.rate:g} calls/s\n"
        )
        for what in run.skipped:
            err.write(f"rpcscope demo: skipped {what}\n")
        if run.prometheus_url:
            err.write(f"rpcscope demo: Prometheus at {run.prometheus_url}"
                      + (f", Alertmanager at {run.alertmanager_url}" if run.alertmanager_url
                         else "") + "\n")
        _drive_load(run)
        for stage in reversed(started):  # the scope flushes before the receiver counts
            stage.finish(run)
        status = _report(run, out, err)
        if args.keep and not run.interrupted:
            _keep(run, out)
        return status
    except (_DemoError, StackError) as error:
        err.write(f"rpcscope demo: {error}\n")
        return 2
    except KeyboardInterrupt:
        err.write("\nrpcscope demo: interrupted; stopping everything\n")
        return 130
    finally:
        for stage in reversed(started):
            stage.stop(run)


def _keep(run: DemoRun, out: IO[str]) -> None:
    """--keep: everything stays up for browsing until Ctrl-C (or SIGTERM)."""
    urls = [("/metrics", run.metrics_url)]
    if run.prometheus_url:
        urls += [("Prometheus", run.prometheus_url),
                 ("Prometheus rules", f"{run.prometheus_url}/rules"),
                 ("Prometheus alerts", f"{run.prometheus_url}/alerts")]
    if run.alertmanager_url:
        urls.append(("Alertmanager", run.alertmanager_url))
    out.write("\nrpcscope demo: --keep: the stack stays up; Ctrl-C stops everything.\n")
    out.write("".join(f"  {name + ':':<18} {url}\n" for name, url in urls))
    out.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        out.write("rpcscope demo: stopping everything\n")
        out.flush()


def _report(run: DemoRun, out: IO[str], err: IO[str]) -> int:
    """The summary on ``out`` and the ``--report`` file; the exit status."""
    from rpcscope.example_shop import server

    args = run.args
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

    report["skipped"] = list(run.skipped)
    report["urls"] = {"metrics": run.metrics_url, "prometheus": run.prometheus_url,
                      "alertmanager": run.alertmanager_url}
    logs = report.get("logs", {})
    access_log = args.access_log
    if access_log not in ("stdout", "off"):
        access_log = report["access_log"] = os.path.abspath(access_log)
    where = [
        ("metrics", f"{run.metrics_url}"),
        ("access log", f"{access_log}"),
        ("log records", f"{logs.get('emitted', 0)} emitted, {logs.get('delivered', 0)} "
                        f"delivered (acknowledged, when shipped), {logs.get('lost', 0)} lost"),
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
        *_alert_lines(run),
        *(f"{what + ':':<12} {place}" for what, place in where),
        *(f"skipped:     {what}" for what in run.skipped),
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


def _alert_lines(run: DemoRun) -> list[str]:
    if run.webhook is None:
        return []
    alerts = run.report.get("alerts", [])
    if not alerts:
        return ["alerts: none received from Alertmanager", ""]
    lines = [f"alerts received from Alertmanager ({len(alerts)}):"]
    for alert in alerts:
        labels = alert["labels"]
        detail = ", ".join(f"{k}={labels[k]}" for k in ("severity", "slo", "window")
                           if k in labels)
        lines.append(f"  {alert['seconds_into_demo']:6.1f}s  {alert['status']:<8} "
                     f"{alert['alertname']} ({detail})")
    return [*lines, ""]


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
        "--duration", type=_seconds, default=120.0,
        help="seconds of load (default 120; the incident runs from 20%% to 35%% of it)"
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
    demo.add_argument("--no-faults", action="store_true",
                      help="inject no background faults or latency (the incident still runs)")
    demo.add_argument("--no-incident", action="store_true",
                      help="no incident: GetProduct does not fail partway through")
    demo.add_argument("--no-stack", action="store_true",
                      help="do not start Prometheus and Alertmanager")
    demo.add_argument("--no-ship", action="store_true",
                      help="do not ship logs (no local Forward receiver)")
    demo.add_argument("--keep", action="store_true",
                      help="after the load, keep everything up for browsing until Ctrl-C")
    demo.add_argument("--keep-files", action="store_true",
                      help="keep Prometheus' and Alertmanager's configuration, data and logs")
    demo.add_argument("--seed", type=int, default=None, help="make faults and traffic repeatable")
    demo.add_argument("--shop-port", type=_port, default=0, help="shop port (default: a free one)")
    demo.add_argument("--metrics-port", type=_port, default=0,
                      help="port for /metrics (default: a free one)")
    for flag, what in (("--prometheus-port", "Prometheus"), ("--alertmanager-port",
                       "Alertmanager"), ("--webhook-port", "the demo's alert webhook"),
                       ("--receiver-port", "the local Forward log receiver")):
        demo.add_argument(flag, type=_port, default=0,
                          help=f"port for {what} (default: a free one)")
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
    from rpcscope._provision import add_arguments as _provision_arguments

    _provision_arguments(commands.add_parser(
        "provision", help="set up Elasticsearch and Kibana for rpcscope outside Kubernetes"))
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
