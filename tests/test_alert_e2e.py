"""End to end: the shop with injected faults -> real Prometheus with the chart's rules -> real
Alertmanager with the chart's config -> this test's webhook gets the page, then its resolution.

Everything between the shop and the webhook is what the chart renders, with only documented
values changed to make minutes into seconds: ``prometheus.scrapeInterval``/``scrapeTimeout``/
``evaluationInterval`` (1s), ``alerting.slo.for`` (0s), ``alertmanager.route.groupWait``/
``groupInterval`` (1s), and a webhook receiver. The Prometheus configuration keeps the chart's
``global`` block and rules and swaps Kubernetes discovery for the two local shop targets.

Then what the paged person opens: the SLO dashboard's queries and the overview's error and
latency panels run against this Prometheus, and the latency histogram's exemplars carry the
``trace_id`` that Grafana's datasource maps to the call's logs.

Two shop instances share one gRPC service, like two pods of a deployment: ``faulty`` fails half
of its calls with UNAVAILABLE and answers every call after 300 ms, ``healthy`` is fast and
fine. Traffic goes to ``faulty`` first (the availability and the latency SLO both burn through
every tier: pages and tickets), then only to ``healthy`` (a rollback): the pages resolve.
"""

from __future__ import annotations

import datetime
import json
import queue
import re
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from _procs import alertmanager, get_json, prometheus_with_config, wait_until

import rpcscope
from rpcscope.example_shop import server as shop
from rpcscope.example_shop import shop_pb2, shop_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent / "chart"))
from chart_render import render

GRAFANA = "https://grafana.example.com"
KIBANA = "https://kibana.example.com"
RUNBOOKS = "https://docs.example.com/runbooks.html"


class Webhook:
    """Alertmanager's webhook receiver: every notification body, in arrival order."""

    def __init__(self) -> None:
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        self.log: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.put(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts_until(self, done: Any, timeout: float, what: str) -> list[dict[str, Any]]:
        """Collect the alerts of every notification until ``done(alert)`` holds for one."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                note = self.received.get(timeout=0.5)
            except queue.Empty:
                continue
            self.log.append(note)
            seen.extend(note["alerts"])
            for alert in note["alerts"]:
                if done(alert):
                    return seen
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; got:\n"
                             + self.describe())

    def alerts_for(self, seconds: float) -> list[dict[str, Any]]:
        """The alerts of every notification arriving in the next ``seconds``."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                note = self.received.get(timeout=left)
            except queue.Empty:
                break
            self.log.append(note)
            seen.extend(note["alerts"])
        return seen

    def describe(self) -> str:
        return "\n".join(
            f"{n['groupLabels']}: " + ", ".join(
                f"{a['labels']['alertname']}/{a['labels']['severity']}/"
                f"{a['labels'].get('window')}={a['status']}" for a in n["alerts"])
            for n in self.log)

    def close(self) -> None:
        self.server.shutdown()


def chart_values(webhook_url: str) -> dict[str, Any]:
    return {
        "prometheus": {"scrapeInterval": "1s", "scrapeTimeout": "1s", "evaluationInterval": "1s"},
        "alertmanager": {
            "receivers": [{"name": "test-hook",
                           "webhook": {"url": webhook_url, "sendResolved": True}}],
            "route": {"receiver": "test-hook", "groupWait": "1s", "groupInterval": "1s"}
        },
        "alerting": {
            "links": {"grafanaUrl": GRAFANA, "kibanaUrl": KIBANA, "runbookUrl": RUNBOOKS},
            "slo": {"for": {"pageFast": "0s", "pageSlow": "0s", "ticketFast": "0s",
                            "ticketSlow": "0s"}},
            "slos": [{"name": "shop", "service": shop.SERVICE_NAME, "objective": 0.99,
                      "latency": {"threshold": 0.25, "objective": 0.99}}],
        },
    }


def prometheus_config(rendered: str, rules_dir: Path, targets: list[str], am_url: str) -> str:
    cfg = yaml.safe_load(rendered)
    test_cfg = {
        "global": cfg["global"],  # intervals from the chart's values
        "rule_files": [str(rules_dir / "*.yaml")],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [urllib.parse.urlsplit(am_url).netloc]}]}]},
        "scrape_configs": [{"job_name": "shop", "static_configs": [{"targets": targets}]}],
    }
    return yaml.safe_dump(test_cfg)


