"""Generated passwords and certificates survive upgrades.

helm-python-sdk renders offline, and offline Helm's ``lookup`` returns nothing (the SDK says
so), so an upgrade render cannot see the release's Secrets by itself. The chart sends every
lookup through one helper, ``rpcscope-stack.lookupSecret``; ``chart_render.with_existing_secrets``
replaces only that helper with one that returns Secrets we hand it. All reuse-or-generate logic
under test is the chart's own. Helm's real ``lookup`` against a cluster is not exercised here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from chart_render import (
    CHART_DIR,
    LOOKUP_DEFINE,
    Rendered,
    copy_chart,
    render,
    with_existing_secrets,
)

# A template added to the test copy only, so the certificate helper is covered even for
# components whose templates do not exist yet.
_DEMO_CERT = """\
{{- $c := include "rpcscope-stack.tlsCert" (dict "ctx" $ "component" "demo") | fromJson }}
apiVersion: v1
kind: Secret
metadata:
  name: {{ include "rpcscope-stack.componentName" (dict "ctx" $ "component" "demo") }}-tls
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "rpcscope-stack.labels" (dict "ctx" $ "component" "demo") | nindent 4 }}
type: kubernetes.io/tls
data:
  tls.crt: {{ index $c "tls.crt" }}
  tls.key: {{ index $c "tls.key" }}
  ca.crt: {{ index $c "ca.crt" }}
