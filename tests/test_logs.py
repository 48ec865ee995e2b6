"""Access-log sinks and content: redaction, app-log correlation, sink selection, loss accounting."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import _svc
import grpc
import pytest

import rpcscope
from rpcscope.testing import CaptureSink, sample_value, wait_for_logs, wait_until

SECRETS = {
    "authorization": "Bearer s3cr3t-token",
    "cookie": "session=s3cr3t-cookie",
    "x-api-key": "s3cr3t-apikey",
    "x-auth-token": "s3cr3t-auth",
    "x-session-id": "s3cr3t-session",
    "x-client-secret": "s3cr3t-client",
}
HARMLESS = {"x-request-id": "req-42", "x-tenant": "acme", "user-agent-extra": "probe/1.0"}


def _redaction_scope(make_scope: Callable[..., rpcscope.Scope], sink: Any) -> rpcscope.Scope:
    # Allowlist everything on purpose: the deny rules must still win.
    allow = [*SECRETS, *HARMLESS, "trace-bin"]
    return make_scope(access_log=sink, log_metadata=allow)


@pytest.mark.parametrize("outcome", ["ok", "abort:PERMISSION_DENIED"])
@pytest.mark.parametrize("sink_kind", ["documents", "json-lines"])
def test_credentials_never_reach_the_log(outcome: str, sink_kind: str,
                                         make_scope: Callable[..., rpcscope.Scope],
                                         serve_sync: Callable[..., int],
                                         sync_channel: Callable[..., grpc.Channel]) -> None:
    """Both encoders (documents for custom sinks, the fast JSON-line path) redact alike."""
    buf = io.StringIO()
    sink = CaptureSink() if sink_kind == "documents" else rpcscope.StreamSink(buf)
    scope = _redaction_scope(make_scope, sink)
    channel = sync_channel(serve_sync(scope.server_interceptors()))
    metadata = (*SECRETS.items(), *HARMLESS.items(), ("trace-bin", b"\x00s3cr3t-binary"))
    try:
        channel.unary_unary("/test.v1.Echo/Unary")(outcome.encode(), metadata=metadata)
    except grpc.RpcError:
        pass
    scope.flush()
    if isinstance(sink, CaptureSink):
        [doc] = wait_for_logs(scope, 1, side="server")
        text = json.dumps(doc)
    else:
        text = wait_until(lambda: (scope.flush(), buf.getvalue())[1])
        doc = json.loads(text)
    assert "s3cr3t" not in text
    logged = doc["grpc.request.metadata"]
    for key, value in HARMLESS.items():
        assert logged[key] == value
    for key in [*SECRETS, "trace-bin"]:
        assert logged.get(key, "[REDACTED]") == "[REDACTED]"


def test_only_allowlisted_metadata_is_logged(scope: rpcscope.Scope,
                                             serve_sync: Callable[..., int],
                                             sync_channel: Callable[..., grpc.Channel]) -> None:
    channel = sync_channel(serve_sync(scope.server_interceptors()))
    channel.unary_unary("/test.v1.Echo/Unary")(
        b"ok", metadata=(("x-request-id", "r-1"), ("x-tenant", "acme")))
    [doc] = wait_for_logs(scope, 1, side="server")
    logged = doc["grpc.request.metadata"]
    assert logged["x-request-id"] == "r-1"
    assert "x-tenant" not in logged  # not in the default allowlist
    assert logged["user-agent"].startswith("grpc-python")


# --- application logs

APP_LOGGER = "tests.app"


def _logging_service() -> grpc.GenericRpcHandler:
    def say(request: bytes, context: Any) -> bytes:
        logging.getLogger(APP_LOGGER).warning("handling %s", request.decode(),
                                              extra={"order_id": 7})
        return b"said"

    return grpc.method_handlers_generic_handler("test.v1.Log", {
        "Say": grpc.unary_unary_rpc_method_handler(say)})


@pytest.fixture
def app_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger(APP_LOGGER)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


def test_logging_handler_carries_the_call_trace_ids(scope: rpcscope.Scope, sink: CaptureSink,
                                                    app_logger: logging.Logger,
                                                    serve_sync: Callable[..., int],
                                                    sync_channel: Callable[..., grpc.Channel]
                                                    ) -> None:
    app_logger.addHandler(scope.logging_handler())
    port = serve_sync(scope.server_interceptors(), handlers=(_logging_service(),))
    assert sync_channel(port).unary_unary("/test.v1.Log/Say")(b"order 7") == b"said"
    [access] = wait_for_logs(scope, 1, side="server")
    app = wait_until(lambda: [d for d in sink.documents if d["log.logger"] == APP_LOGGER])[0]
    assert app["message"] == "handling order 7"
    assert app["log.level"] == "warning"
    assert app["service.name"] == "test-svc"
    assert app["labels"] == {"order_id": 7}
    assert (app["trace.id"], app["span.id"]) == (access["trace.id"], access["span.id"])
    # Outside a call there are no ids to attach.
    app_logger.info("idle")
    idle = wait_until(lambda: [d for d in sink.documents if d.get("message") == "idle"])[0]
    assert "trace.id" not in idle


def test_logging_handler_filters_and_levels_still_apply(scope: rpcscope.Scope,
                                                       sink: CaptureSink,
                                                       app_logger: logging.Logger) -> None:
    """The handler skips logging's handler lock, not its filters or level: a record a filter
    rejects, or below the handler's level, is not shipped."""
    app_logger.setLevel(logging.DEBUG)  # the handler's own level is what holds DEBUG back
    handler = scope.logging_handler()
    handler.setLevel(logging.INFO)
    handler.addFilter(lambda record: "secret" not in record.getMessage())
    app_logger.addHandler(handler)
    app_logger.debug("too quiet")
    app_logger.info("keep %d", 1)
    app_logger.info("a secret %s", "x")
    app_logger.warning("keep %d", 2)
    scope.flush()
    wait_until(lambda: len([d for d in sink.documents if d["log.logger"] == APP_LOGGER]) >= 2)
    scope.flush()
    messages = [d["message"] for d in sink.documents if d["log.logger"] == APP_LOGGER]
    assert messages == ["keep 1", "keep 2"]