@contextmanager
def shop_instance(faults: dict[str, shop.Fault] | None) -> Iterator[tuple[str, str]]:
    """An instrumented shop; yields (gRPC address, metrics address). Two run in this process
    side by side, so each has a registry of its own."""
    from prometheus_client import CollectorRegistry

    scope = rpcscope.Scope(service="shop", access_log="off", registry=CollectorRegistry())
    server, port = shop.serve(scope, port=0, faults=faults, seed=7)
    metrics = scope.serve_metrics(port=0, addr="127.0.0.1")
    try:
        yield f"127.0.0.1:{port}", f"127.0.0.1:{metrics.port}"
    finally:
        server.stop(None).wait()
        metrics.close()
        scope.close()


def call(address: str, n: int) -> None:
    """``n`` GetProduct calls, 16 at a time; their outcome is the server's business."""
    with grpc.insecure_channel(address) as channel:
        stub = shop_pb2_grpc.ShopStub(channel)

        def one(_: int) -> None:
            try:
                stub.GetProduct(shop_pb2.GetProductRequest(sku="SKU-0001"), timeout=5)
            except grpc.RpcError:
                pass

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(n)))


def is_page(alert: dict[str, Any], name: str, status: str) -> bool:
    labels = alert["labels"]
    return (labels["alertname"] == name and labels["severity"] == "critical"
            and labels.get("window") == "1h" and alert["status"] == status)


@pytest.mark.slow
def test_slo_page_reaches_the_webhook_warnings_are_inhibited_and_it_resolves(
    tmp_path: Path,
) -> None:
    faulty_fault = shop.Fault(errors={grpc.StatusCode.UNAVAILABLE: 0.5}, latency=0.3)
    hook = Webhook()
    try:
        rendered = render(chart_values(hook.url))
        rules_dir = tmp_path / "rules"
        rules_dir.mkdir()
        data = rendered.get("ConfigMap", f"{rendered.name('prometheus')}-rules")["data"]
        for name, text in data.items():
            (rules_dir / name).write_text(text)
        am_config = rendered.configmap_data(rendered.name("alertmanager"), "alertmanager.yml")
        prom_yml = rendered.configmap_data(rendered.name("prometheus"), "prometheus.yml")
        sts = rendered.get("StatefulSet", rendered.name("prometheus"))
        features = [a for a in sts["spec"]["template"]["spec"]["containers"][0]["args"]
                    if a.startswith("--enable-feature=")]

        with shop_instance({"GetProduct": faulty_fault}) as faulty, \
                shop_instance(None) as healthy, \
                alertmanager(tmp_path, am_config) as am, \
                prometheus_with_config(
                    tmp_path,
                    prometheus_config(prom_yml, rules_dir, [faulty[1], healthy[1]], am),
                    ("--rules.alert.resend-delay=1s", *features)) as prom:
            # Both targets scraped a few times (their zero series are in) before any call.
            wait_until(lambda: len([r for r in (get_json(
                f"{prom}/api/v1/query?query=up%3D%3D1") or {"data": {"result": []}}
            )["data"]["result"]]) == 2, 30, "both shop targets up")
            time.sleep(2)

            # Faults: the availability and latency pages (and tickets) fire.
            call(faulty[0], 48)
            started = datetime.datetime.now(datetime.UTC)
            seen = hook.alerts_until(
                lambda a: is_page(a, "GRPCAvailabilityBudgetBurn", "firing"), 60,
                "the availability page")
            page = next(a for a in seen if is_page(a, "GRPCAvailabilityBudgetBurn", "firing"))
            check_page(page, started)

            # The tickets reached Alertmanager too, and it holds them back under the page.
            def inhibited_tickets() -> list[dict[str, Any]]:
                alerts = get_json(f"{am}/api/v2/alerts?inhibited=true&silenced=false") or []
                return [a for a in alerts if a["labels"]["severity"] == "warning"
                        and a["status"]["inhibitedBy"]]

            tickets = wait_until(inhibited_tickets, 30, "tickets inhibited in Alertmanager")
            assert {t["labels"]["service"] for t in tickets} == {shop.SERVICE_NAME}
            # A few more group intervals with the pages firing: still no ticket delivered.
            seen += hook.alerts_for(4.0)
            assert [a for a in seen if a["labels"]["severity"] == "warning"] == [], (
                "a warning was delivered while a page of the same service fired:\n"
                + hook.describe())
            assert any(is_page(a, "GRPCLatencyBudgetBurn", "firing") for a in seen)

            # What the paged person opens: every query of the SLO dashboard, and the overview's
            # error and latency panels, return data from this Prometheus; the latency panel's
            # exemplars carry the trace_id the datasource links to the call's logs.
            for uid, title, expr in dashboard_queries():
                assert query(prom, expr), f"{uid} / {title}: no data for {expr}"
            bucket = f'grpc_server_handling_seconds_bucket{{grpc_service="{shop.SERVICE_NAME}"}}'
            exemplars = get_json(
                f"{prom}/api/v1/query_exemplars?" + urllib.parse.urlencode({
                    "query": bucket, "start": time.time() - 600, "end": time.time() + 60}))["data"]
            trace_ids = {e["labels"].get("trace_id") for s in exemplars for e in s["exemplars"]}
            assert trace_ids and all(re.fullmatch(r"[0-9a-f]{32}", t or "") for t in trace_ids)

            # Rollback: traffic only to the healthy instance, until the page resolves. (Once
            # the pages resolve, the tickets are released: their long windows still hold the
            # bad minute. That is inhibition working, so it is not asserted against.)
            stop = threading.Event()

            def traffic() -> None:
                while not stop.is_set():
                    call(healthy[0], 64)
                    stop.wait(0.2)  # the machine is shared: leave Prometheus room to evaluate

            mover = threading.Thread(target=traffic, daemon=True)
            mover.start()
            try:
                resolved = hook.alerts_until(
                    lambda a: is_page(a, "GRPCAvailabilityBudgetBurn", "resolved"), 90,
                    "the page's resolution")
            finally:
                stop.set()
                mover.join()
            end = next(a for a in resolved if is_page(a, "GRPCAvailabilityBudgetBurn",
                                                        "resolved"))
            assert end["labels"] == page["labels"] and end["endsAt"] > page["startsAt"]
    finally:
        hook.close()


