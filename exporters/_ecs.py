"""Elastic Common Schema documents: access-log records for calls, and for application log records.

Field names are ECS 8 (``@timestamp``, ``log.level``, ``trace.id`` …) plus OpenTelemetry's
``rpc.*`` names for gRPC. Documents use dotted keys at top level, which is what ECS loggers
(ecs-logging-python) emit and what Elasticsearch's ``logs-*-*`` template expands into objects.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import socket
import traceback
from datetime import datetime, timezone
from typing import Any, Final

from opentelemetry import trace

from rpcscope import schema
from rpcscope.collector._core import CallRecord, is_server_fault
from rpcscope.collector._ids import CURRENT_IDS, TraceRef, resolve_ids

HOSTNAME: Final = socket.gethostname()

_CLIENT_FAULT_LEVEL: Final = "warn"

#: ``grpc_code`` → numeric status (what ``rpc.grpc.status_code`` carries per OTel semconv).
NUMERIC_CODE: Final = {name: code.value[0] for code, name in schema.GO_CODE_NAMES.items()}


def deadline_seconds(remaining: float | None) -> float | None:
    """A call's remaining time as logged: None when there is no (meaningful) deadline."""
    if remaining is None or not math.isfinite(remaining) or remaining > 1e8:
        return None
    return float(remaining)


def level_for(code: str) -> str:
    """OK → info; server-fault codes → error; every other code (client faults) → warn."""
    if code == "OK":
        return "info"
    return "error" if is_server_fault(code) else _CLIENT_FAULT_LEVEL


