"""W3C trace context for every call, and real OpenTelemetry spans when an SDK is configured.

Two modes, chosen per call so a TracerProvider configured after the Scope is still honoured:

* **OTel mode** — the TracerProvider (``tracer_provider=``, else the global one) is a real one
  (e.g. the SDK's): server and client spans
  are genuine OTel spans (any OTel exporter works), context is extracted/injected with the global
  propagator. We fix what opentelemetry-instrumentation-grpc gets wrong: an uncaught exception
  makes the server span ``rpc.grpc.status_code=2`` / ERROR, recorded once.
* **ids mode** — no SDK: we still read ``traceparent``, mint ids, and write ``traceparent`` on
  client calls, so logs and exemplars correlate across services without paying for spans. Parsing
  a 55-byte header by hand is cheaper than building an OTel context per call, and the format is
  fixed by the W3C spec (version 00).
"""

from __future__ import annotations

from time import monotonic
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import (
    NoOpTracerProvider,
    ProxyTracerProvider,
    SpanKind,
    Status,
    StatusCode,
)

from rpcscope import schema
from rpcscope.collector._core import SERVER, CallRecord, is_server_fault
from rpcscope.collector._ids import (
    CURRENT_IDS,
    next_call_number,
    resolve_ids,
    traceparent,
    traceparent_in,
)

TRACEPARENT: Final = "traceparent"
_GRPC_NUMERIC: Final = {name: code.value[0] for code, name in schema.GO_CODE_NAMES.items()}


class _MetadataGetter(Getter[Any]):
    """OTel propagator getter over gRPC's invocation metadata (a sequence of key/value pairs)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        values = [v for k, v in carrier if k == key and isinstance(v, str)]
        return values or None

    def keys(self, carrier: Any) -> list[str]:
        return [k for k, _ in carrier]


_GETTER: Final = _MetadataGetter()


class Tracing:
    """Starts/finishes the trace side of a call record; see module doc for the two modes."""

    __slots__ = ("_provider", "_tracer_name", "next_check", "tracer")

    #: How often to look again for a TracerProvider configured after the Scope was built.
    RECHECK_SECONDS: Final = 1.0

    def __init__(self, provider: Any = None, tracer_name: str = "rpcscope") -> None:
        self._provider = provider
        self._tracer_name = tracer_name
        #: The OTel tracer once a real provider was found; read by the Pipeline's hot path.
        self.tracer: Any = None
        #: monotonic() time before which we do not look for a provider again.
        self.next_check = 0.0
        self.look()

    def look(self, batch: object = None) -> None:
        """Find a real TracerProvider: at start, and then (as a fold of the batcher, so never on
        the request path) at most once a second until one is found.

        ``get_tracer_provider()`` reads ``os.environ`` on every call; OTel allows the global
        provider to be set only once, so a real one found stays. A provider configured after
        the Scope was built is used from the next batcher round on.
        """
        if self.tracer is not None:
            return
        now = monotonic()
        if now < self.next_check:
            return
        self.next_check = now + self.RECHECK_SECONDS
        provider = self._provider if self._provider is not None else trace.get_tracer_provider()
        if isinstance(provider, ProxyTracerProvider | NoOpTracerProvider):
            return
        self.tracer = provider.get_tracer(self._tracer_name)

    # -- server ---------------------------------------------------------------------------------

    def start_server(self, record: CallRecord, metadata: Any) -> None:
        """A server span (called only once a provider was found: see :meth:`look`)."""
        tracer = self.tracer
        if tracer is not None:
            parent_ctx = propagate.extract(metadata or (), getter=_GETTER)
            span = tracer.start_span(
                _span_name(record), context=parent_ctx, kind=SpanKind.SERVER,
                attributes=_span_attributes(record),
            )
            record.otel_span = (span, otel_context.attach(trace.set_span_in_context(span)))
            record.trace = (span.get_span_context(), None)
            record.ids_token = CURRENT_IDS.set(record.trace)

    # -- client ---------------------------------------------------------------------------------

    def start_client(self, record: CallRecord, metadata: Any = None) -> None:
        """A client span (OTel mode) or ids, continuing the server call this client call is
        made in; outside one, a ``traceparent`` the caller put in ``metadata`` is continued."""
        tracer = self.tracer
        current = CURRENT_IDS.get()
        if tracer is not None:
            parent_ctx = None
            if current is None and metadata:
                parent_ctx = propagate.extract(metadata, getter=_GETTER)
            span = tracer.start_span(_span_name(record), context=parent_ctx,
                                     kind=SpanKind.CLIENT, attributes=_span_attributes(record))
            record.otel_span = (span, None)
            record.trace = (span.get_span_context(), None)
            return
        if current is not None:
            parent: str | None = traceparent(resolve_ids(current))
        else:
            parent = traceparent_in(metadata) if metadata else None
        record.trace = (parent, next_call_number())

    def outgoing_metadata(self, record: CallRecord, metadata: Any = None
                          ) -> list[tuple[str, str]]:
        """The propagation headers a client call must carry (``metadata``: the caller's own,
        whose ``traceparent``, if any, this call continues and so replaces)."""
        if record.otel_span is not None:
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(record.otel_span[0]))
            return list(carrier.items())
        if record.trace is None:
            return []
        return [(TRACEPARENT, traceparent(resolve_ids(record.trace)))]

    # -- both -----------------------------------------------------------------------------------

    def detach(self, record: CallRecord) -> None:
        """Leave the span's context, on the thread or task that entered it."""
        span, token = record.otel_span
        if token is not None:
            record.otel_span = (span, None)
            try:
                otel_context.detach(token)
            except Exception:  # noqa: S110 - a foreign context at detach is not the RPC's problem
                pass

    def finish(self, record: CallRecord) -> None:
        """End the OTel span with the call's final status."""
        state = record.otel_span
        if state is None:
            return
        record.otel_span = None
        span = state[0]
        code = record.code
        span.set_attribute("rpc.grpc.status_code", _GRPC_NUMERIC.get(code, 2))
        # Semantic conventions: a server span is an error only for server-fault codes; a client
        # span for any non-OK code.
        failed = is_server_fault(code) if record.info.side == SERVER else code != "OK"
        if record.error is not None and code == "Unknown":
            span.record_exception(record.error)
        if failed:
            span.set_status(Status(StatusCode.ERROR, record.details or code))
        span.end()


def _span_name(record: CallRecord) -> str:
    return record.info.full_method[1:]


def _span_attributes(record: CallRecord) -> dict[str, str]:
    return {
        "rpc.system": "grpc",
        "rpc.service": record.info.service,
        "rpc.method": record.info.method,
    }
