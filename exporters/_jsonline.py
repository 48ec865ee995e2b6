"""A fast JSON-lines encoder for successful call records (the common case of the access log).

Why by hand: building the ECS dict and running ``json.dumps`` costs more CPU per call than all of
rpcscope's metrics. Most of an access-log line is constant per (process, method) — service,
host, logger, rpc.service, rpc.method, grpc.type — so it is encoded once and cached; a call only
splices its timestamp, duration, counts, peer and ids between the cached pieces with one
f-string (a ``%``-template would rescan ~600 characters of static text per line: twice the
cost). Anything unusual
(a failed call with error fields) takes the general path (``call_document`` + ``encode_json``),
and a test asserts both paths decode to the same document.
"""

from __future__ import annotations

import json
import logging
import os
import weakref
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any, Final

from rpcscope import schema
from rpcscope.collector._core import (
    HOSTNAME,
    CallRecord,
    MetadataPicker,
    MethodInfo,
    PickedMetadata,
    lazy_ids_hex,
    parse_traceparent,
    resolve_ids,
)
from rpcscope.exporters._ecs import NUMERIC_CODE, Identity, call_document, encode_json

_esc: Final = json.encoder.encode_basestring  # C-accelerated string escaping (no ASCII-forcing)
_NO_PEERS: Final[dict[str, str]] = {}
_NEG_INF: Final = float("-inf")
_UNSEEN: Final = object()  # "this record's metadata was not scanned here"
_LOG = logging.getLogger("rpcscope")


