"""The fast access-log encoder must write exactly the document the general path builds."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest

from rpcscope.collector._core import CallRecord, MethodInfo
from rpcscope.collector._ids import resolve_ids
from rpcscope.exporters._access import LogWriter, MetadataPicker, prepare_for_log
from rpcscope.exporters._ecs import Identity, call_document
from rpcscope.exporters._jsonline import CallLineEncoder
from rpcscope.exporters._logs import LineSink


def _record(side: str = "server", **fields: object) -> CallRecord:
    info = MethodInfo(side, '/pkg.V1/Get"%d\\', 'pkg.V1', 'Get"%d\\', "unary", None)
    record = CallRecord(info)
    record.end_wall_ns = time.time_ns()
    record.duration_ns = 1_234_567
    record.msgs_in = record.msgs_out = 1
    for key, value in fields.items():
        if key == "otel":  # an OpenTelemetry span's ids
            trace_id, span_id = value  # type: ignore[misc]
            record.trace = (SimpleNamespace(trace_id=int(trace_id, 16), span_id=int(span_id, 16),
                                            trace_flags=1), None)
        elif key == "lazy":  # the request path's form: (metadata, header or None; call number)
            record.trace = (value, 12345)
        else:
            setattr(record, key, value)
    return record


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"peer": "ipv6:[::1]:5050", "deadline": 0.1234567},
        {"deadline": 1e-7},
        {"deadline": 99_999_999.25},
        {"deadline": 1e9},  # "no deadline" as grpc reports it: not logged
        {"lazy": (("user-agent", "x"), ("traceparent", f"00-{'a' * 32}-{'b' * 16}-01"))},
        {"lazy": (("traceparent", "garbage"),)},
        {"lazy": f"00-{'a' * 32}-{'b' * 16}-01"},
        {"lazy": None},
        {"otel": ("a" * 32, "b" * 16)},
        {"metadata": (("user-agent", 'agent "quoted" \\ ünï %s'), ("x-request-id", "r-1"))},
        {"code": "NotFound", "details": "no such sku"},
        {"code": "Unknown", "error": RuntimeError("boom")},
    ],
)
@pytest.mark.parametrize("side", ["server", "client"])
def test_fast_line_equals_general_document(fields: dict[str, object], side: str) -> None:
    identity = Identity("svc %s", "1.0", None)
    record = _record(side, **fields)
    encoder = CallLineEncoder(identity)
    # Twice: the second call takes the cached template, peer and metadata fragments. (The
    # metadata here is picked already; picking it again keeps it.)
    for _ in range(2):
        prepare_for_log(record, _PICKER, _no_error)
        assert json.loads(encoder.encode(record)) == call_document(record, identity)


def _no_error(where: str) -> None:
    raise AssertionError(f"unexpected field error in {where}")


_ALLOW = ("user-agent", "x-request-id", "authorization")
_PICKER = MetadataPicker(_ALLOW)
_TRACEPARENT = f"00-{'a' * 32}-{'b' * 16}-01"


class Metadatum(NamedTuple):
    """grpc's metadata pair type (a named tuple, not a plain pair)."""

    key: str
    value: str


class _Lines(LineSink):
    """The stdout/file sinks' contract: pre-encoded lines, kept here."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write_lines(self, lines: Sequence[str]) -> int:
        self.lines.extend(lines)
        return len(lines)


def _write(*items: CallRecord | logging.LogRecord) -> tuple[list[dict[str, Any]], LogWriter,
                                                            list[str]]:
    """One batch through a log writer with a line sink (the fast encoder's path), decoded."""
    sink, errors = _Lines(), []
    writer = LogWriter(sink, Identity("svc", None, None), ("server", "client"),
                       metadata_allowlist=_ALLOW, on_error=errors.append)
    writer.consume(items)
    return [json.loads(line) for line in sink.lines], writer, errors


@pytest.mark.parametrize("plain_pairs", [False, True])
@pytest.mark.parametrize("code", ["OK", "NotFound"])
def test_raw_request_path_record_is_picked_redacted_and_traced(plain_pairs: bool, code: str
                                                               ) -> None:
    """What the request path hands over: grpc's raw metadata, shared with the lazy trace tuple,
    and the call's CallDetails. The line carries only allowlisted keys (secrets redacted), the
    caller's trace as parent, and the deadline as the remaining time at the start, whether the
    pairs are grpc's named tuples or plain tuples (a test double's)."""
    def pair(key: str, value: str) -> tuple[str, str]:
        return (key, value) if plain_pairs else Metadatum(key, value)

    raw = (pair("user-agent", "ua/1"), pair("traceparent", _TRACEPARENT),
           pair("authorization", "Bearer s3cret"), pair("cookie", "c"))
    record = _record(code=code)
    record.metadata = raw
    record.trace = (raw, 42)
    start = (record.end_wall_ns - record.duration_ns) / 1e9
    record.call_details = SimpleNamespace(deadline=start + 2.5)
    [doc], _, _ = _write(record)
    assert "s3cret" not in json.dumps(doc) and "cookie" not in json.dumps(doc)
    assert doc["grpc.request.metadata"] == {"user-agent": "ua/1", "authorization": "[REDACTED]"}
    assert (doc["trace.id"], doc["parent.id"]) == ("a" * 32, "b" * 16)
    assert doc["span.id"] == resolve_ids((None, 42))[1]  # the call number's span id
    assert doc["grpc.request.deadline_seconds"] == pytest.approx(2.5, abs=1e-6)
    # The record now holds what was logged: its resolved deadline and its picked metadata.
    assert doc == call_document(record, Identity("svc", None, None))


def test_a_batch_keeps_order_and_loses_only_what_cannot_be_encoded() -> None:
    """One broken record costs that record; an unreadable deadline costs that field (and is
    reported); application log records travel in order with the calls."""

    class Unreadable:
        @property
        def deadline(self) -> float:
            raise RuntimeError("deadline unreadable")

    def app(message: str) -> logging.LogRecord:
        return logging.LogRecord("app", logging.INFO, __file__, 1, message, None, None)

    good, broken, no_deadline = _record(), _record(), _record()
    broken.info = None  # type: ignore[assignment]
    no_deadline.call_details = Unreadable()
    docs, writer, errors = _write(app("app-1"), good, broken, no_deadline, app("app-2"))
    assert writer.stats()["dropped"] == 1 and errors == ["log:deadline"]
    assert docs[0]["message"] == "app-1" and docs[-1]["message"] == "app-2" and len(docs) == 4
    assert "grpc.request.deadline_seconds" not in docs[2]
    assert docs[1]["grpc.code"] == docs[2]["grpc.code"] == "OK"


def test_picking_twice_returns_the_same_and_plain_pairs_are_still_redacted() -> None:
    picked = _PICKER((("authorization", "x"), ("user-agent", "u"), ("other", "o")))
    assert picked == (("authorization", "[REDACTED]"), ("user-agent", "u"))
    assert _PICKER(picked) == picked
    assert _PICKER((("other", "o"),)) is None