SLO_PANELS = None  # every panel of the SLO dashboard
OVERVIEW_PANELS = ("Server-fault error ratio", "Latency (unary)", "Request rate by code")
DASHBOARDS = Path(__file__).resolve().parent.parent / "charts/rpcscope-stack/files/dashboards"


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) with the variables set to All and Grafana's rate
    interval to 1m, as Grafana would send them."""
    out = []
    for name, titles in (("slo.json", SLO_PANELS), ("grpc_overview.json", OVERVIEW_PANELS)):
        board = json.loads((DASHBOARDS / name).read_text())
        for panel in board["panels"]:
            if titles is not None and panel["title"] not in titles:
                continue
            for target in panel.get("targets", []):
                expr = re.sub(r"\$\w+", lambda m: "1m" if m.group(0) == "$__rate_interval"
                              else ".*", target["expr"])
                out.append((board["uid"], panel["title"], expr))
    assert len(out) > 8
    return out


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    body = get_json(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert body and body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def check_page(alert: dict[str, Any], started: datetime.datetime) -> None:
    """Labels and annotations of the availability page as the on-call person receives it."""
    labels = alert["labels"]
    assert labels["slo"] == "shop"
    assert labels["service"] == labels["grpc_service"] == shop.SERVICE_NAME
    ann = alert["annotations"]
    assert ann["summary"] == (
        f"{shop.SERVICE_NAME}: SLO shop burns its availability error budget 14.4x too fast "
        "(1h and 5m windows)")
    assert ann["runbook_url"] == f"{RUNBOOKS}#grpcavailabilitybudgetburn"
    assert ann["dashboard_url"] == (
        f"{GRAFANA}/d/rpcscope-slo/?viewPanel=5&var-namespace=&var-service="
        f"{urllib.parse.quote_plus(shop.SERVICE_NAME)}&from=now-1h&to=now")
    # Kibana Discover: the service's server-fault calls over the last hour before the alert.
    logs = ann["logs_url"]
    assert logs.startswith(f"{KIBANA}/app/discover#/?_g=(time:(from:'")
    times = [datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
             for t in re.findall(r"(?:from|to):'([^']+)'", logs)]
    assert len(times) == 2 and times[1] - times[0] == datetime.timedelta(hours=1)
    assert abs((times[1] - started).total_seconds()) < 60
    query = urllib.parse.unquote(logs.split("query:'")[1].removesuffix("'))"))
    assert query == (f'rpc.service:"{shop.SERVICE_NAME}" and grpc.code:(Unknown or '
                     "DeadlineExceeded or Unimplemented or Internal or Unavailable or DataLoss)")
