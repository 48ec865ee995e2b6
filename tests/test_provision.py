"""`rpcscope provision` against local stand-ins for Elasticsearch and Kibana.

The stand-ins answer the documented APIs the command uses (GET /, /_xpack, /_cluster/health,
_ilm/policy, _component_template, _security/role|user|_authenticate; Kibana's /api/status, data
views and saved objects _bulk_get/_import) the way the reference pages show, including what a
real server adds on a GET (``min_age: 0ms``, nested string settings, role defaults), so the
idempotency check meets the shapes it would meet for real. docs/verification.md says what this
does not prove.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from rpcscope._cli import main

REPO = Path(__file__).resolve().parents[1]
ADMIN = ("elastic", "s3cret-admin-pw")


@dataclass
class State:
    """What the stand-in servers hold and saw."""

    es_version: str = "8.15.0"
    kibana_version: str = "8.15.0"
    license_type: str = "basic"
    license_status: str = "active"
    security: bool = True
    data_nodes: int = 1
    api_key: str | None = None
    import_errors: list[dict[str, Any]] = field(default_factory=list)
    store: dict[str, Any] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, auth
    client_pid: int | None = None
    client_cmdlines: list[bytes] = field(default_factory=list)

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _ in self.calls
                if m in ("PUT", "POST") and "_bulk_get" not in p]


def _nested_settings(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = str(value)
    return out


class _Handler(BaseHTTPRequestHandler):
    state: State
    product: str  # "es" | "kibana"

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if self.product == "es":
            self.send_header("X-Elastic-Product", "Elasticsearch")
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="security"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self, auth: str) -> bool:
        s = self.state
        if s.api_key and auth == f"ApiKey {s.api_key}":
            return True
        basic = "Basic " + base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
        return auth == basic

    def _handle(self) -> None:
        s = self.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        auth = self.headers.get("Authorization", "")
        s.calls.append((self.command, self.path, auth))
        if s.client_pid is not None:
            s.client_cmdlines.append(Path(f"/proc/{s.client_pid}/cmdline").read_bytes())
        path = urlsplit(self.path).path
        if self.product == "es" and path == "/_security/_authenticate":
            for name, user in s.users.items():
                token = base64.b64encode(f"{name}:{user['password']}".encode()).decode()
                if auth == f"Basic {token}":
                    return self._reply(200, {"username": name, "roles": user["roles"]})
        if not self._authorized(auth):
            return self._reply(401, {"error": {"type": "security_exception"}, "status": 401})
        if self.product == "es":
            return self._es(path, json.loads(raw) if raw else None)
        if self.command == "POST" and self.headers.get("kbn-xsrf") is None:
            return self._reply(400, {"message": "Request must contain a kbn-xsrf header."})
        return self._kibana(path, raw)

    do_GET = do_PUT = do_POST = _handle

    def _es(self, path: str, body: Any) -> None:
        s, method = self.state, self.command
        missing = {"error": {"type": "resource_not_found_exception"}, "status": 404}
        if path == "/":
            return self._reply(200, {"version": {"number": s.es_version},
                                     "tagline": "You Know, for Search"})
        if path == "/_xpack":
            return self._reply(200, {
                "license": {"type": s.license_type, "status": s.license_status},
                "features": {"security": {"available": True, "enabled": s.security}}})
        if path == "/_cluster/health":
            return self._reply(200, {"status": "green", "number_of_data_nodes": s.data_nodes})
        if method == "PUT":
            if path.startswith("/_security/user/"):
                s.users[path.rsplit("/", 1)[1]] = body
                return self._reply(200, {"created": True})
            s.store[path] = body
            return self._reply(200, {"acknowledged": True})
        if path.startswith("/_security/user/"):
            name = path.rsplit("/", 1)[1]
            if name not in s.users:
                return self._reply(404, {})
            return self._reply(200, {name: {"username": name, "roles": s.users[name]["roles"],
                                            "enabled": True, "metadata": {}}})
        if path not in s.store:
            return self._reply(404, {} if "_security" in path else missing)
        stored = copy.deepcopy(s.store[path])
        name = path.rsplit("/", 1)[1]
        if path.startswith("/_ilm/policy/"):
            # What GET _ilm/policy shows for a PUT policy: defaults filled in.
            phases = stored["policy"]["phases"]
            phases["hot"].setdefault("min_age", "0ms")
            phases["delete"]["actions"]["delete"].setdefault("delete_searchable_snapshot", True)
            return self._reply(200, {name: {"version": 1, "modified_date": "2026-01-01",
                                            "policy": stored["policy"], "in_use_by": {}}})
        if path.startswith("/_component_template/"):
            stored["template"]["settings"] = {"index": _nested_settings(
                {k.removeprefix("index."): v for k, v in stored["template"]["settings"].items()})}
            return self._reply(200, {"component_templates": [
                {"name": name, "component_template": stored}]})
        if path.startswith("/_security/role/"):
            for entry in stored.get("indices", []):
                entry.setdefault("allow_restricted_indices", False)
            role = {"cluster": [], "run_as": [], "metadata": {}, "applications": [],
                    "transient_metadata": {"enabled": True}, **stored}
            return self._reply(200, {name: role})
        return self._reply(404, missing)

    def _kibana(self, path: str, raw: bytes) -> None:
        s, method = self.state, self.command
        if path == "/api/status":
            return self._reply(200, {"version": {"number": s.kibana_version},
                                     "status": {"overall": {"level": "available"}}})
        if path.startswith("/api/data_views/data_view"):
            if method == "POST" and path == "/api/data_views/data_view":
                view = json.loads(raw)["data_view"]
                s.store[("index-pattern", view["id"])] = view
                return self._reply(200, {"data_view": view})
            view_id = path.rsplit("/", 1)[1]
            if ("index-pattern", view_id) not in s.store:
                return self._reply(404, {"statusCode": 404, "error": "Not Found"})
            if method == "POST":
                s.store["index-pattern", view_id].update(json.loads(raw)["data_view"])
            return self._reply(200, {"data_view": {"fields": {},
                                                   **s.store["index-pattern", view_id]}})
        if path == "/api/saved_objects/_bulk_get":
            found = []
            for ref in json.loads(raw):
                key = (ref["type"], ref["id"])
                if key in s.store:
                    found.append({**s.store[key], "version": "WzEsMV0=",
                                  "updated_at": "2026-01-01T00:00:00Z", "namespaces": ["default"]})
                else:
                    found.append({**ref, "error": {"statusCode": 404, "error": "Not Found"}})
            return self._reply(200, {"saved_objects": found})
        if path == "/api/saved_objects/_import":
            message = BytesParser(policy=HTTP).parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
            part = next(iter(message.iter_parts()))
            assert part.get_param("name", header="content-disposition") == "file"
            objects = [json.loads(line) for line in part.get_payload(decode=True).splitlines()
                       if line.strip()]
            if s.import_errors:
                return self._reply(200, {"success": False, "successCount": 0,
                                         "errors": s.import_errors})
            for obj in objects:
                s.store[(obj["type"], obj["id"])] = obj
            return self._reply(200, {"success": True, "successCount": len(objects)})
        return self._reply(404, {"statusCode": 404, "error": "Not Found"})


def _start(state: State, product: str, tls: ssl.SSLContext | None = None) -> tuple[str, Any]:
    handler = type("H", (_Handler,), {"state": state, "product": product})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    scheme = "https" if tls else "http"
    return f"{scheme}://127.0.0.1:{server.server_address[1]}", server


@pytest.fixture
def stack() -> Iterator[tuple[State, str, str]]:
    state = State()
    es, es_server = _start(state, "es")
    kb, kb_server = _start(state, "kibana")
    yield state, es, kb
    for server in (es_server, kb_server):
        server.shutdown()
        server.server_close()


@pytest.fixture
def admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("ELASTICSEARCH_", "KIBANA_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ELASTICSEARCH_USERNAME", ADMIN[0])
    monkeypatch.setenv("ELASTICSEARCH_PASSWORD", ADMIN[1])


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["provision", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _chart_bodies() -> dict[str, Any]:
    d = REPO / "charts/rpcscope-stack/files/elasticsearch"
    return {p.name: json.loads(p.read_text()) for p in d.glob("*.json")}


@pytest.mark.usefixtures("admin_env")
def test_first_run_installs_everything_second_run_changes_nothing(
        stack: tuple[State, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    state, es, kb = stack
    code, out, err = _run(capsys, "--elasticsearch", es, "--kibana", kb)
    assert (code, err) == (0, "")
    bodies = _chart_bodies()
    # The chart's bodies, with the chart's defaults (single data node -> 0 replicas).
    assert state.store["/_ilm/policy/rpcscope-logs"] == bodies["ilm-policy.json"]
    template = state.store["/_component_template/logs@custom"]
    assert template["template"]["settings"]["index.number_of_replicas"] == 0
    for role in ("rpcscope_fluentd_writer", "rpcscope_monitor", "rpcscope_logs_reader"):
        assert state.store[f"/_security/role/{role}"] == bodies[f"role-{role}.json"]
    ndjson = (REPO / "charts/rpcscope-stack/files/kibana/kibana_logs.ndjson").read_text()
    objects = [json.loads(line) for line in ndjson.splitlines()]
    for obj in objects:
        assert (obj["type"], obj["id"]) in state.store, obj["id"]
    view = state.store["index-pattern", "rpcscope-logs"]
    assert view["title"] == "logs-rpcscope*" and view["timeFieldName"] == "@timestamp"
    assert out.count("created") == 5 + len(objects)
    assert "done: 9 changed, 0 unchanged" in out

    first_writes = len(state.writes())
    code, out, err = _run(capsys, "--elasticsearch", es, "--kibana", kb)
    assert (code, err) == (0, "")
    assert len(state.writes()) == first_writes, "a second run must write nothing"
    assert "done: 0 changed, 9 unchanged" in out
    assert "unchanged      Elasticsearch ILM policy rpcscope-logs" in out


@pytest.mark.usefixtures("admin_env")
def test_a_changed_value_is_the_only_update(
        stack: tuple[State, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    state, es, kb = stack
    assert _run(capsys, "--elasticsearch", es, "--kibana", kb)[0] == 0
    state.store["/_security/role/rpcscope_logs_reader"]["indices"][0]["privileges"].append(
        "write")  # someone widened the reader role
    before = len(state.writes())
    code, out, _ = _run(capsys, "--elasticsearch", es, "--retention", "30d")
    assert code == 0
    assert state.writes()[before:] == [("PUT", "/_ilm/policy/rpcscope-logs"),
                                       ("PUT", "/_security/role/rpcscope_logs_reader")]
    assert state.store["/_ilm/policy/rpcscope-logs"]["policy"]["phases"]["delete"][
        "min_age"] == "30d"
    assert "updated        Elasticsearch role rpcscope_logs_reader" in out


@pytest.mark.usefixtures("admin_env")
def test_dry_run_lists_the_changes_and_makes_none(
        stack: tuple[State, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    state, es, kb = stack
    code, out, _ = _run(capsys, "--elasticsearch", es, "--kibana", kb, "--dry-run")
    assert code == 0
    assert state.writes() == [] and state.store == {}
    assert "would create   Elasticsearch ILM policy rpcscope-logs" in out
    assert "would create   Kibana dashboard rpcscope-logs-overview" in out
    assert "dry run: 9 change(s) not made, 0 unchanged" in out


@pytest.mark.usefixtures("admin_env")
def test_a_failed_import_is_an_error_not_a_success(
        stack: tuple[State, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    state, _, kb = stack
    state.import_errors = [{"id": "rpcscope-errors", "type": "search",
                            "error": {"type": "missing_references"}}]
    code, out, err = _run(capsys, "--kibana", kb)
    assert code == 2
    assert "did not import" in err and "missing_references" in err
    assert "created        Kibana search" not in out


def test_wrong_credentials_get_a_clear_error(
        stack: tuple[State, str, str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, es, kb = stack
    monkeypatch.setenv("ELASTICSEARCH_USERNAME", "elastic")
    monkeypatch.setenv("ELASTICSEARCH_PASSWORD", "wrong")
    code, _, err = _run(capsys, "--elasticsearch", es)
    assert code == 2
    assert "refused the credentials (HTTP 401)" in err and "ELASTICSEARCH_PASSWORD" in err
    monkeypatch.setenv("KIBANA_USERNAME", "elastic")
    monkeypatch.setenv("KIBANA_PASSWORD", "wrong")
    code, _, err = _run(capsys, "--kibana", kb)
    assert code == 2 and "Kibana" in err and "KIBANA_PASSWORD" in err


def test_credentials_in_a_url_are_refused(
        stack: tuple[State, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    state, es, _ = stack
    url = es.replace("http://", f"http://{ADMIN[0]}:{ADMIN[1]}@")
    code, _, err = _run(capsys, "--elasticsearch", url)
    assert code == 2 and "process list" in err and ADMIN[1] not in err
    assert state.calls == []


def test_api_key_from_env_and_kibana_falls_back_to_it(
        stack: tuple[State, str, str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    state, es, kb = stack
    state.api_key = "a2V5OnNlY3JldA=="
    monkeypatch.setenv("ELASTICSEARCH_API_KEY", state.api_key)
    code, _, err = _run(capsys, "--elasticsearch", es, "--kibana", kb)
    assert (code, err) == (0, "")
    assert {auth for _, _, auth in state.calls} == {f"ApiKey {state.api_key}"}


def test_credentials_come_from_a_file_and_never_appear_in_argv(
        stack: tuple[State, str, str], tmp_path: Path) -> None:
    state, es, kb = stack
    (tmp_path / "password").write_text(ADMIN[1] + "\n")
    (tmp_path / "fluentd").write_text("fluentd-pw-123\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ELASTICSEARCH_", "KIBANA_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rpcscope._cli", "provision", "--elasticsearch", es,
         "--kibana", kb, "--username", ADMIN[0], "--password-file", str(tmp_path / "password"),
         "--user", f"fluentd={tmp_path / 'fluentd'}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state.client_pid = proc.pid
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    expected = "Basic " + base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
    assert state.calls and all(auth == expected for m, p, auth in state.calls
                               if p != "/_security/_authenticate")
    assert state.client_cmdlines, "the stand-in saw the client's command line"
    for cmdline in state.client_cmdlines:
        assert ADMIN[1].encode() not in cmdline and b"fluentd-pw-123" not in cmdline
    assert state.users["rpcscope_fluentd"] == {"password": "fluentd-pw-123",
                                               "roles": ["rpcscope_fluentd_writer"]}
    assert "created        Elasticsearch user rpcscope_fluentd" in out


@pytest.mark.usefixtures("admin_env")
def test_a_user_is_unchanged_only_while_its_password_still_works(
        stack: tuple[State, str, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    state, es, _ = stack
    secret = tmp_path / "grafana"
    secret.write_text("first-pw")
    assert _run(capsys, "--elasticsearch", es, "--user", f"grafana={secret}")[0] == 0
    _, out, _ = _run(capsys, "--elasticsearch", es, "--user", f"grafana={secret}")
    assert "unchanged      Elasticsearch user rpcscope_grafana" in out
    secret.write_text("second-pw")
    _, out, _ = _run(capsys, "--elasticsearch", es, "--user", f"grafana={secret}")
    assert "updated        Elasticsearch user rpcscope_grafana" in out
    assert state.users["rpcscope_grafana"]["password"] == "second-pw"


@pytest.mark.usefixtures("admin_env")
@pytest.mark.parametrize(("change", "argv", "message"), [
    ({"es_version": "7.17.9"}, ["--elasticsearch"], "Elasticsearch 7.17.9 at"),
    ({"security": False}, ["--elasticsearch"], "--no-roles"),
    ({"license_type": "platinum", "license_status": "expired"}, ["--elasticsearch"],
     "platinum license is expired: renew it"),
    ({"kibana_version": "8.6.2"}, ["--kibana"], "Kibana 8.6.2 at"),
])
def test_a_target_it_cannot_handle_gets_a_clear_error_and_no_write(
        stack: tuple[State, str, str], capsys: pytest.CaptureFixture[str],
        change: dict[str, Any], argv: list[str], message: str) -> None:
    state, es, kb = stack
    for key, value in change.items():
        setattr(state, key, value)
    code, _, err = _run(capsys, argv[0], es if argv[0] == "--elasticsearch" else kb)
    assert code == 2
    assert message in err
    assert state.writes() == []


@pytest.mark.usefixtures("admin_env")
def test_without_security_no_roles_installs_the_rest(
        stack: tuple[State, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    state, es, _ = stack
    state.security = False
    state.data_nodes = 3
    code, _, err = _run(capsys, "--elasticsearch", es, "--no-roles")
    assert (code, err) == (0, "")
    assert [p for _, p in state.writes()] == ["/_ilm/policy/rpcscope-logs",
                                              "/_component_template/logs@custom"]
    settings = state.store["/_component_template/logs@custom"]["template"]["settings"]
    assert settings["index.number_of_replicas"] == 1  # more than one data node


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tls")

    def ssl_cmd(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl_cmd("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "2", "-subj", "/CN=test-ca")
    ssl_cmd("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl_cmd("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext")
    return d


@pytest.mark.usefixtures("admin_env")
def test_tls_is_verified_against_the_given_ca(
        tls_files: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = State()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls_files / "server.crt", tls_files / "server.key")
    es, es_server = _start(state, "es", ctx)
    kb, kb_server = _start(state, "kibana", ctx)
    try:
        code, _, err = _run(capsys, "--elasticsearch", es)
        assert code == 2 and "--ca-cert" in err  # an unknown CA is refused, not ignored
        code, _, err = _run(capsys, "--kibana", kb)
        assert code == 2 and "--ca-cert" in err
        assert state.writes() == []
        code, _, err = _run(capsys, "--elasticsearch", es, "--kibana", kb,
                            "--ca-cert", str(tls_files / "ca.crt"))
        assert (code, err) == (0, "")
        assert ("PUT", "/_ilm/policy/rpcscope-logs") in state.writes()
    finally:
        for server in (es_server, kb_server):
            server.shutdown()
            server.server_close()


def test_the_bodies_defaults_are_the_charts_defaults() -> None:
    values = yaml.safe_load((REPO / "charts/rpcscope-stack/values.yaml").read_text())
    logs = values["elasticsearch"]["logs"]
    phases = _chart_bodies()["ilm-policy.json"]["policy"]["phases"]
    assert phases["delete"]["min_age"] == logs["retention"]
    assert phases["hot"]["actions"]["rollover"] == {
        "max_age": logs["rolloverMaxAge"],
        "max_primary_shard_size": logs["rolloverMaxPrimaryShardSize"]}


def test_missing_client_names_the_extra(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "elasticsearch", None)  # import fails as if not installed
    code, _, err = _run(capsys, "--elasticsearch", "http://127.0.0.1:1")
    assert code == 2 and "pip install 'rpcscope[provision]'" in err
