"""The frozen telemetry schema: metric names, label names and values, units, buckets, log fields.

Everything that leaves the process under a name is named here, once. The interceptors, the
dashboards generator, the alert rules and the Helm chart read this module, so a rename is one
edit and CI (the drift checks on generated artifacts) shows every consumer it touches.

Names follow go-grpc-prometheus / go-grpc-middleware v2 exactly (see shared REFERENCE §1): the
Grafana dashboards and alert rules people already run for gRPC match on these names *and* on the
Go spellings of the label values (``unary``, ``NotFound``, ``Canceled``).
"""

from __future__ import annotations

from typing import Final

import grpc

# --- metric families -------------------------------------------------------------------------

SERVER_STARTED: Final = "grpc_server_started_total"
SERVER_HANDLED: Final = "grpc_server_handled_total"
SERVER_MSG_RECEIVED: Final = "grpc_server_msg_received_total"
SERVER_MSG_SENT: Final = "grpc_server_msg_sent_total"
SERVER_HANDLING_SECONDS: Final = "grpc_server_handling_seconds"

CLIENT_STARTED: Final = "grpc_client_started_total"
CLIENT_HANDLED: Final = "grpc_client_handled_total"
CLIENT_MSG_RECEIVED: Final = "grpc_client_msg_received_total"
CLIENT_MSG_SENT: Final = "grpc_client_msg_sent_total"
CLIENT_HANDLING_SECONDS: Final = "grpc_client_handling_seconds"

#: Errors raised inside rpcscope itself, counted and swallowed (never raised into an RPC).
INSTRUMENTATION_ERRORS: Final = "rpcscope_instrumentation_errors_total"
#: Access-log records by fate: ``emitted`` (handed to a sink), ``dropped`` (sink queue full).
LOG_RECORDS: Final = "rpcscope_log_records_total"

#: Help strings are Go's, verbatim, so ``# HELP`` lines match what Go services expose.
HELP: Final[dict[str, str]] = {
    SERVER_STARTED: "Total number of RPCs started on the server.",
    SERVER_HANDLED: (
        "Total number of RPCs completed on the server, regardless of success or failure."
    ),
    SERVER_MSG_RECEIVED: "Total number of RPC stream messages received on the server.",
    SERVER_MSG_SENT: "Total number of gRPC stream messages sent by the server.",
    SERVER_HANDLING_SECONDS: (
        "Histogram of response latency (seconds) of gRPC that had been application-level "
        "handled by the server."
    ),
    CLIENT_STARTED: "Total number of RPCs started on the client.",
    CLIENT_HANDLED: (
        "Total number of RPCs completed by the client, regardless of success or failure."
    ),
    CLIENT_MSG_RECEIVED: "Total number of RPC stream messages received by the client.",
    CLIENT_MSG_SENT: "Total number of gRPC stream messages sent by the client.",
    CLIENT_HANDLING_SECONDS: (
        "Histogram of response latency (seconds) of the gRPC until it is finished by the "
        "application."
    ),
    INSTRUMENTATION_ERRORS: (
        "Errors inside rpcscope's own instrumentation, swallowed so the observed RPC is unaffected."
    ),
    LOG_RECORDS: (
        "Access-log records by outcome: emitted by an RPC, delivered by the sink, or dropped."
    ),
}

# --- labels ----------------------------------------------------------------------------------

LABEL_TYPE: Final = "grpc_type"
LABEL_SERVICE: Final = "grpc_service"
LABEL_METHOD: Final = "grpc_method"
LABEL_CODE: Final = "grpc_code"
#: Label of ``rpcscope_log_records_total``.
LABEL_OUTCOME: Final = "outcome"
#: ``emitted``: produced by an RPC; ``delivered``: written/acknowledged by the sink;
#: ``dropped``: lost on purpose (queue full) or after the sink gave up, never silently.
LOG_OUTCOME_EMITTED: Final = "emitted"
LOG_OUTCOME_DELIVERED: Final = "delivered"
LOG_OUTCOME_DROPPED: Final = "dropped"
LOG_OUTCOMES: Final = (LOG_OUTCOME_EMITTED, LOG_OUTCOME_DELIVERED, LOG_OUTCOME_DROPPED)
CALL_LABELS: Final = (LABEL_TYPE, LABEL_SERVICE, LABEL_METHOD)
HANDLED_LABELS: Final = (LABEL_TYPE, LABEL_SERVICE, LABEL_METHOD, LABEL_CODE)

TYPE_UNARY: Final = "unary"
TYPE_CLIENT_STREAM: Final = "client_stream"
TYPE_SERVER_STREAM: Final = "server_stream"
TYPE_BIDI_STREAM: Final = "bidi_stream"
RPC_TYPES: Final = (TYPE_UNARY, TYPE_CLIENT_STREAM, TYPE_SERVER_STREAM, TYPE_BIDI_STREAM)

#: Label values for every method the server does not implement. A caller can put any string in
#: the method path; only registered methods may become label values (cardinality guard). These
#: are go-grpc-prometheus's own fallback values for a path it cannot split.
UNKNOWN_SERVICE: Final = "unknown"
UNKNOWN_METHOD: Final = "unknown"

#: ``grpc_code`` values exactly as Go's ``codes.Code.String()`` prints them (note ``Canceled``).
GO_CODE_NAMES: Final[dict[grpc.StatusCode, str]] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}
CODES: Final = tuple(GO_CODE_NAMES.values())