def test_ecs_formatter_carries_the_call_trace_ids(scope: rpcscope.Scope,
                                                  app_logger: logging.Logger,
                                                  serve_sync: Callable[..., int],
                                                  sync_channel: Callable[..., grpc.Channel]
                                                  ) -> None:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(rpcscope.EcsFormatter(service="checkout", environment="test"))
    app_logger.addHandler(handler)
    port = serve_sync(scope.server_interceptors(), handlers=(_logging_service(),))
    sync_channel(port).unary_unary("/test.v1.Log/Say")(b"x")
    [access] = wait_for_logs(scope, 1, side="server")
    [line] = buf.getvalue().splitlines()
    doc = json.loads(line)
    assert doc["service.name"] == "checkout"
    assert doc["service.environment"] == "test"
    assert doc["message"] == "handling x"
    assert doc["trace.id"] == access["trace.id"]
    assert doc["span.id"] == access["span.id"]
    assert doc["ecs.version"]


def test_current_trace_ids_inside_and_outside_a_call(scope: rpcscope.Scope,
                                                     serve_sync: Callable[..., int],
                                                     sync_channel: Callable[..., grpc.Channel]
                                                     ) -> None:
    seen: list[Any] = []

    def peek(request: bytes, context: Any) -> bytes:
        seen.append(rpcscope.current_trace_ids())
        return b""

    handler = grpc.method_handlers_generic_handler("test.v1.Peek", {
        "Ids": grpc.unary_unary_rpc_method_handler(peek)})
    port = serve_sync(scope.server_interceptors(), handlers=(handler,))
    sync_channel(port).unary_unary("/test.v1.Peek/Ids")(b"")
    [access] = wait_for_logs(scope, 1, side="server")
    assert seen == [(access["trace.id"], access["span.id"])]
    assert rpcscope.current_trace_ids() is None


# --- sink selection


def _one_call(scope: rpcscope.Scope, serve_sync: Callable[..., int],
              sync_channel: Callable[..., grpc.Channel]) -> None:
    sync_channel(serve_sync(scope.server_interceptors())).unary_unary(
        "/test.v1.Echo/Unary")(b"ok")
    scope.flush()


