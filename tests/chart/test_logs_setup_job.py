"""Runs the Elasticsearch setup Job's script for real against a local HTTPS stand-in.

The script (rendered into the setup ConfigMap) is executed with the machine's `sh` and `curl`
(the Job uses curlimages/curl's busybox sh and curl), against a Python HTTPS server that
presents the chart's own generated Elasticsearch certificate (its SANs include 127.0.0.1) and
records every request. Only the mount paths are rewritten to a temporary directory. This checks
what the Job does to a cluster: the calls, their bodies, the credentials, and that it fails
loudly when Elasticsearch refuses a call. It does not check Elasticsearch's own acceptance of
the bodies (no Elasticsearch here).
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from chart_render import Rendered, render

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("sh") is None,
    reason="needs sh and curl to run the setup Job's script",
)


class _Recorder(BaseHTTPRequestHandler):
    calls: list[dict[str, Any]]
    fail_path: str | None

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        self.calls.append(
            {
                "method": self.command,
                "path": self.path,
                "auth": self.headers.get("Authorization", ""),
                "body": json.loads(body) if body else None,
            }
        )
        status = 400 if self.fail_path and self.path.startswith(self.fail_path) else 200
        payload = b'{"error":"refused by test"}' if status == 400 else b'{"acknowledged":true}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_PUT = do_POST = _handle

    def log_message(self, *args: Any) -> None:
        pass


def _serve(
    tmp: Path, r: Rendered, fail_path: str | None
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    tls = r.secret_data(r.name("elasticsearch") + "-tls")
    (tmp / "server.crt").write_bytes(tls["tls.crt"])
    (tmp / "server.key").write_bytes(tls["tls.key"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "server.crt", tmp / "server.key")
    calls: list[dict[str, Any]] = []
    handler = type("Handler", (_Recorder,), {"calls": calls, "fail_path": fail_path})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        server.server_close()


def _lay_out_mounts(tmp: Path, r: Rendered) -> str:
    """Write the Job's mounts under tmp and return its script with the paths rewritten."""
    es = r.name("elasticsearch")
    setup = r.get("ConfigMap", es + "-setup")["data"]
    job = r.job("elasticsearch-setup")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in job["volumes"]}
    script = setup["setup.sh"]
    real: dict[str, Path] = {}
    mounts = sorted(job["containers"][0]["volumeMounts"], key=lambda m: -len(m["mountPath"]))
    for i, mount in enumerate(mounts):
        target = tmp / f"mount{i}"
        target.mkdir(parents=True, exist_ok=True)
        vol = volumes[mount["name"]]
        if "configMap" in vol:
            for key, text in setup.items():
                (target / key).write_text(text)
        elif "secret" in vol:
            data = r.secret_data(vol["secret"]["secretName"])
            for item in vol["secret"]["items"]:
                (target / item["path"]).write_bytes(data[item["key"]])
        token = f"@@MOUNT{i}@@"
        real[token] = target
        # Longest paths first, through tokens, so /secrets/x never matches inside another.
        script = script.replace(mount["mountPath"] + "/", token + "/")
        script = script.replace(mount["mountPath"] + " ", token + " ")
        for end in ('"', "\n"):
            script = script.replace(mount["mountPath"] + end, token + end)
    for token, target in real.items():
        script = script.replace(token, str(target))
    return script


def _run(
    tmp: Path, r: Rendered, fail_path: str | None = None
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    script = _lay_out_mounts(tmp, r)
    (tmp / "setup.sh").write_text(script)
    for url, calls in _serve(tmp, r, fail_path):
        proc = subprocess.run(
            ["sh", str(tmp / "setup.sh")],
            env={"PATH": "/usr/bin:/bin", "ES_URL": url},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return proc, calls
    raise AssertionError("server did not start")


def _basic(user: str, password: bytes) -> str:
    return "Basic " + base64.b64encode(user.encode() + b":" + password).decode()


def test_setup_job_configures_elasticsearch_as_the_elastic_user(tmp_path: Path) -> None:
    r = render()
    proc, calls = _run(tmp_path, r)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    elastic = r.secret_data(r.name("elasticsearch") + "-credentials")["password"]
    assert {c["auth"] for c in calls} == {_basic("elastic", elastic)}
    assert calls[0]["method"] == "GET" and calls[0]["path"].startswith("/_cluster/health")
    by_path = {(c["method"], c["path"]): c["body"] for c in calls[1:]}
    ilm = by_path[("PUT", "/_ilm/policy/rpcscope-logs")]
    assert ilm["policy"]["phases"]["delete"]["min_age"] == "7d"
    custom = by_path[("PUT", "/_component_template/logs@custom")]
    assert custom["template"]["settings"]["index.lifecycle.name"] == "rpcscope-logs"
    for role in ("rpcscope_fluentd_writer", "rpcscope_monitor", "rpcscope_logs_reader"):
        assert ("PUT", f"/_security/role/{role}") in by_path
    users = {
        "rpcscope_fluentd": ("fluentd", "rpcscope_fluentd_writer"),
        "rpcscope_monitor": ("elasticsearch-exporter", "rpcscope_monitor"),
        "rpcscope_grafana": ("grafana-elasticsearch", "rpcscope_logs_reader"),
    }
    for user, (component, role) in users.items():
        body = by_path[("PUT", f"/_security/user/{user}")]
        secret = r.secret_data(r.name(component) + "-credentials")
        assert secret["username"].decode() == user
        assert body == {"password": secret["password"].decode(), "roles": [role]}
    kibana = by_path[("POST", "/_security/user/kibana_system/_password")]
    assert kibana == {
        "password": r.secret_data(r.name("kibana") + "-credentials")["password"].decode()
    }
    assert "setup complete" in proc.stdout
    # Nothing secret is left on the (memory-backed) scratch volume.
    job = r.job("elasticsearch-setup")["spec"]["template"]["spec"]
    mounts = sorted(job["containers"][0]["volumeMounts"], key=lambda m: -len(m["mountPath"]))
    (scratch,) = [i for i, m in enumerate(mounts) if m["mountPath"] == "/tmp"]
    assert list((tmp_path / f"mount{scratch}").iterdir()) == []


def test_setup_job_refuses_to_send_an_empty_password(tmp_path: Path) -> None:
    r = render()
    script = _lay_out_mounts(tmp_path, r)
    (fluentd_dir,) = {
        line.split()[-1]
        for line in script.splitlines()
        if line.startswith("user rpcscope_fluentd_writer ")
    }
    Path(fluentd_dir, "password").write_text("")
    (tmp_path / "setup.sh").write_text(script)
    for url, calls in _serve(tmp_path, r, None):
        proc = subprocess.run(
            ["sh", str(tmp_path / "setup.sh")],
            env={"PATH": "/usr/bin:/bin", "ES_URL": url},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode != 0
        assert "empty secret file" in proc.stderr
        assert not any(c["path"] == "/_security/user/rpcscope_fluentd" for c in calls)


def test_setup_job_fails_loudly_when_elasticsearch_refuses(tmp_path: Path) -> None:
    r = render()
    proc, calls = _run(tmp_path, r, fail_path="/_security/role/rpcscope_monitor")
    assert proc.returncode != 0
    assert "FAIL  PUT /_security/role/rpcscope_monitor -> HTTP 400" in proc.stdout
    assert not any(c["path"].startswith("/_security/user/") for c in calls)