@functools.lru_cache(maxsize=64)
def _second_text(seconds: int) -> str:
    """A second as ISO 8601 text, cached: the records of one batch mostly share their second."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def iso_utc(wall_ns: int) -> str:
    seconds, nanos = divmod(wall_ns, 1_000_000_000)
    return f"{_second_text(seconds)}.{nanos // 1000:06d}Z"


#: This process's pid, kept current across fork: the identity fields are built once per pid.
_PID: Final = [os.getpid()]


def _after_fork() -> None:
    _PID[0] = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


class Identity:
    """The ``service.*`` / host fields every document carries (fixed once constructed)."""

    __slots__ = ("_fields", "environment", "name", "version")

    def __init__(self, name: str, version: str | None, environment: str | None) -> None:
        self.name = name
        self.version = version
        self.environment = environment
        self._fields: dict[str, Any] = {}

    def fields(self) -> dict[str, Any]:
        """The fields as one dict, to merge into a document in one ``update``; rebuilt in a
        forked child (its pid)."""
        fields = self._fields
        pid = _PID[0]
        if fields.get("process.pid") != pid:
            fields = {"service.name": self.name}
            if self.version:
                fields["service.version"] = self.version
            if self.environment:
                fields["service.environment"] = self.environment
            fields["host.name"] = HOSTNAME
            fields["process.pid"] = pid
            self._fields = fields
        return fields

    def apply(self, doc: dict[str, Any]) -> None:
        doc.update(self.fields())


def call_document(record: CallRecord, identity: Identity) -> dict[str, Any]:
    """The access-log document for one finished call (built on the log worker thread)."""
    info = record.info
    code = record.code
    us = (record.duration_ns + 500) // 1000  # integer rounding: the fast encoder does the same
    doc: dict[str, Any] = {
        "@timestamp": iso_utc(record.end_wall_ns),
        "log.level": level_for(code),
        "message": f"{info.side} call {record.path or info.full_method} {code} in "
                   f"{us // 1000}.{us % 1000:03d}ms",
        "ecs.version": schema.ECS_VERSION,
        "log.logger": schema.ACCESS_LOGGER,
    }
    identity.apply(doc)
    doc["event.kind"] = "event"
    doc["event.outcome"] = "success" if code == "OK" else "failure"
    doc["event.duration"] = record.duration_ns
    doc["rpc.system"] = "grpc"
    doc["rpc.service"] = info.service
    doc["rpc.method"] = info.method
    doc["rpc.grpc.status_code"] = NUMERIC_CODE.get(code, 2)
    doc["grpc.code"] = code
    doc["grpc.type"] = info.grpc_type
    doc[schema.FIELD_SIDE] = info.side
    doc["grpc.msgs_received"] = record.msgs_in
    doc["grpc.msgs_sent"] = record.msgs_out
    if record.peer:
        doc["client.address" if info.side == "server" else "server.address"] = record.peer
    if record.path is not None:
        doc[schema.FIELD_UNKNOWN_PATH] = record.path
    deadline = deadline_seconds(record.deadline)
    if deadline is not None:
        doc["grpc.request.deadline_seconds"] = round(deadline, 6)
    ids = record.ids()
    if ids is not None:
        doc["trace.id"] = ids[0]
        doc["span.id"] = ids[1]
        if ids[2]:
            doc["parent.id"] = ids[2]
    if record.metadata:
        doc["grpc.request.metadata"] = dict(record.metadata)
    if code != "OK":
        error = record.error
        if error is not None and code == "Unknown" and not _is_abort(error):
            doc["error.type"] = type(error).__qualname__
            doc["error.message"] = str(error) or record.details or code
            doc["error.stack_trace"] = "".join(
                traceback.format_exception(type(error), error, error.__traceback__)
            )
        else:
            doc["error.type"] = code
            doc["error.message"] = record.details or code
    return doc


def _is_abort(error: BaseException) -> bool:
    # grpc's sync abort() raises a bare Exception() with no args; aio raises AbortError.
    return (type(error) is Exception and not error.args) or type(error).__name__ == "AbortError"


_OWN: Final = frozenset(("message", "rpcscope_ids"))
_RESERVED: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
#: Attributes that are not the caller's ``extra=``: one C-level set difference per record finds
#: whether there is any extra at all (most records have none).
_NOT_EXTRA: Final = _RESERVED | _OWN
_LEVELS: Final = {name: name.lower() for name in
                  ("CRITICAL", "FATAL", "ERROR", "WARNING", "WARN", "INFO", "DEBUG", "NOTSET")}


def log_record_document(record: logging.LogRecord, identity: Identity | None) -> dict[str, Any]:
    """An application ``logging`` record as an ECS document, with the current trace ids."""
    level = record.levelname
    doc: dict[str, Any] = {
        "@timestamp": iso_utc(int(record.created * 1e9)),
        "log.level": _LEVELS.get(level) or level.lower(),
        "message": record.getMessage(),
        "ecs.version": schema.ECS_VERSION,
        "log.logger": record.name,
        "log.origin.function": record.funcName,
        "log.origin.file.name": record.filename,
        "log.origin.file.line": record.lineno,
        "process.thread.name": record.threadName,
    }
    if identity is not None:
        doc.update(identity.fields())
    else:
        doc["process.pid"] = record.process
    # A record queued by LoggingHandler carries the ids of the thread that logged it; a record
    # formatted in place (EcsFormatter) reads them from the current context.
    captured = record.rpcscope_ids if hasattr(record, "rpcscope_ids") else capture_ids()
    if captured is not None:
        ids = resolve_ids(captured)
        doc["trace.id"], doc["span.id"] = ids[0], ids[1]
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        doc["error.type"] = type(exc).__qualname__
        doc["error.message"] = str(exc)
        doc["error.stack_trace"] = "".join(traceback.format_exception(*record.exc_info))
    attrs = vars(record)
    if attrs.keys() - _NOT_EXTRA:
        extras = {k: v for k, v in attrs.items() if k not in _NOT_EXTRA}
        labels: dict[str, Any] = {}
        dropped: list[str] = []
        for k, v in extras.items():
            if isinstance(v, str | int | float | bool):
                labels[k] = v
                continue
            try:
                labels[k] = repr(v)
            except Exception:
                # One value that cannot even be shown must not cost the whole record.
                dropped.append(f"labels.{k}")
        if labels:
            doc["labels"] = labels
        if dropped:
            doc["rpcscope.dropped_fields"] = dropped
    return doc


_NO_SPAN: Final = trace.INVALID_SPAN


def capture_ids() -> TraceRef | None:
    """The current trace, captured cheaply (rpcscope's, or the active OTel span's), or None;
    formatted later, in the batch."""
    ids = CURRENT_IDS.get()
    if ids is not None:
        return ids
    span = trace.get_current_span()
    if span is _NO_SPAN:  # no active span: skip reading its (invalid) context
        return None
    ctx = span.get_span_context()
    return (ctx, None) if ctx.is_valid else None


def format_ids(captured: TraceRef | None) -> tuple[str, str] | None:
    """(trace_id, span_id) of what :func:`capture_ids` returned."""
    if captured is None:
        return None
    ids = resolve_ids(captured)
    return ids[0], ids[1]


def encode_json(doc: dict[str, Any]) -> str:
    """One JSON line; a field that cannot be encoded is dropped and named, the record is kept."""
    try:
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=_fallback)
    except Exception:  # any failure: fall back to field-by-field, never lose the record
        kept: dict[str, Any] = {}
        dropped: list[str] = []
        for key, value in doc.items():
            try:
                json.dumps(value, default=_fallback)
                kept[key] = value
            except Exception:
                dropped.append(key)
        kept["rpcscope.dropped_fields"] = dropped
        return json.dumps(kept, separators=(",", ":"), ensure_ascii=False)


def _fallback(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


class EcsFormatter(logging.Formatter):
    """``logging`` formatter: one ECS JSON line per record, with trace/span ids of the current RPC.

    Use it on any handler (e.g. a ``StreamHandler`` to stdout in a container) so application logs
    correlate with rpcscope's access log and traces in Kibana.
    """

    def __init__(self, service: str | None = None, service_version: str | None = None,
                 environment: str | None = None) -> None:
        super().__init__()
        self._identity = Identity(service, service_version, environment) if service else None

    def format(self, record: logging.LogRecord) -> str:
        return encode_json(log_record_document(record, self._identity))