def test_access_log_env_off(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                            serve_sync: Callable[..., int],
                            sync_channel: Callable[..., grpc.Channel]) -> None:
    monkeypatch.setenv("RPCSCOPE_ACCESS_LOG", "off")
    with rpcscope.Scope(service="s") as scope:
        _one_call(scope, serve_sync, sync_channel)
        assert scope.stats()["logs"]["emitted"] == 0
        assert sample_value(scope.registry, "grpc_server_started_total",
                            {"grpc_type": "unary", "grpc_service": "test.v1.Echo",
                             "grpc_method": "Unary"}) == 1
    assert capsys.readouterr().out == ""


def test_access_log_env_stdout(monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str],
                               serve_sync: Callable[..., int],
                               sync_channel: Callable[..., grpc.Channel]) -> None:
    monkeypatch.setenv("RPCSCOPE_ACCESS_LOG", "stdout")
    with rpcscope.Scope(service="s") as scope:
        _one_call(scope, serve_sync, sync_channel)
    [line] = capsys.readouterr().out.splitlines()
    doc = json.loads(line)
    assert doc["rpc.method"] == "Unary"
    assert doc["log.logger"] == "rpcscope.access"


def test_access_log_env_file_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str],
                                  serve_sync: Callable[..., int],
                                  sync_channel: Callable[..., grpc.Channel]) -> None:
    path = tmp_path / "access.jsonl"
    monkeypatch.setenv("RPCSCOPE_ACCESS_LOG", str(path))
    with rpcscope.Scope(service="s") as scope:
        _one_call(scope, serve_sync, sync_channel)
        _one_call(scope, serve_sync, sync_channel)
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [d["grpc.code"] for d in docs] == ["OK", "OK"]
    assert capsys.readouterr().out == ""


def test_access_log_kwarg_beats_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                    serve_sync: Callable[..., int],
                                    sync_channel: Callable[..., grpc.Channel]) -> None:
    monkeypatch.setenv("RPCSCOPE_ACCESS_LOG", str(tmp_path / "env.jsonl"))
    sink = CaptureSink()
    with rpcscope.Scope(service="s", access_log=sink) as scope:
        _one_call(scope, serve_sync, sync_channel)
        wait_for_logs(scope, 1)
    assert not (tmp_path / "env.jsonl").exists()


# --- loss accounting


def test_bad_field_loses_that_field_only(tmp_path: Path, app_logger: logging.Logger) -> None:
    class NoRepr:
        def __repr__(self) -> str:
            raise RuntimeError("cannot show")

    path = tmp_path / "app.jsonl"
    with rpcscope.Scope(service="s", access_log=str(path)) as scope:
        app_logger.addHandler(scope.logging_handler())
        app_logger.info("one", extra={"bad": NoRepr(), "good": "yes"})
        app_logger.info("two", extra={"path": "/data/\udcff.csv"})  # surrogateescape'd name
        app_logger.info("three")
        scope.flush()
        assert scope.stats()["logs"] == {"emitted": 3, "delivered": 3, "dropped": 0}
    one, two, three = (json.loads(line) for line in path.read_text().splitlines())
    assert one["message"] == "one"
    assert one["labels"] == {"good": "yes"}
    assert one["rpcscope.dropped_fields"] == ["labels.bad"]
    assert two["message"] == "two"
    assert two["labels"]["path"].startswith("/data/")
    assert three["message"] == "three"


class _BlockingSink(rpcscope.LogSink):
    """Holds the log worker inside write() until released, so the queue fills up."""

    def __init__(self) -> None:
        self.writing = threading.Event()
        self.release = threading.Event()
        self.documents: list[dict[str, Any]] = []

    def write(self, documents: Sequence[dict[str, Any]]) -> int:
        self.writing.set()
        self.release.wait(10)
        self.documents.extend(documents)
        return len(documents)


