"""fluentd.aggregator.forward.external: applications ship straight to the aggregator.

What a user depends on: the client Secret in each allowed namespace holds an endpoint that is a
name on the aggregator's certificate, the same shared key the aggregator checks, and the CA that
signed the certificate; the NetworkPolicy lets exactly the allowed namespaces and address ranges
reach 24224 and nothing else; the objects validate against Kubernetes' schemas; incomplete
settings fail with the value to set.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from chart_netpol import Endpoint, allowed
from chart_render import NAMESPACE, Rendered, render, render_error

TCP = "TCP"
EXTERNAL = {
    "enabled": True,
    "namespaces": ["batch"],
    "ipBlocks": ["203.0.113.0/24"],
    "dnsNames": ["logs.example.com"],
}
#: Instrumented services narrowed to one labelled namespace, so the external rule is what lets
#: "batch" in.
NARROW = {
    "networkPolicy": {
        "instrumentedServices": {"namespaceSelector": {"matchLabels": {"team": "shop"}}}
    }
}
OPENSSL = shutil.which("openssl")


def _values(**external: Any) -> dict[str, Any]:
    return {"fluentd": {"aggregator": {"forward": {"external": EXTERNAL | external}}}} | NARROW


@pytest.fixture(scope="module")
def on() -> Rendered:
    return render(_values())


def _client_secrets(r: Rendered) -> dict[str, dict[str, Any]]:
    name = r.name("fluentd-aggregator") + "-client"
    return {
        s["metadata"]["namespace"]: s for s in r.of_kind("Secret") if s["metadata"]["name"] == name
    }


def _data(secret: dict[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def test_off_by_default_no_client_secret_and_no_extra_ingress() -> None:
    r = render(NARROW)
    assert _client_secrets(r) == {}
    [policy] = [
        p for p in r.of_kind("NetworkPolicy") if p["metadata"]["name"].endswith("aggregator")
    ]
    assert not any("ipBlock" in peer for rule in policy["spec"]["ingress"]
                   for peer in rule.get("from", []))  # fmt: skip


def test_client_secret_in_each_allowed_namespace_matches_the_aggregator(
    on: Rendered, tmp_path: Path
) -> None:
    secrets = _client_secrets(on)
    assert set(secrets) == {NAMESPACE, "batch"}
    agg = on.name("fluentd-aggregator")
    key = on.secret_data(f"{agg}-credentials")["shared-key"]
    ca = on.secret_data(f"{on.fullname}-ca")["tls.crt"]
    for secret in secrets.values():
        data = _data(secret)
        assert set(data) == {"endpoint", "shared-key", "ca.crt"}
        assert data["shared-key"] == key and len(key) >= 32
        assert data["ca.crt"] == ca
        assert data["endpoint"] == f"{agg}.{NAMESPACE}.svc:24224".encode()

    if OPENSSL is None:
        pytest.skip("openssl is not installed: the certificate's names are not inspected")
    cert = on.secret_data(f"{agg}-tls")["tls.crt"]
    sans = subprocess.run(
        [OPENSSL, "x509", "-noout", "-ext", "subjectAltName"],
        input=cert, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    assert f"DNS:{agg}.{NAMESPACE}.svc," in sans  # the endpoint's host
    assert "DNS:logs.example.com" in sans  # fluentd.aggregator.forward.external.dnsNames
    (tmp_path / "ca.pem").write_bytes(ca)
    verify = subprocess.run(
        [OPENSSL, "verify", "-CAfile", str(tmp_path / "ca.pem")],
        input=cert, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    assert verify.strip().endswith("OK")


def _aggregator(r: Rendered) -> Endpoint:
    for _, labels, spec in r.pods():
        if labels.get("app.kubernetes.io/component") == "fluentd-aggregator":
            ports = tuple(
                (p.get("name"), p["containerPort"], p.get("protocol", TCP))
                for c in spec["containers"]
                for p in c.get("ports", [])
            )
            ns = {"kubernetes.io/metadata.name": NAMESPACE}
            return Endpoint("fluentd-aggregator", NAMESPACE, labels, ns, "10.244.1.1", ports)
    raise AssertionError("no aggregator pod rendered")


def _pod(name: str, namespace: str, ip: str) -> Endpoint:
    return Endpoint(name, namespace, {"app": name}, {"kubernetes.io/metadata.name": namespace}, ip)


def test_network_policy_admits_exactly_the_allowed_namespaces_and_ranges(on: Rendered) -> None:
    policies = on.of_kind("NetworkPolicy")
    agg = _aggregator(on)
    batch = _pod("job", "batch", "10.244.7.1")
    sandbox = _pod("x", "sandbox", "10.244.7.2")
    vm = Endpoint("vm", ip="203.0.113.20")
    elsewhere = Endpoint("elsewhere", ip="198.51.100.20")
    assert allowed(policies, batch, agg, (24224, TCP))
    assert allowed(policies, vm, agg, (24224, TCP))
    assert not allowed(policies, sandbox, agg, (24224, TCP))
    assert not allowed(policies, elsewhere, agg, (24224, TCP))
    # Only the Forward port: not the metrics port.
    assert not allowed(policies, batch, agg, (24231, TCP))
    assert not allowed(policies, vm, agg, (24231, TCP))

    off = render(NARROW)
    assert not allowed(off.of_kind("NetworkPolicy"), batch, _aggregator(off), (24224, TCP))
    assert not allowed(off.of_kind("NetworkPolicy"), vm, _aggregator(off), (24224, TCP))


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_rendered_objects_validate_strictly(on: Rendered, version: str) -> None:
    for obj in on.objects:
        if obj["kind"] in ("Secret", "NetworkPolicy", "Deployment"):
            kubernetes_validate.validate(obj, version, strict=True)


def test_with_your_own_shared_key_secret_no_copy_is_made() -> None:
    r = render(_values() | {"fluentd": {"aggregator": {
        "sharedKeySecret": "my-forward-key", "forward": {"external": EXTERNAL}}}})  # fmt: skip
    assert _client_secrets(r) == {}


@pytest.mark.parametrize(
    ("values", "names"),
    [
        (_values(namespaces=[], ipBlocks=[]), "fluentd.aggregator.forward.external.namespaces"),
        (
            {"fluentd": {"aggregator": {"enabled": False, "forward": {"external": EXTERNAL}}}},
            "fluentd.aggregator.enabled=true",
        ),
        (_values(ipBlocks=["10.0.0.0"]), "ipBlocks"),  # a CIDR needs its prefix length
        (_values(everyone=True), "everyone"),
    ],
)
def test_incomplete_or_invalid_settings_fail_naming_the_value(values: Any, names: str) -> None:
    assert names in render_error(values)