class CallLineEncoder:
    """Encodes call records to the same JSON ``call_document`` + ``encode_json`` would produce."""

    def __init__(self, identity: Identity, picker: MetadataPicker | None = None) -> None:
        self._identity = identity
        # The access log's metadata allowlist (key -> redact?); none: no metadata is logged.
        self._allow = picker.redact if picker is not None else {}
        # process.pid is part of the cached text: a forked child starts over (os.getpid() per
        # line would be a system call per line).
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget(ref))
        self._static: dict[int, tuple[MethodInfo, tuple[str, str, str, str]]] = {}
        self._peers: dict[str, dict[str, str]] = {}  # component -> peer -> fragment
        self._metadatas: dict[tuple[tuple[str, str], ...], str] = {}
        self._second = -1
        self._second_text = ""

    def _template(self, info: MethodInfo) -> tuple[str, str, str, str]:
        """The static pieces of a successful call's line for this method, in order: before the
        duration in ms, before the duration in ns, before msgs_received, before msgs_sent."""
        cached = self._static.get(id(info))
        if cached is not None and cached[0] is info:
            return cached[1]
        pid = os.getpid()
        ident = self._identity
        head: dict[str, Any] = {
            "ecs.version": schema.ECS_VERSION,
            "log.logger": schema.ACCESS_LOGGER,
            "service.name": ident.name,
        }
        if ident.version:
            head["service.version"] = ident.version
        if ident.environment:
            head["service.environment"] = ident.environment
        head["host.name"] = HOSTNAME
        head["process.pid"] = pid
        head["event.kind"] = "event"
        method_part = {"rpc.system": "grpc", "rpc.service": info.service, "rpc.method": info.method}
        tail = {"grpc.type": info.grpc_type, "grpc.component": info.component}
        # The message prefix, escaped once, without its closing quote.
        message_prefix = _esc(f"{info.component} call {info.full_method} ")[:-1]
        pieces = (
            'Z","log.level":"info","message":' + message_prefix + "OK in ",
            'ms",' + _inner(head) + ',"event.outcome":"success","event.duration":',
            "," + _inner(method_part) + f',"rpc.grpc.status_code":{NUMERIC_CODE["OK"]},'
            '"grpc.code":"OK",' + _inner(tail) + ',"grpc.msgs_received":',
            ',"grpc.msgs_sent":',
        )
        self._static[id(info)] = (info, pieces)
        return pieces

    def _peer(self, component: str, peer: str) -> str:
        """The peer fragment; peers repeat per connection, so escaping is cached (bounded)."""
        peers = self._peers.setdefault(component, {})
        name = "client.address" if component == "server" else "server.address"
        fragment = f',"{name}":{_esc(peer)}'
        if len(peers) >= 4096:
            peers.clear()
        peers[peer] = fragment
        return fragment

    def encode(self, record: CallRecord) -> str:
        """One record's line (raises if it cannot be encoded; the log writer uses the batch)."""
        lines, _ = self.encode_batch([record], strict=True)
        return lines[0]

    def encode_batch(
        self,
        items: Iterable[Any],
        other: Callable[[Any], str] | None = None,
        on_error: Callable[[str], None] | None = None,
        strict: bool = False,
    ) -> tuple[list[str], int]:
        """The lines of a batch, in order, and how many items could not be encoded at all.

        Call records are finished here too: the kept ``CallDetails`` become the deadline
        (:func:`resolve_deadline`'s arithmetic; if that fails only the field is lost and
        ``on_error("log:deadline")`` counts it) and grpc's raw metadata is picked and redacted
        (:class:`MetadataPicker`, whose redaction map this reads). Any other item (an
        application log record) goes to ``other``.

        Why one flat loop: this runs once per call. Separate steps per record (resolve the
        deadline, pick the metadata, encode, scan the metadata again for ``traceparent``)
        cost 4.4 to 4.5 µs per bench-like record in batches of 500 (in-process, one-off
        measurement); this loop binds the caches once per batch and scans the metadata once,
        3.8 to 4.1 µs, with identical output (``tests/test_jsonline.py``).
        """
        out: list[str] = []
        append = out.append
        failed = 0
        static = self._static
        peers_by_component = self._peers
        metadatas = self._metadatas
        allow = self._allow
        for record in items:
            if type(record) is not CallRecord:
                try:
                    append(other(record))  # type: ignore[misc]
                except Exception:
                    if strict:
                        raise
                    failed += 1
                    _LOG.debug("rpcscope: could not encode a log record", exc_info=True)
                continue
            try:
                end = record.end_wall_ns
                duration = record.duration_ns
                details = record.call_details
                if details is not None:
                    record.call_details = None
                    try:  # as resolve_deadline: remaining time when the call started
                        record.deadline = max(details.deadline - (end - duration) / 1e9, 0.0)
                    except Exception:
                        if on_error is None:
                            raise
                        on_error("log:deadline")
                # One scan of grpc's raw metadata: the allowlisted pairs, and the first
                # traceparent (as _traceparent_of) for the trace ids below.
                raw = metadata = record.metadata
                traceparent: Any = None
                if metadata is not None and type(metadata) is not PickedMetadata:
                    seen = False
                    picked: list[tuple[str, str]] = []
                    for key, value in metadata:
                        if key == "traceparent" and not seen:
                            seen, traceparent = True, value if type(value) is str else None
                        redact = allow.get(key)
                        if redact is not None:
                            picked.append((key, "[REDACTED]" if redact else
                                           value if type(value) is str else repr(value)))
                    record.metadata = metadata = PickedMetadata(picked) if picked else None
                else:
                    raw = _UNSEEN
                if record.code != "OK":
                    append(encode_json(call_document(record, self._identity)))
                    continue
                info = record.info
                cached = static.get(id(info))
                p1, p2, p3, p4 = (
                    cached[1] if cached is not None and cached[0] is info
                    else self._template(info)
                )
                second, nanos = divmod(end, 1_000_000_000)
                if second != self._second:
                    self._second = second
                    self._second_text = '{"@timestamp":"' + datetime.fromtimestamp(
                        second, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
                us = (duration + 500) // 1000  # ms with 3 decimals by integer maths
                peer = record.peer
                if peer:
                    peer_part = peers_by_component.get(info.component, _NO_PEERS).get(peer)
                    if peer_part is None:
                        peer_part = self._peer(info.component, peer)
                else:
                    peer_part = ""
                deadline = record.deadline
                # As deadline_seconds: no field for "no deadline" (inf, nan, grpc's far future);
                # "%.6f" is round(deadline, 6) as a JSON number, cheaper.
                deadline_part = (
                    ',"grpc.request.deadline_seconds":%.6f' % deadline
                    if deadline is not None and _NEG_INF < deadline <= 1e8 else ""
                )
                trace = record.trace
                if trace is None:
                    trace_part = ""
                elif len(trace) == 2 and trace[0] is raw:
                    # The request path's lazy form over the metadata just scanned: format it
                    # here (resolve_ids' rules) instead of scanning the metadata again.
                    new_trace, span = lazy_ids_hex(trace[1])
                    parent = None if traceparent is None else parse_traceparent(traceparent)
                    trace_part = (
                        ',"trace.id":"%s","span.id":"%s"' % (new_trace, span)
                        if parent is None else
                        ',"trace.id":"%s","span.id":"%s","parent.id":"%s"'
                        % (parent[0], span, parent[1])
                    )
                else:
                    trace_id, span_id, parent_id, _ = resolve_ids(trace)
                    trace_part = (
                        ',"trace.id":"%s","span.id":"%s","parent.id":"%s"'
                        % (trace_id, span_id, parent_id)
                        if parent_id else ',"trace.id":"%s","span.id":"%s"' % (trace_id, span_id)
                    )
                metadata_part = "" if not metadata else (
                    metadatas.get(metadata) or self._metadata(metadata))
                append(
                    f"{self._second_text}{nanos // 1000:06d}{p1}{us // 1000}.{us % 1000:03d}{p2}"
                    f"{duration}{p3}{record.msgs_in}{p4}{record.msgs_out}"
                    f"{peer_part}{deadline_part}{trace_part}{metadata_part}}}"
                )
            except Exception:
                # Could not even build the line: the caller counts it as dropped.
                if strict:
                    raise
                failed += 1
                _LOG.debug("rpcscope: could not build an access-log line", exc_info=True)
        return out, failed

    def _metadata(self, metadata: tuple[tuple[str, str], ...]) -> str:
        """The metadata fragment; the same few values (user agents) repeat, so cache (bounded)."""
        fragment = self._metadatas.get(metadata)
        if fragment is None:
            inner = ",".join(f"{_esc(k)}:{_esc(v)}" for k, v in metadata)
            fragment = f',"grpc.request.metadata":{{{inner}}}'
            if len(self._metadatas) >= 4096:
                self._metadatas.clear()
            self._metadatas[metadata] = fragment
        return fragment


def _inner(fields: dict[str, Any]) -> str:
    """``{"a":1,"b":2}`` → ``"a":1,"b":2`` (to splice into a template)."""
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)[1:-1]


def _forget(ref: weakref.ref[CallLineEncoder]) -> None:
    encoder = ref()
    if encoder is not None:
        encoder._static = {}
