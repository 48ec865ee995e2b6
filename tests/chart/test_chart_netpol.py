"""The rendered NetworkPolicies allow exactly the intended connection graph, no more, no less.

Pods come from the rendered workloads (their pod-template labels and container ports), plus
stand-ins for the world around the stack: an instrumented service in namespace "shop", an
unrelated pod in "sandbox", cluster DNS, the API server address, an internet address and an
ingress controller. ``chart_netpol`` evaluates the policies; the tables below are the intent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
from chart_netpol import Edge, Endpoint, allowed, graph
from chart_render import NAMESPACE, Rendered, render

Get = Callable[[str], Rendered]

TCP, UDP = "TCP", "UDP"
STACK = (
    "prometheus",
    "alertmanager",
    "grafana",
    "elasticsearch",
    "kibana",
    "fluentd",
    "fluentd-aggregator",
    "elasticsearch-exporter",
)


def _ns(name: str, **labels: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": name, **labels}


WORLD = [
    Endpoint(
        "app",
        "shop",
        {"app": "shop"},
        _ns("shop", team="shop"),
        "10.244.9.1",
        (("metrics", 9464, TCP), ("grpc", 50051, TCP)),
    ),
    Endpoint(
        "sandbox",
        "sandbox",
        {"app": "x"},
        _ns("sandbox"),
        "10.244.9.2",
        (("metrics", 9464, TCP),),
    ),
    Endpoint(
        "kube-dns",
        "kube-system",
        {"k8s-app": "kube-dns"},
        _ns("kube-system"),
        "10.244.0.10",
        (("dns", 53, UDP), ("dns-tcp", 53, TCP)),
    ),
    Endpoint(
        "ingress",
        "ingress",
        {"app": "ingress-nginx"},
        _ns("ingress"),
        "10.244.8.1",
        (("https", 443, TCP),),
    ),
    Endpoint("kube-api", ip="10.96.0.1", ports=((None, 443, TCP), (None, 6443, TCP))),
    Endpoint(
        "internet",
        ip="203.0.113.10",
        ports=((None, 443, TCP), (None, 587, TCP), (None, 9243, TCP), (None, 9090, TCP)),
    ),
]


def _stack_endpoints(r: Rendered) -> list[Endpoint]:
    """Two pods per workload, so flows between replicas (gossip, ES transport) show up."""
    out = []
    for i, (obj, labels, spec) in enumerate(r.pods()):
        ports = tuple(
            (p.get("name"), p["containerPort"], p.get("protocol", TCP))
            for c in spec["containers"]
            for p in c.get("ports", [])
        )
        name = labels.get("app.kubernetes.io/component", obj["metadata"]["name"])
        for replica in range(2):
            out.append(
                Endpoint(
                    name, NAMESPACE, labels, _ns(NAMESPACE), f"10.244.{i}.{replica + 1}", ports
                )
            )
    return out


def _actual(r: Rendered, world: list[Endpoint] = WORLD) -> set[Edge]:
    stack = _stack_endpoints(r)
    return graph(r.of_kind("NetworkPolicy"), stack + world, {e.name for e in stack})


def _dns(components: Iterable[str]) -> set[Edge]:
    return {(c, "kube-dns", 53, proto) for c in components for proto in (UDP, TCP)}


def _to_any(
    src: str, ports: Iterable[int], world: list[Endpoint], stack: Iterable[str]
) -> set[Edge]:
    """Egress rules without `to` (API server, receivers, external mode) reach every endpoint
    that listens on those ports; we state that openly rather than hide it."""
    names = set(stack)
    out = set()
    for ep in world:
        for num, proto in ep.listening():
            if num in ports and proto == TCP and ep.name != "kube-dns":
                out.add((src, ep.name, num, TCP))
    for comp, num in STACK_PORTS:
        if num in ports and comp in names:
            out.add((src, comp, num, TCP))
    return out


#: Every port a stack pod listens on, for the "any destination" rules above.
STACK_PORTS = [
    ("prometheus", 9090),
    ("alertmanager", 9093),
    ("grafana", 3000),
    ("elasticsearch", 9200),
    ("elasticsearch", 9300),
    ("kibana", 5601),
    ("fluentd", 24231),
    ("fluentd-aggregator", 24224),
    ("fluentd-aggregator", 24231),
    ("elasticsearch-exporter", 9114),
]

# The intended graph with default values: (from, to, port, protocol).
INTENDED: set[Edge] = {
    # Metrics: queries, alert delivery, scraping.
    ("grafana", "prometheus", 9090, TCP),
    ("prometheus", "alertmanager", 9093, TCP),
    ("grafana", "alertmanager", 9093, TCP),
    ("prometheus", "grafana", 3000, TCP),
    ("prometheus", "fluentd", 24231, TCP),
    ("prometheus", "fluentd-aggregator", 24231, TCP),
    ("prometheus", "elasticsearch-exporter", 9114, TCP),
    # Instrumented services: scraped on their metrics port, ship logs to the aggregator. The
    # default selectors ({} and {}) mean every pod of every namespace: anything in the cluster
    # may open the aggregator's Forward port (it still needs the shared key and TLS), and
    # Prometheus may scrape any pod on the metrics ports. Narrowed in the test below.
    ("prometheus", "app", 9464, TCP),
    ("prometheus", "sandbox", 9464, TCP),
    ("app", "fluentd-aggregator", 24224, TCP),
    ("sandbox", "fluentd-aggregator", 24224, TCP),
    ("ingress", "fluentd-aggregator", 24224, TCP),
    ("kube-dns", "fluentd-aggregator", 24224, TCP),
    # Logs: writers and readers of Elasticsearch, and its transport between nodes.
    ("fluentd", "elasticsearch", 9200, TCP),
    ("fluentd-aggregator", "elasticsearch", 9200, TCP),
    ("kibana", "elasticsearch", 9200, TCP),
    ("elasticsearch-exporter", "elasticsearch", 9200, TCP),
    ("grafana", "elasticsearch", 9200, TCP),
    ("elasticsearch", "elasticsearch", 9300, TCP),
    ("elasticsearch-setup", "elasticsearch", 9200, TCP),
    # helm test pod.
    ("test", "prometheus", 9090, TCP),
    ("test", "alertmanager", 9093, TCP),
    ("test", "grafana", 3000, TCP),
}


def _expected(
    r: Rendered, intended: set[Edge], api_clients: Iterable[str] = ("prometheus", "fluentd")
) -> set[Edge]:
    present = r.components()
    names = present | {e.name for e in WORLD}
    edges = {e for e in intended if e[0] in names and e[1] in names}
    edges |= _dns(present)
    for client in api_clients:
        if client in present:
            # networkPolicy.kubeApi.to is empty by default: any address on 443/6443.
            edges |= _to_any(client, (443, 6443), WORLD, present)
    return edges


def _diff(actual: set[Edge], expected: set[Edge]) -> str:
    extra = "\n".join(f"  + {e}" for e in sorted(actual - expected))
    missing = "\n".join(f"  - {e}" for e in sorted(expected - actual))
    return f"allowed but not intended:\n{extra}\nintended but blocked:\n{missing}"


def test_default_graph_is_exactly_the_intended_one(rendered: Get) -> None:
    r = rendered("defaults")
    actual, expected = _actual(r), _expected(r, INTENDED)
    assert actual == expected, _diff(actual, expected)


def test_all_on_graph_adds_gossip_receivers_and_ingress(rendered: Get) -> None:
    r = rendered("all-on")
    present = r.components()
    intended = INTENDED | {
        ("alertmanager", "alertmanager", 9094, TCP),
        ("alertmanager", "alertmanager", 9094, UDP),
        ("ingress", "grafana", 3000, TCP),
        ("ingress", "kibana", 5601, TCP),
    }
    expected = _expected(r, intended)
    # Receivers configured: Alertmanager may reach any address on 443 and 587 (Slack,
    # PagerDuty, SMTP live outside the cluster; narrow with networkPolicy.alertmanagerReceivers.to).
    expected |= _to_any("alertmanager", (443, 587), WORLD, present)
    actual = _actual(r)
    assert actual == expected, _diff(actual, expected)


def test_external_elasticsearch_is_reached_on_its_url_port(rendered: Get) -> None:
    r = rendered("external-es")
    present = r.components()
    assert "elasticsearch" not in present
    intended = {e for e in INTENDED if e[1] != "elasticsearch"}
    expected = _expected(r, intended)
    for client in ("fluentd", "fluentd-aggregator", "kibana", "elasticsearch-exporter", "grafana"):
        if client in present:
            expected |= _to_any(client, (9243,), WORLD, present)
    actual = _actual(r)
    assert actual == expected, _diff(actual, expected)


def test_instrumented_services_can_be_limited_to_labelled_namespaces() -> None:
    r = render(
        {
            "networkPolicy": {
                "instrumentedServices": {
                    "namespaceSelector": {"matchLabels": {"team": "shop"}},
                    "metricsPorts": [9464],
                }
            }
        }
    )
    pods = {e.name: e for e in _stack_endpoints(r) + WORLD}
    policies = r.of_kind("NetworkPolicy")
    assert allowed(policies, pods["prometheus"], pods["app"], (9464, TCP))
    assert not allowed(policies, pods["prometheus"], pods["sandbox"], (9464, TCP))
    assert not allowed(policies, pods["prometheus"], pods["app"], (50051, TCP))
    if "fluentd-aggregator" in pods:
        assert allowed(policies, pods["app"], pods["fluentd-aggregator"], (24224, TCP))
        assert not allowed(policies, pods["sandbox"], pods["fluentd-aggregator"], (24224, TCP))


def test_only_the_forward_port_is_open_to_the_cluster_by_default(rendered: Get) -> None:
    r = rendered("defaults")
    outside = {"app", "sandbox", "ingress", "kube-dns"}
    inbound = {e for e in _actual(r) if e[0] in outside}
    assert {(dst, port) for _, dst, port, _ in inbound} <= {("fluentd-aggregator", 24224)}


def test_evaluator_sees_an_extra_rule(rendered: Get) -> None:
    """The graph test can fail: one more allow rule shows up as an unintended edge."""
    r = rendered("defaults")
    policies: list[dict[str, Any]] = [dict(p) for p in r.of_kind("NetworkPolicy")]
    policies.append(
        {
            "metadata": {"name": "oops", "namespace": NAMESPACE},
            "spec": {
                "podSelector": {"matchLabels": {"app.kubernetes.io/component": "prometheus"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"ports": [{"port": 9090}]}],
            },
        }
    )
    stack = _stack_endpoints(r)
    actual = graph(policies, stack + WORLD, {e.name for e in stack})
    assert ("app", "prometheus", 9090, TCP) in actual - _expected(r, INTENDED)


@pytest.mark.parametrize("scenario", ["defaults", "all-on", "external-es", "fluentd-only"])
def test_every_stack_pod_is_covered_by_a_policy(rendered: Get, scenario: str) -> None:
    r = rendered(scenario)
    from chart_netpol import selector_matches

    for _, labels, _spec in r.pods():
        covering = [
            p
            for p in r.of_kind("NetworkPolicy")
            if selector_matches(p["spec"]["podSelector"], labels)
            and p["metadata"]["name"] != f"{r.fullname}-default-deny"
        ]
        assert covering, f"no component policy for {labels}"
