"""Run fluentd-config/ in a real Fluentd, against stand-ins the tests start themselves.

The optional `fluentd` suite finds Fluentd through two environment variables:

- ``RPCSCOPE_FLUENTD_CMD``: the command that starts Fluentd, split like a shell would (e.g.
  ``fluentd``, or ``ruby -I /opt/fluentd/lib /opt/fluentd/bin/fluentd`` for a source checkout).
- ``RPCSCOPE_FLUENTD_PLUGIN_DIRS`` (optional): plugin source checkouts, separated by ``:``. Each
  becomes ``-I DIR/lib`` and, when ``DIR/lib/fluent/plugin`` exists, ``-p DIR/lib/fluent/plugin``
  (a library such as prometheus-client only needs ``-I``). Leave it unset when the plugins are
  installed gems.

Stand-ins, all on 127.0.0.1 with ports picked free: a test CA made with the ``openssl`` command,
an HTTPS server that answers ``_bulk`` the way Elasticsearch does (per-item results, 409 for an
``_id`` it already holds, per-item 400s and whole-request outages on demand), and a Forward
client that does the TLS + shared-key handshake and waits for the ack. Elasticsearch's wire
format is written by hand here because the point is to see exactly what Fluentd sends.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import shlex
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgpack
from fluentd_conf import CONFIG_DIR

CMD = os.environ.get("RPCSCOPE_FLUENTD_CMD", "")
PLUGIN_DIRS = [d for d in os.environ.get("RPCSCOPE_FLUENTD_PLUGIN_DIRS", "").split(":") if d]
SKIP_REASON = (
    "RPCSCOPE_FLUENTD_CMD is not set: no Fluentd with the Elasticsearch, kubernetes_metadata, "
    "CRI, concat and Prometheus plugins to run (see tests/fluentd/fluentd_run.py)"
)
SHARED_KEY = "forward-shared-key-for-tests"
SELF_HOSTNAME = "aggregator.test"


def fluentd_argv(*args: str) -> list[str]:
    """The Fluentd command line from the environment, with the plugin directories loaded."""
    argv = shlex.split(CMD)
    for d in PLUGIN_DIRS:
        argv += ["-I", f"{d}/lib"]
        if Path(d, "lib", "fluent", "plugin").is_dir():
            argv += ["-p", f"{d}/lib/fluent/plugin"]
    return [*argv, *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


# --- TLS ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestPKI:
    __test__ = False  # not a test class

    ca: Path
    cert: Path
    key: Path


def make_pki(directory: Path) -> TestPKI:
    """A CA and a server certificate for localhost / 127.0.0.1, made with the openssl CLI."""
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=rpcscope test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.csr",
        "-subj", "/CN=localhost")  # fmt: skip
    (directory / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "tls.crt", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    return TestPKI(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")


# --- Elasticsearch _bulk stand-in -----------------------------------------------------------------


@dataclass
class BulkStandIn:
    """HTTPS server answering `GET /` and `POST /_bulk` like Elasticsearch 8 does.

    `documents[index][_id]` holds what was stored; `creates` counts every `create` per `_id`
    (so a test can see duplicates that were answered 409). `down` answers every request with
    503, as a node without a master does. Documents whose `message` contains `reject_marker` get
    a per-item 400 mapper_parsing_exception with `REJECT_REASON`.
    """

    pki: TestPKI
    reject_marker: str = "REJECT-ME"
    down: bool = False
    documents: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    creates: Counter[str] = field(default_factory=Counter)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    REJECT_REASON = "failed to parse field [rpc.method] of type [keyword] in document"

    def __post_init__(self) -> None:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Elastic-Product", "Elasticsearch")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _body(self) -> bytes:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                return raw

            def do_GET(self) -> None:
                if stand_in.down:
                    self._reply(503, {"error": "unavailable", "status": 503})
                    return
                self._reply(
                    200,
                    {
                        "name": "stand-in",
                        "cluster_name": "rpcscope-test",
                        "version": {"number": "8.11.0", "build_flavor": "default"},
                        "tagline": "You Know, for Search",
                    },
                )

            do_HEAD = do_GET

            def do_POST(self) -> None:
                body = self._body()
                if stand_in.down:
                    self._reply(503, {"error": "master_not_discovered_exception", "status": 503})
                    return
                if not self.path.split("?")[0].endswith("/_bulk"):
                    self._reply(404, {"error": f"no handler for {self.path}", "status": 404})
                    return
                self._reply(200, stand_in.bulk(body))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.pki.cert, self.pki.key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}"

    def bulk(self, body: bytes) -> dict[str, Any]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        items: list[dict[str, Any]] = []
        for action, doc in zip(lines[0::2], lines[1::2], strict=True):
            ((op, meta),) = action.items()
            index, doc_id = meta["_index"], meta.get("_id")
            result: dict[str, Any] = {"_index": index, "_id": doc_id}
            with self.lock:
                if op != "create" or doc_id is None:
                    result |= _error(400, "illegal_argument_exception", "expected create + _id")
                elif self.reject_marker in str(doc.get("message", "")):
                    result |= _error(400, "mapper_parsing_exception", self.REJECT_REASON)
                    self.rejected.append(doc)
                else:
                    self.creates[doc_id] += 1
                    stored = self.documents.setdefault(index, {})
                    if doc_id in stored:
                        result |= _error(409, "version_conflict_engine_exception",
                                         f"[{doc_id}]: version conflict, document already exists")
                    else:
                        stored[doc_id] = doc
                        result |= {"status": 201, "result": "created", "_version": 1}
            items.append({op: result})
        errors = any(result["status"] >= 300 for item in items for result in item.values())
        return {"took": 1, "errors": errors, "items": items}

    def all_documents(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                doc | {"_index": index, "_id": doc_id}
                for index, docs in self.documents.items()
                for doc_id, doc in docs.items()
            ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _error(status: int, kind: str, reason: str) -> dict[str, Any]:
    return {"status": status, "error": {"type": kind, "reason": reason}}


# --- Fluentd processes --------------------------------------------------------------------------


class Fluentd:
    """One Fluentd process running an entry file of fluentd-config/ with the given environment."""

    def __init__(self, entry: str, env: dict[str, str], log_path: Path) -> None:
        self.entry = entry
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Fluentd:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            fluentd_argv("-c", str(CONFIG_DIR / self.entry), "--disable-shared-socket"),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for(
            f"{self.entry} to start (log: {self.log_path})",
            lambda: self._running_since(offset),
            timeout=120,
        )
        return self

    def _running_since(self, offset: int) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.entry} exited at start:\n{self.log()[-4000:]}")
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return b"fluentd worker is now running" in f.read()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> Iterator[dict[str, Any]]:
        """Fluentd's own log lines (system.conf makes them JSON), skipping anything else."""
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue

    def stop(self) -> None:
        """SIGTERM (graceful: buffers flushed at shutdown) and wait."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=120)

    def kill(self) -> None:
        """SIGKILL the whole process group (supervisor and worker): nothing is flushed."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def base_env(state: Path, es: BulkStandIn, pki: TestPKI) -> dict[str, str]:
    """Everything both roles read (fluentd-config/README.md), pointed at the stand-ins."""
    password = state.parent / f"{state.name}-es-password"
    password.write_text("not-a-real-password\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLUENT_", "KUBERNETES_"))}
    return env | {
        "FLUENT_STATE_PATH": str(state),
        "FLUENT_ELASTICSEARCH_HOSTS": es.url,
        "FLUENT_ELASTICSEARCH_PASSWORD_FILE": str(password),
        "FLUENT_ELASTICSEARCH_CA_FILE": str(pki.ca),
        "FLUENT_PROMETHEUS_BIND": "127.0.0.1",
        "FLUENT_PROMETHEUS_PORT": str(free_port()),
        "TZ": "UTC",
    }