#: Codes that mean the *server* failed; they count against availability SLOs. Client-fault codes
#: (InvalidArgument, NotFound, ...) do not.
SERVER_FAULT_CODES: Final = (
    "Unknown",
    "DeadlineExceeded",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
)
#: The same set as a PromQL regex, for dashboards and rules.
SERVER_FAULT_REGEX: Final = "|".join(SERVER_FAULT_CODES)

#: Go's ``prometheus.DefBuckets`` (not prometheus_client's defaults, which add .075/.75/7.5).
DEFAULT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Services excluded from telemetry by default: probes and tooling, not traffic.
DEFAULT_EXCLUDED_SERVICES: Final = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)

# --- exposition --------------------------------------------------------------------------------

#: The conventional Kubernetes annotations our chart's Prometheus discovers pods by.
SCRAPE_ANNOTATION: Final = "prometheus.io/scrape"
PORT_ANNOTATION: Final = "prometheus.io/port"
PATH_ANNOTATION: Final = "prometheus.io/path"
METRICS_PATH: Final = "/metrics"
HEALTH_PATH: Final = "/healthz"
DEFAULT_METRICS_PORT: Final = 9464

# --- log records (Elastic Common Schema + OpenTelemetry rpc.* names) ---------------------------

ECS_VERSION: Final = "8.11.0"
#: The access log's ``log.logger``; Kibana saved searches and the Fluentd routes filter on it.
ACCESS_LOGGER: Final = "rpcscope.access"
#: Which side of the call logged it: ``server`` or ``client``.
FIELD_SIDE: Final = "grpc.component"
#: The access log's fields that alert links and dashboards filter on.
FIELD_SERVICE: Final = "rpc.service"
FIELD_CODE: Final = "grpc.code"
FIELD_DURATION: Final = "event.duration"
#: The path a caller sent for a method the server does not implement (metrics count it under
#: ``unknown``; the log keeps it, truncated to UNKNOWN_PATH_MAX characters, so a typo in a
#: client is findable).
FIELD_UNKNOWN_PATH: Final = "grpc.request.path"
UNKNOWN_PATH_MAX: Final = 256
#: Field names every access-log record carries, in output order.
ACCESS_LOG_FIELDS: Final = (
    "@timestamp",
    "log.level",
    "message",
    "ecs.version",
    "log.logger",
    "service.name",
    "service.version",
    "service.environment",
    "event.kind",
    "event.outcome",
    FIELD_DURATION,
    "rpc.system",
    FIELD_SERVICE,
    "rpc.method",
    "rpc.grpc.status_code",
    FIELD_CODE,
    "grpc.type",
    FIELD_SIDE,
    "client.address",
    "trace.id",
    "span.id",
    "host.name",
    "process.pid",
)
#: Metadata keys never logged even when allowlisted: credentials by name, and binary values.
ALWAYS_REDACTED_METADATA: Final = ("authorization", "cookie", "set-cookie", "proxy-authorization")

# --- Fluentd Forward shipper (rpcscope.exporters._forward.ForwardSink) ------------------------

#: Records by fate: ``accepted`` (buffered or spilled by the sink), ``acked`` (the server
#: confirmed them), ``retried`` (resent after a timeout, reconnect or refusal), ``spilled``
#: (written to a disk segment), ``replayed`` (acked from a segment, also after a restart),
#: ``dead_lettered`` (refused alone, written to the dead-letter file), ``repaired`` (a field
#: that could not be encoded was replaced or dropped), ``truncated`` (cut to the size limit).
FORWARD_RECORDS: Final = "rpcscope_forward_records_total"
FORWARD_OUTCOMES: Final = ("accepted", "acked", "retried", "spilled", "replayed",
                           "dead_lettered", "repaired", "truncated")
#: Records lost on purpose, by reason; never silently.
FORWARD_DROPPED: Final = "rpcscope_forward_dropped_records_total"
LABEL_REASON: Final = "reason"
FORWARD_DROP_REASONS: Final = ("buffer_full", "spill_full", "spill_error", "closed",
                               "close_timeout", "unencodable")
FORWARD_SENT_BYTES: Final = "rpcscope_forward_sent_bytes_total"
FORWARD_RECONNECTS: Final = "rpcscope_forward_reconnects_total"
FORWARD_QUEUE_BYTES: Final = "rpcscope_forward_queue_bytes"
FORWARD_SPILL_BYTES: Final = "rpcscope_forward_spill_bytes"
FORWARD_SECONDS_SINCE_ACK: Final = "rpcscope_forward_seconds_since_last_ack"

HELP.update({
    FORWARD_RECORDS: "Log records shipped to Fluentd over the Forward protocol, by outcome.",
    FORWARD_DROPPED: "Log records the Fluentd shipper dropped, by reason.",
    FORWARD_SENT_BYTES: "Bytes of Forward-protocol requests written to Fluentd (resends too).",
    FORWARD_RECONNECTS: "Connections the Fluentd shipper opened (first one and reconnects).",
    FORWARD_QUEUE_BYTES: "Encoded log records held in memory, waiting for a Fluentd ack.",
    FORWARD_SPILL_BYTES: "Bytes of spill segments on disk, waiting to be replayed to Fluentd.",
    FORWARD_SECONDS_SINCE_ACK: (
        "Seconds since Fluentd last acknowledged a batch (since start before the first ack)."
    ),
})