"""


@pytest.fixture
def chart(tmp_path: Path) -> Path:
    copy = copy_chart(tmp_path)
    (copy / "templates" / "zz-demo-cert.yaml").write_text(_DEMO_CERT)
    return with_existing_secrets(copy, [])


def _secrets(r: Rendered) -> dict[str, dict[str, bytes]]:
    return {
        s["metadata"]["name"]: r.secret_data(s["metadata"]["name"]) for s in r.of_kind("Secret")
    }


def test_all_lookups_go_through_the_one_replaceable_helper() -> None:
    helpers = (CHART_DIR / "templates" / "_helpers.tpl").read_text()
    define = LOOKUP_DEFINE.search(helpers)
    assert define is not None and "lookup " in define.group(0)
    for tpl in (CHART_DIR / "templates").rglob("*"):
        if not tpl.is_file():
            continue
        text = tpl.read_text()
        if tpl.name == "_helpers.tpl":
            text = LOOKUP_DEFINE.sub("", text)
        assert not re.search(r"\blookup\s+\"", text), f"direct lookup in {tpl}"


def test_fresh_installs_generate_different_secrets(chart: Path) -> None:
    """Baseline: without existing Secrets every render generates new material."""
    a, b = _secrets(render({}, chart_dir=chart)), _secrets(render({}, chart_dir=chart))
    grafana = next(n for n in a if n.endswith("-grafana-credentials"))
    assert a[grafana]["admin-password"] != b[grafana]["admin-password"]
    ca = next(n for n in a if n.endswith("-ca"))
    assert a[ca]["tls.crt"] != b[ca]["tls.crt"]


def test_upgrade_with_existing_secrets_keeps_every_generated_value(chart: Path) -> None:
    first = render({}, chart_dir=chart)
    before = _secrets(first)
    assert before, "nothing generated"
    with_existing_secrets(chart, first.of_kind("Secret"))
    after = _secrets(render({}, chart_dir=chart, is_upgrade=True))
    assert after.keys() == before.keys()
    for name in before:
        assert after[name] == before[name], f"{name} changed on upgrade"


def test_grafana_password_survives_a_values_change(chart: Path) -> None:
    first = render({}, chart_dir=chart)
    with_existing_secrets(chart, first.of_kind("Secret"))
    second = render({"grafana": {"replicas": 1, "persistence": {"size": "5Gi"}}}, chart_dir=chart)
    name = f"{first.name('grafana')}-credentials"
    assert second.secret_data(name) == first.secret_data(name)


def _openssl_verify(tmp: Path, ca: bytes, cert: bytes) -> subprocess.CompletedProcess[str]:
    (tmp / "ca.pem").write_bytes(ca)
    (tmp / "cert.pem").write_bytes(cert)
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not on PATH")
    return subprocess.run(
        [openssl, "verify", "-CAfile", str(tmp / "ca.pem"), str(tmp / "cert.pem")],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def test_deleted_certificate_is_reissued_by_the_same_ca(chart: Path, tmp_path: Path) -> None:
    """Rotating one certificate (delete its Secret, upgrade) keeps the CA clients trust."""
    first = render({}, chart_dir=chart)
    demo = f"{first.name('demo')}-tls"
    kept = [s for s in first.of_kind("Secret") if s["metadata"]["name"] != demo]
    with_existing_secrets(chart, kept)
    second = render({}, chart_dir=chart, is_upgrade=True)
    old, new = first.secret_data(demo), second.secret_data(demo)
    assert new["tls.crt"] != old["tls.crt"]
    assert new["ca.crt"] == old["ca.crt"]
    res = _openssl_verify(tmp_path, old["ca.crt"], new["tls.crt"])
    assert res.returncode == 0, res.stdout + res.stderr


def test_certificate_names_the_service(chart: Path, tmp_path: Path) -> None:
    r = render({}, chart_dir=chart)
    demo = r.secret_data(f"{r.name('demo')}-tls")
    assert _openssl_verify(tmp_path, demo["ca.crt"], demo["tls.crt"]).returncode == 0
    openssl = shutil.which("openssl")
    assert openssl is not None
    (tmp_path / "c.pem").write_bytes(demo["tls.crt"])
    text = subprocess.run(
        [openssl, "x509", "-in", str(tmp_path / "c.pem"), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    svc = r.name("demo")
    for san in (
        svc,
        f"{svc}.observability.svc",
        f"{svc}.observability.svc.cluster.local",
        f"*.{svc}-headless.observability.svc",
    ):
        assert f"DNS:{san}" in text, san


def test_user_ca_is_used_and_no_chart_ca_is_created(chart: Path, tmp_path: Path) -> None:
    donor = render({}, chart_dir=chart)
    ca_secret = next(s for s in donor.of_kind("Secret") if s["metadata"]["name"].endswith("-ca"))
    user_ca = {**ca_secret, "metadata": {"name": "corp-ca", "namespace": "observability"}}
    with_existing_secrets(chart, [user_ca])
    r = render({"global": {"tls": {"existingCASecret": "corp-ca"}}}, chart_dir=chart)
    assert not [s for s in r.of_kind("Secret") if s["metadata"]["name"].endswith("-ca")]
    demo = r.secret_data(f"{r.name('demo')}-tls")
    assert demo["ca.crt"] == donor.secret_data(ca_secret["metadata"]["name"])["tls.crt"]
    assert _openssl_verify(tmp_path, demo["ca.crt"], demo["tls.crt"]).returncode == 0


def test_certificates_are_reissued_when_the_ca_changes(chart: Path, tmp_path: Path) -> None:
    """Switching to your own CA must not keep certificates the new CA never signed."""
    first = render({}, chart_dir=chart)
    demo = f"{first.name('demo')}-tls"
    ca_secret = next(s for s in first.of_kind("Secret") if s["metadata"]["name"].endswith("-ca"))
    other = render({}, chart_dir=chart)  # a second, unrelated CA
    other_ca = next(s for s in other.of_kind("Secret") if s["metadata"]["name"].endswith("-ca"))
    user_ca = {**other_ca, "metadata": {"name": "corp-ca", "namespace": "observability"}}
    with_existing_secrets(chart, [*first.of_kind("Secret"), user_ca])
    second = render({"global": {"tls": {"existingCASecret": "corp-ca"}}}, chart_dir=chart)
    new = second.secret_data(demo)
    assert new["tls.crt"] != first.secret_data(demo)["tls.crt"]
    assert new["ca.crt"] == other.secret_data(other_ca["metadata"]["name"])["tls.crt"]
    assert new["ca.crt"] != first.secret_data(ca_secret["metadata"]["name"])["tls.crt"]
    res = _openssl_verify(tmp_path, new["ca.crt"], new["tls.crt"])
    assert res.returncode == 0, res.stdout + res.stderr


def test_generated_ca_is_kept_on_uninstall(chart: Path) -> None:
    r = render({}, chart_dir=chart)
    ca = next(s for s in r.of_kind("Secret") if s["metadata"]["name"].endswith("-ca"))
    assert ca["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