def aggregator_env(state: Path, es: BulkStandIn, pki: TestPKI, port: int) -> dict[str, str]:
    key = state.parent / f"{state.name}-shared-key"
    key.write_text(SHARED_KEY + "\n")
    return base_env(state, es, pki) | {
        "FLUENT_FORWARD_BIND": "127.0.0.1",
        "FLUENT_FORWARD_PORT": str(port),
        "FLUENT_FORWARD_TLS_CERT_PATH": str(pki.cert),
        "FLUENT_FORWARD_TLS_KEY_PATH": str(pki.key),
        "FLUENT_FORWARD_SHARED_KEY_FILE": str(key),
        "FLUENT_FORWARD_SELF_HOSTNAME": SELF_HOSTNAME,
        "FLUENT_BUFFER_OVERFLOW_ACTION": "throw_exception",
    }


def tailer_env(state: Path, es: BulkStandIn, pki: TestPKI, containers: Path) -> dict[str, str]:
    # No KUBERNETES_SERVICE_HOST: kubernetes_metadata then takes namespace, pod, container and
    # container id from the file name alone (no API server here).
    return base_env(state, es, pki) | {
        "FLUENT_CONTAINER_TAIL_PATH": str(containers / "*.log"),
        "FLUENT_CLUSTER_NAME": "test-cluster",
    }


