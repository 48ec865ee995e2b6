"""Log sinks: where encoded log documents leave the process (stdout, a file, your own).

A sink is called only from the batcher's thread (or a flush), in batches, so a slow stdout pipe
or disk never slows an RPC; the batcher drops and counts what does not fit its queue
(``rpcscope_log_records_total{outcome="dropped"}``) rather than apply back-pressure.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any

from rpcscope.exporters._ecs import encode_json

_LOG = logging.getLogger("rpcscope")

#: Lines joined per ``write``: a whole batch joined at once is text large enough to be
#: allocated with mmap and page-faulted in afresh on every batch (docs/performance.md).
_LINES_PER_WRITE = 128


def _write_chunked(write: Callable[[str], Any], lines: Sequence[str]) -> int:
    """Write ``lines`` newline-terminated, ``_LINES_PER_WRITE`` at a time; how many were
    written. A failing write raises only if nothing was written yet; after that, the lines
    written so far count as delivered and the rest as dropped (the caller's accounting)."""
    written = 0
    for start in range(0, len(lines), _LINES_PER_WRITE):
        chunk = lines[start:start + _LINES_PER_WRITE]
        try:
            write("\n".join((*chunk, "")))
        except Exception:
            if not written:
                raise
            _LOG.debug("rpcscope: log sink failed part-way", exc_info=True)
            break
        written += len(chunk)
    return written


class LogSink:
    """Where log documents go: ECS dicts with dotted keys, in batches, from one thread.

    Subclass and override :meth:`write` to send documents elsewhere; return how many it took
    (the rest count as dropped). :meth:`flush` waits for what it took to leave the process,
    :meth:`close` delivers what is left and releases resources; both within ``timeout``. The
    Forward shipper (``rpcscope.exporters.ForwardSink``) is one.
    """

    def write(self, documents: Sequence[dict[str, Any]]) -> int:
        raise NotImplementedError

    def flush(self, timeout: float = 5.0) -> bool:
        """Whether everything taken so far left the process within ``timeout`` (nothing is
        buffered by default)."""
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Release resources; the default has none."""


class LineSink(LogSink):
    """A sink of JSON lines: subclass it and override :meth:`write_lines` to get the access
    log's fast line encoder (each call's line is mostly cached text) instead of dicts."""

    def write(self, documents: Sequence[dict[str, Any]]) -> int:
        return self.write_lines([encode_json(d) for d in documents])

    def write_lines(self, lines: Sequence[str]) -> int:
        raise NotImplementedError


class StreamSink(LineSink):
    """One JSON line per document to a text stream (stdout by default: what Fluentd tails)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream

    def write_lines(self, lines: Sequence[str]) -> int:
        stream = self._stream if self._stream is not None else sys.stdout

        def write(text: str) -> None:
            try:
                stream.write(text)
            except UnicodeEncodeError:
                # A lone surrogate (e.g. a filename decoded with surrogateescape) cannot be
                # encoded by a strict UTF-8 stdout; escape it rather than lose the lines.
                stream.write(text.encode("utf-8", "backslashreplace").decode("utf-8"))

        written = _write_chunked(write, lines)
        stream.flush()
        return written


class FileSink(LineSink):
    """JSON lines appended to a file (opened lazily, reopened after fork)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file: IO[str] | None = None
        self._pid = 0

    def write_lines(self, lines: Sequence[str]) -> int:
        if self._file is None or self._pid != os.getpid():
            # backslashreplace: a lone surrogate in one record is escaped (valid JSON: \udcff)
            # instead of failing the write of the whole batch.
            self._file = open(self.path, "a", encoding="utf-8",  # noqa: SIM115 - long-lived
                              errors="backslashreplace")
            self._pid = os.getpid()
        written = _write_chunked(self._file.write, lines)
        self._file.flush()
        return written

    def close(self, timeout: float = 5.0) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
