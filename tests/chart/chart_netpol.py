"""A small NetworkPolicy evaluator: who may open a connection to whom, on which port.

It implements the networking.k8s.io/v1 semantics the chart relies on:

- a pod is isolated for ingress (egress) when any policy in its namespace selects it and lists
  Ingress (Egress) in ``policyTypes`` (absent policyTypes: Ingress, plus Egress when the policy
  has an ``egress`` section);
- an isolated pod accepts (sends) a connection when at least one rule of one selecting policy
  matches both the peer and the port; policies are additive;
- a connection needs the egress side of the source and the ingress side of the destination;
- peers: ``podSelector`` alone = pods in the policy's namespace; ``namespaceSelector`` alone =
  all pods of matching namespaces; both = matching pods in matching namespaces; ``ipBlock`` =
  addresses in the CIDR minus ``except``; an absent or empty ``from``/``to`` = everything;
- ports: absent/empty = all ports; protocol defaults to TCP; named ports resolve against the
  destination pod's container ports; ``endPort`` makes a range.

Endpoints are either pods (namespace, labels, container ports) or plain addresses (the API
server, the internet) that only ``ipBlock`` peers or "everything" can match.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Port = tuple[int, str]  # (number, protocol)


@dataclass(frozen=True)
class Endpoint:
    """A pod or a plain address that connections can go to or come from."""

    name: str
    namespace: str | None = None  # None: not a pod
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    ip: str = "192.0.2.1"
    ports: tuple[tuple[str | None, int, str], ...] = ()  # (name, number, protocol)

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None

    def listening(self) -> list[Port]:
        return sorted({(num, proto) for _, num, proto in self.ports})


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics ({} matches everything)."""
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def peer_matches(peer: Mapping[str, Any], policy_ns: str, ep: Endpoint) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        addr = ipaddress.ip_address(ep.ip)
        if addr not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(addr in ipaddress.ip_network(ex) for ex in block.get("except") or [])
    if not ep.is_pod:
        return False
    pod_sel = peer.get("podSelector")
    ns_sel = peer.get("namespaceSelector")
    if ns_sel is None:
        return ep.namespace == policy_ns and selector_matches(pod_sel, ep.labels)
    return selector_matches(ns_sel, ep.namespace_labels) and selector_matches(pod_sel, ep.labels)


def port_matches(rule_ports: list[Mapping[str, Any]] | None, dst: Endpoint, port: Port) -> bool:
    if not rule_ports:
        return True
    number, proto = port
    for rp in rule_ports:
        if rp.get("protocol", "TCP") != proto:
            continue
        want = rp.get("port")
        if want is None:
            return True
        if isinstance(want, str):
            named = {num for name, num, pr in dst.ports if name == want and pr == proto}
            if number in named:
                return True
            continue
        if want <= number <= rp.get("endPort", want):
            return True
    return False


def _types(policy: Mapping[str, Any]) -> list[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return list(spec["policyTypes"])
    return ["Ingress"] + (["Egress"] if "egress" in spec else [])


def _side_allows(
    policies: Iterable[Mapping[str, Any]],
    subject: Endpoint,
    other: Endpoint,
    dst: Endpoint,
    port: Port,
    direction: str,
) -> bool:
    """Does ``subject``'s ``direction`` side let the connection through?"""
    if not subject.is_pod:
        return True  # plain addresses are not governed by NetworkPolicy
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace") == subject.namespace
        and selector_matches(p["spec"].get("podSelector") or {}, subject.labels)
        and direction in _types(p)
    ]
    if not selecting:
        return True
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for pol in selecting:
        for rule in pol["spec"].get(key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(
                peer_matches(pe, pol["metadata"]["namespace"], other) for pe in peers
            )
            if peer_ok and port_matches(rule.get("ports"), dst, port):
                return True
    return False


def allowed(
    policies: Sequence[Mapping[str, Any]], src: Endpoint, dst: Endpoint, port: Port
) -> bool:
    """May ``src`` open a connection to ``dst`` on ``port``?"""
    return _side_allows(policies, src, dst, dst, port, "Egress") and _side_allows(
        policies, dst, src, dst, port, "Ingress"
    )


Edge = tuple[str, str, int, str]


def graph(
    policies: Sequence[Mapping[str, Any]], endpoints: Sequence[Endpoint], governed: set[str]
) -> set[Edge]:
    """Every allowed (src, dst, port, proto) where src or dst is in ``governed``.

    Candidate ports are the ports each destination listens on. Endpoint names may repeat
    (several pods of one component); edges are by name.
    """
    out: set[Edge] = set()
    for src in endpoints:
        for dst in endpoints:
            if src is dst or (src.name not in governed and dst.name not in governed):
                continue
            for port in dst.listening():
                if allowed(policies, src, dst, port):
                    out.add((src.name, dst.name, port[0], port[1]))
    return out