# --- Forward client -----------------------------------------------------------------------------


class ForwardClient:
    """A Forward protocol v1 client: TLS, HELO/PING/PONG with the shared key, acked batches.

    Kept to what these tests need; rpcscope's own shipper is the product's client.
    """

    def __init__(
        self,
        port: int,
        pki: TestPKI,
        shared_key: str = SHARED_KEY,
        server_hostname: str = "localhost",
    ) -> None:
        """Connect to 127.0.0.1:`port`, verifying the certificate against `pki.ca` for
        `server_hostname` (the name a real client would dial)."""
        context = ssl.create_default_context(cafile=str(pki.ca))
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock = context.wrap_socket(raw, server_hostname=server_hostname)
        self.unpacker = msgpack.Unpacker(raw=False)
        helo = self._read()
        assert helo[0] == "HELO", helo
        nonce, auth = helo[1]["nonce"], helo[1]["auth"]
        salt = os.urandom(16)
        client = "forward-client.test"
        digest = hashlib.sha512(salt + client.encode() + _b(nonce) + shared_key.encode())
        self._write(["PING", client, salt, digest.hexdigest(), "", ""])
        pong = self._read()
        assert pong[0] == "PONG" and pong[1] is True, pong
        expected = hashlib.sha512(salt + pong[3].encode() + _b(nonce) + shared_key.encode())
        assert pong[4] == expected.hexdigest(), "server's PONG digest does not verify"
        del auth

    def _write(self, obj: Any) -> None:
        self.sock.sendall(msgpack.packb(obj, use_bin_type=True))

    def _read(self) -> Any:
        while True:
            for obj in self.unpacker:
                return obj
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.unpacker.feed(data)

    def send(
        self, tag: str, records: list[dict[str, Any]], chunk: str | None = None
    ) -> str:
        """PackedForward with EventTime; returns the chunk id once the server acked it."""
        now = time.time_ns()
        # EventTime: ext type 0, uint32 BE seconds + uint32 BE nanoseconds.
        event_time = msgpack.ExtType(0, divmod(now, 10**9)[0].to_bytes(4, "big")
                                     + (now % 10**9).to_bytes(4, "big"))  # fmt: skip
        entries = b"".join(msgpack.packb([event_time, r], use_bin_type=True) for r in records)
        chunk = chunk or base64.b64encode(os.urandom(16)).decode()
        self._write([tag, entries, {"chunk": chunk, "size": len(records)}])
        reply = self._read()
        assert reply == {"ack": chunk}, reply
        return chunk

    def close(self) -> None:
        try:
            self.sock.unwrap()  # TLS close_notify, so the server sees a clean end
        except OSError:
            pass
        self.sock.close()


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


# --- CRI log files ------------------------------------------------------------------------------


def cri_line(payload: str, stream: str = "stdout", partial: bool = False, at: str = "") -> str:
    """One line as containerd writes it: `<RFC 3339 nano time> <stream> <P|F> <text>`."""
    at = at or time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}Z"
    return f"{at} {stream} {'P' if partial else 'F'} {payload}\n"


def container_log(directory: Path, pod: str, namespace: str, container: str) -> Path:
    """The kubelet's file name, which kubernetes_metadata reads pod/namespace/container from."""
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{pod}_{namespace}_{container}-{'ab' * 32}.log"