def test_full_queue_drops_and_counts(make_scope: Callable[..., rpcscope.Scope],
                                     serve_sync: Callable[..., int],
                                     sync_channel: Callable[..., grpc.Channel]) -> None:
    sink = _BlockingSink()
    scope = make_scope(access_log=sink, log_queue_size=1)
    unary = sync_channel(serve_sync(scope.server_interceptors())).unary_unary(
        "/test.v1.Echo/Unary")
    unary(b"ok")
    assert sink.writing.wait(5)  # record 1 is in the (blocked) sink
    for _ in range(4):
        assert unary(b"ok") == b"reply:ok"  # RPCs never wait for the log
    # Record 2 fills the one-slot queue; records 3-5 are dropped.
    assert scope.stats()["logs"]["dropped"] == 3
    assert sample_value(scope.registry, "rpcscope_log_records_total", {"outcome": "dropped"}) == 3
    sink.release.set()
    scope.flush()
    wait_until(lambda: scope.stats()["logs"]["delivered"] == 2)
    assert scope.stats()["logs"] == {"emitted": 5, "delivered": 2, "dropped": 3}
    assert sample_value(scope.registry, "rpcscope_log_records_total",
                        {"outcome": "delivered"}) == 2
    assert sample_value(scope.registry, "rpcscope_log_records_total",
                        {"outcome": "emitted"}) == 5
    assert len(sink.documents) == 2


def test_close_flushes_pending_records(registry: Any, tmp_path: Path,
                                       serve_sync: Callable[..., int],
                                       sync_channel: Callable[..., grpc.Channel]) -> None:
    path = tmp_path / "a.jsonl"
    scope = rpcscope.Scope(service="s", access_log=str(path), registry=registry)
    unary = sync_channel(serve_sync(scope.server_interceptors())).unary_unary(
        "/test.v1.Echo/Unary")
    for _ in range(20):
        unary(b"ok")
    scope.close(timeout=5)
    assert len(path.read_text().splitlines()) == 20
    assert os.path.getsize(path) > 0
    assert _svc.SERVICE in path.read_text()


class _FailingStream(io.StringIO):
    """A stream whose write fails from the ``fail_at``-th call on (a pipe whose reader died)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.calls = 0
        self.fail_at = fail_at

    def write(self, text: str) -> int:
        self.calls += 1
        if self.calls >= self.fail_at:
            raise BrokenPipeError("reader went away")
        return super().write(text)


def test_a_large_batch_is_written_whole_and_in_order(tmp_path: Path,
                                                     app_logger: logging.Logger) -> None:
    """Sinks write big batches in several writes (see _LINES_PER_WRITE); no line may be lost,
    split or reordered at the seams, to a file or a stream."""
    path, stream = tmp_path / "a.jsonl", io.StringIO()
    for sink in (str(path), rpcscope.StreamSink(stream)):
        with rpcscope.Scope(service="s", access_log=sink) as scope:
            handler = scope.logging_handler()
            app_logger.addHandler(handler)
            for i in range(1000):  # queued before the writer runs: one batch of 1000
                app_logger.info("line %d", i)
            scope.flush()
            app_logger.removeHandler(handler)
            assert scope.stats()["logs"] == {"emitted": 1000, "delivered": 1000, "dropped": 0}
    for text in (path.read_text(), stream.getvalue()):
        assert text.endswith("\n")
        assert [json.loads(line)["message"] for line in text.splitlines()] == [
            f"line {i}" for i in range(1000)]


def test_a_sink_failing_part_way_counts_what_it_wrote(app_logger: logging.Logger) -> None:
    """A stream that breaks after the first write: the lines written count as delivered, the
    rest as lost, and the accounting still adds up."""
    stream = _FailingStream(fail_at=2)
    with rpcscope.Scope(service="s", access_log=rpcscope.StreamSink(stream)) as scope:
        app_logger.addHandler(scope.logging_handler())
        for i in range(300):
            app_logger.info("line %d", i)
        scope.flush()
        logs = scope.stats()["logs"]
    written = stream.getvalue().splitlines()
    assert 0 < len(written) < 300
    assert logs == {"emitted": 300, "delivered": len(written), "dropped": 300 - len(written)}
    assert [json.loads(line)["message"] for line in written] == [
        f"line {i}" for i in range(len(written))]
