"""Trace ids without an OpenTelemetry SDK: W3C ``traceparent`` in, ids derived from call numbers.

The request path stores a call's trace as one pair, :data:`TraceRef`, and never formats it:
validating the incoming header and hex-formatting ids is left to whoever reads them (the batch
that writes the access log, a scrape's exemplar, :func:`current_ids`). Resolving is
deterministic, so any thread may do it any number of times and gets the same ids.

Ids are a per-process keyed BLAKE2b of the call number rather than random draws: unique per
process, unpredictable without the key, re-keyed in a forked child, and one digest serves a block
of call numbers. docs/performance.md has the measurements behind this.
"""

from __future__ import annotations

import contextvars
import hashlib
import itertools
import os
import re
from collections.abc import Callable
from typing import Any, Final

#: A call's trace as the request path stores it: ``(parent, number)``.
#:
#: * ``number`` is the call's number (unique in this process): it gives the call's span id and,
#:   when ``parent`` holds no valid ``traceparent``, a new trace id. ``parent`` is what the call
#:   continues: None, gRPC invocation metadata (searched for ``traceparent`` when resolved), or
#:   a ``traceparent`` value.
#: * ``number`` is None when the ids belong to an OpenTelemetry span: ``parent`` is then that
#:   span's ``SpanContext``.
TraceRef = tuple[Any, int | None]

#: The request path's id source: the next call number (C-level, atomic under the GIL).
next_call_number: Callable[[], int] = itertools.count(1).__next__


class IdSource:
    """A per-process keyed PRF from call numbers to ids of ``hex_digits`` hex digits.

    One 64-byte BLAKE2b digest (keyed with 32 random bytes) of ``number // per`` holds the ids
    of ``per`` consecutive call numbers (8 span ids or 4 trace ids), and the last digest is
    kept, so a batch resolving records in call order hashes once per block. The cache is one
    tuple, swapped whole, so a race between threads costs a recomputation, never a wrong id.
    """

    __slots__ = ("_hex_digits", "_key", "_last", "_per", "_zero")

    def __init__(self, hex_digits: int) -> None:
        self._hex_digits = hex_digits
        self._per = 128 // hex_digits
        self._zero = "0" * hex_digits
        self.rekey()

    def rekey(self) -> None:
        self._key: Any = hashlib.blake2b(key=os.urandom(32))
        self._last: tuple[int, str] = (-1, "")

    def id_of(self, number: int) -> str:
        block, slot = divmod(number, self._per)
        cached = self._last
        if cached[0] != block:
            digest = self._key.copy()
            digest.update(block.to_bytes(8, "little"))
            cached = self._last = (block, digest.hexdigest())
        width = self._hex_digits
        text = cached[1][slot * width:(slot + 1) * width]
        # All-zero ids are invalid (W3C): a 1-in-2**64 draw at worst, replaced.
        return text if text != self._zero else self._zero[:-1] + "1"


_SPAN_IDS: Final = IdSource(16)
_TRACE_IDS: Final = IdSource(32)
#: Span id (16 hex digits) of a call number.
span_id_of: Final = _SPAN_IDS.id_of
#: Trace id (32 hex digits) of a call number that starts a new trace.
trace_id_of: Final = _TRACE_IDS.id_of


def _rekey_after_fork() -> None:
    # A forked child continues the parent's call numbers: new keys keep its ids apart.
    _SPAN_IDS.rekey()
    _TRACE_IDS.rekey()


os.register_at_fork(after_in_child=_rekey_after_fork)


def resolve_ids(trace: TraceRef) -> tuple[str, str, str | None, str]:
    """(trace_id, span_id, parent_span_id or None, trace_flags) as lowercase hex."""
    parent, number = trace
    if number is None:  # an OpenTelemetry span's context
        return ("%032x" % parent.trace_id, "%016x" % parent.span_id, None,
                "%02x" % int(parent.trace_flags))
    span = span_id_of(number)
    if parent is not None:
        if type(parent) is not str:
            parent = traceparent_in(parent)
        if parent is not None:
            parsed = parse_traceparent(parent)
            if parsed is not None:
                return parsed[0], span, parsed[1], parsed[2]
    return trace_id_of(number), span, None, "01"


def traceparent_in(metadata: Any) -> str | None:
    """The ``traceparent`` value in gRPC metadata (the first one), or None."""
    try:
        for key, value in metadata:
            if key == "traceparent":
                return value if type(value) is str else None
    except (TypeError, ValueError):  # not a sequence of pairs: no usable header
        pass
    return None


def traceparent(ids: tuple[str, str, str | None, str]) -> str:
    """The ``traceparent`` header naming the span of ``ids`` (version 00)."""
    return f"00-{ids[0]}-{ids[1]}-{ids[3]}"


# Version 00 is exactly 55 bytes; future versions may append fields after the flags (W3C §3.2.4).
_TRACEPARENT_RE: Final = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL
)
_V00_RE: Final = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


def parse_traceparent(value: str) -> tuple[str, str, str] | None:
    """(trace_id, parent_span_id, flags) from a ``traceparent`` header; None when invalid."""
    if len(value) == 55 and _V00_RE.fullmatch(value):  # the common case: version 00, no groups
        trace_id, span_id = value[3:35], value[36:52]
        if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
            return None
        return trace_id, span_id, value[53:]
    m = _TRACEPARENT_RE.fullmatch(value)
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, flags


#: The trace of the RPC being handled in this context; read by the ECS log formatter (so
#: application logs carry the ids) and by client interceptors (so downstream calls continue the
#: trace). A contextvar works for threads (sync servers) and asyncio tasks alike.
CURRENT_IDS: Final[contextvars.ContextVar[TraceRef | None]] = contextvars.ContextVar(
    "rpcscope_current_ids", default=None
)


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the RPC handled in this context, or None outside one."""
    trace = CURRENT_IDS.get()
    if trace is None:
        return None
    ids = resolve_ids(trace)
    return ids[0], ids[1]
