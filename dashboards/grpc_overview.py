"""Grafana dashboard "rpcscope / gRPC overview": traffic, errors, latency of every service.

Reads the go-grpc-prometheus metric families (rpcscope.schema), so it also works for Go and
Java services instrumented with the same names. Latency quantiles use unary RPCs only: a
stream's histogram observation is its whole lifetime, which would drown request latency.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models import dashboard as dashboard_model

from dashboards import _common as c
from rpcscope import schema

SOURCE = "dashboards/grpc_overview.py"

#: Every query on this dashboard narrows to the selected job, namespace and service.
SERVER = {
    c.JOB_LABEL: c.regex_var(c.JOB_LABEL),
    c.NAMESPACE_LABEL: c.regex_var(c.NAMESPACE_LABEL),
    schema.LABEL_SERVICE: c.regex_var(schema.LABEL_SERVICE),
}
SERVER_UNARY = {**SERVER, schema.LABEL_TYPE: schema.TYPE_UNARY}
#: Series of the selected jobs, any service: rpcscope's own telemetry has no grpc_service label,
#: and on the client side grpc_service is the *called* service, not one of the job's own.
TARGET = {k: v for k, v in SERVER.items() if k != schema.LABEL_SERVICE}
CLIENT = TARGET
CLIENT_UNARY = {**CLIENT, schema.LABEL_TYPE: schema.TYPE_UNARY}

BY_SERVICE = (schema.LABEL_SERVICE,)
BY_METHOD = (schema.LABEL_SERVICE, schema.LABEL_METHOD)


def _variables(builder: dashboard.Dashboard) -> dashboard.Dashboard:
    started = f'{{__name__=~"{schema.SERVER_STARTED}|{schema.CLIENT_STARTED}"}}'
    in_job = c.series(schema.SERVER_STARTED, {c.JOB_LABEL: c.regex_var(c.JOB_LABEL)})
    in_ns = c.series(schema.SERVER_STARTED, TARGET)
    return (
        builder.with_variable(c.prometheus_datasource_variable())
        .with_variable(c.label_values_variable(c.JOB_LABEL, "Job", started))
        .with_variable(c.label_values_variable(c.NAMESPACE_LABEL, "Namespace", in_job))
        .with_variable(c.label_values_variable(schema.LABEL_SERVICE, "gRPC service", in_ns))
    )


def _summary(builder: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        builder.with_row(dashboard.Row("Summary"))
        .with_panel(
            c.stat_panel(
                "Requests / s",
                "RPCs completed per second on the server, all codes.",
                "reqps",
                c.sum_by((), c.rate(schema.SERVER_HANDLED, SERVER)),
            )
        )
        .with_panel(
            c.stat_panel(
                "Server-fault error ratio",
                "Share of RPCs that ended with a server-fault code "
                f"({', '.join(schema.SERVER_FAULT_CODES)}). Client-fault codes such as "
                "NotFound or InvalidArgument do not count: they are the caller's problem.",
                "percentunit",
                c.error_ratio(schema.SERVER_HANDLED, SERVER, ()),
            )
        )
        .with_panel(
            c.stat_panel(
                "p99 latency (unary)",
                "99th percentile of server handling time of unary RPCs.",
                "s",
                c.histogram_quantile(0.99, schema.SERVER_HANDLING_SECONDS, SERVER_UNARY, ()),
            )
        )
        .with_panel(
            c.stat_panel(
                "In flight",
                "RPCs started but not yet completed (started - handled), as Go computes it.",
                "short",
                c.in_flight(schema.SERVER_STARTED, schema.SERVER_HANDLED, SERVER, ()),
            )
        )
    )


def _server(builder: dashboard.Dashboard) -> dashboard.Dashboard:
    latency = c.quantiles_panel(
        "Latency (unary)",
        "Server handling time quantiles of unary RPCs, per service. Streams are left out: "
        "their observation is the whole stream's lifetime.",
        schema.SERVER_HANDLING_SECONDS, SERVER_UNARY, BY_SERVICE, schema.LABEL_SERVICE,
    )
    return (
        builder.with_row(dashboard.Row("Server"))
        .with_panel(
            c.timeseries_panel(
                "Request rate by code",
                "RPCs completed per second, by grpc_code (Go's spelling, e.g. NotFound).",
                "reqps",
            ).with_target(
                c.prom(
                    c.sum_by((schema.LABEL_CODE,), c.rate(schema.SERVER_HANDLED, SERVER)),
                    f"{{{{{schema.LABEL_CODE}}}}}",
                )
            )
        )
        .with_panel(
            c.timeseries_panel(
                "Server-fault error ratio",
                "Per service: RPCs ending in a server-fault code / all RPCs. This is the "
                "availability SLO's error ratio.",
                "percentunit",
            ).with_target(
                c.prom(
                    c.error_ratio(schema.SERVER_HANDLED, SERVER, BY_SERVICE),
                    f"{{{{{schema.LABEL_SERVICE}}}}}",
                )
            ).override_by_query("A", [dashboard_model.DynamicConfigValue(
                id_val="links",
                value=[c.failed_calls_link(f"${{__field.labels.{schema.LABEL_SERVICE}}}")],
            )])
        )
        .with_panel(latency)
        .with_panel(
            c.timeseries_panel(
                "In flight",
                "RPCs started but not yet completed, per service (started - handled).",
                "short",
            ).with_target(
                c.prom(
                    c.in_flight(schema.SERVER_STARTED, schema.SERVER_HANDLED, SERVER, BY_SERVICE),
                    f"{{{{{schema.LABEL_SERVICE}}}}}",
                )
            )
        )
        .with_panel(
            c.timeseries_panel(
                "Stream messages",
                "Messages per second received and sent by the server (unary RPCs count one "
                "each way).",
                "short",
                width=24,
            )
            .with_target(
                c.prom(
                    c.sum_by(BY_SERVICE, c.rate(schema.SERVER_MSG_RECEIVED, SERVER)),
                    f"received {{{{{schema.LABEL_SERVICE}}}}}",
                    "A",
                )
            )
            .with_target(
                c.prom(
                    c.sum_by(BY_SERVICE, c.rate(schema.SERVER_MSG_SENT, SERVER)),
                    f"sent {{{{{schema.LABEL_SERVICE}}}}}",
                    "B",
                )
            )
        )
    )


def _methods(builder: dashboard.Dashboard) -> dashboard.Dashboard:
    """One row per method, merged from three instant queries; the method links to drill-down."""
    drilldown = (
        f"/d/{c.METHOD_UID}?${{__url_time_range}}&var-{c.DATASOURCE_VAR}=${{{c.DATASOURCE_VAR}}}"
        f"&var-{schema.LABEL_SERVICE}=${{__data.fields.{schema.LABEL_SERVICE}}}"
        f"&var-{schema.LABEL_METHOD}=${{__data.fields.{schema.LABEL_METHOD}}}"
    )
    panel = (
        c.table_panel(
            "Methods",
            "Per method over the dashboard's time range: request rate, server-fault error "
            "ratio, p99 latency (unary). Click a method for its drill-down.",
        )
        .with_target(c.prom_table(c.sum_by(BY_METHOD, c.rate(schema.SERVER_HANDLED, SERVER)), "A"))
        .with_target(c.prom_table(c.error_ratio(schema.SERVER_HANDLED, SERVER, BY_METHOD), "B"))
        .with_target(
            c.prom_table(
                c.histogram_quantile(0.99, schema.SERVER_HANDLING_SECONDS, SERVER_UNARY, BY_METHOD),
                "C",
            )
        )
        .with_transformation(dashboard_model.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            dashboard_model.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "renameByName": {
                        "Value #A": "req/s",
                        "Value #B": "server-fault ratio",
                        "Value #C": "p99 (s)",
                    },
                },
            )
        )
        .override_by_name(
            schema.LABEL_METHOD,
            [
                dashboard_model.DynamicConfigValue(
                    id_val="links", value=[c.link("Method drill-down", drilldown)]
                )
            ],
        )
        .override_by_name(
            "server-fault ratio",
            [dashboard_model.DynamicConfigValue(id_val="unit", value="percentunit")],
        )
        .override_by_name("p99 (s)", [dashboard_model.DynamicConfigValue(id_val="unit", value="s")])
    )
    return builder.with_row(dashboard.Row("Methods")).with_panel(panel)


def _client(builder: dashboard.Dashboard) -> dashboard.Dashboard:
    """The same signals seen by this job's gRPC clients (grpc_service = the called service)."""
    return (
        builder.with_row(dashboard.Row("Client (outgoing calls)"))
        .with_panel(
            c.timeseries_panel(
                "Client request rate by code",
                "Outgoing RPCs completed per second, by the code the client saw.",
                "reqps",
                width=8,
            ).with_target(
                c.prom(
                    c.sum_by((schema.LABEL_CODE,), c.rate(schema.CLIENT_HANDLED, CLIENT)),
                    f"{{{{{schema.LABEL_CODE}}}}}",
                )
            )
        )
        .with_panel(
            c.timeseries_panel(
                "Client server-fault error ratio",
                "Per called service: outgoing RPCs ending in a server-fault code / all.",
                "percentunit",
                width=8,
            ).with_target(
                c.prom(
                    c.error_ratio(schema.CLIENT_HANDLED, CLIENT, BY_SERVICE),
                    f"{{{{{schema.LABEL_SERVICE}}}}}",
                )
            )
        )
        .with_panel(
            c.timeseries_panel(
                "Client p99 latency (unary)",
                "99th percentile of outgoing unary call time, per called service.",
                "s",
                width=8,
            ).with_target(
                c.prom(
                    c.histogram_quantile(
                        0.99, schema.CLIENT_HANDLING_SECONDS, CLIENT_UNARY, BY_SERVICE
                    ),
                    f"{{{{{schema.LABEL_SERVICE}}}}}",
                )
            )
        )
        .with_panel(
            c.timeseries_panel(
                "Client in flight",
                "Outgoing RPCs started but not completed, per called service.",
                "short",
            ).with_target(
                c.prom(
                    c.in_flight(schema.CLIENT_STARTED, schema.CLIENT_HANDLED, CLIENT, BY_SERVICE),
                    f"{{{{{schema.LABEL_SERVICE}}}}}",
                )
            )
        )
        .with_panel(
            c.timeseries_panel(
                "Client stream messages",
                "Messages per second sent and received by clients, per called service.",
                "short",
            )
            .with_target(
                c.prom(
                    c.sum_by(BY_SERVICE, c.rate(schema.CLIENT_MSG_SENT, CLIENT)),
                    f"sent {{{{{schema.LABEL_SERVICE}}}}}",
                    "A",
                )
            )
            .with_target(
                c.prom(
                    c.sum_by(BY_SERVICE, c.rate(schema.CLIENT_MSG_RECEIVED, CLIENT)),
                    f"received {{{{{schema.LABEL_SERVICE}}}}}",
                    "B",
                )
            )
        )
    )


def _self_telemetry(builder: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        builder.with_row(dashboard.Row("rpcscope itself"))
        .with_panel(
            c.timeseries_panel(
                "Instrumentation errors",
                "Errors inside rpcscope, swallowed so the RPC is unaffected. Anything above "
                "zero means some telemetry is missing: check the service's logs.",
                "short",
            ).with_target(
                c.prom(
                    c.sum_by((c.JOB_LABEL,), c.rate(schema.INSTRUMENTATION_ERRORS, TARGET)),
                    f"{{{{{c.JOB_LABEL}}}}}",
                )
            )
        )
        .with_panel(
            c.timeseries_panel(
                "Access-log records by outcome",
                "Records handed to a log sink vs. dropped because its queue was full. Drops "
                "mean the log pipeline (Fluentd) is not keeping up.",
                "short",
            ).with_target(
                c.prom(
                    c.sum_by(
                        (c.JOB_LABEL, c.LOG_OUTCOME_LABEL), c.rate(schema.LOG_RECORDS, TARGET)
                    ),
                    f"{{{{{c.LOG_OUTCOME_LABEL}}}}} {{{{{c.JOB_LABEL}}}}}",
                )
            )
        )
        .with_panel(
            c.timeseries_panel(
                "Fluentd shipper: records by outcome",
                "Records the Forward shipper accepted, had acked by Fluentd, resent, spilled "
                "to disk, replayed from disk, dead-lettered, repaired or truncated. Retries "
                "and spills mean Fluentd is slow or away; dead letters mean it refuses records.",
                "short",
            ).with_target(
                c.prom(
                    c.sum_by((c.JOB_LABEL, c.LOG_OUTCOME_LABEL),
                             c.rate(schema.FORWARD_RECORDS, TARGET)),
                    f"{{{{{c.LOG_OUTCOME_LABEL}}}}} {{{{{c.JOB_LABEL}}}}}",
                )
            )
        )
        .with_panel(
            c.timeseries_panel(
                "Fluentd shipper: dropped records",
                "Records the shipper gave up on, by reason (memory and spill full, spill "
                "errors, closed, close deadline, unencodable). Anything above zero is lost.",
                "short",
            ).with_target(
                c.prom(
                    c.sum_by((c.JOB_LABEL, schema.LABEL_REASON),
                             c.rate(schema.FORWARD_DROPPED, TARGET)),
                    f"{{{{{schema.LABEL_REASON}}}}} {{{{{c.JOB_LABEL}}}}}",
                )
            )
        )
        .with_panel(
            c.timeseries_panel(
                "Fluentd shipper: backlog",
                "Bytes waiting for an ack in memory and on disk (spill). A growing backlog "
                "means Fluentd takes less than the service produces.",
                "bytes",
            )
            .with_target(
                c.prom(
                    c.sum_by((c.JOB_LABEL,), c.series(schema.FORWARD_QUEUE_BYTES, TARGET)),
                    f"memory {{{{{c.JOB_LABEL}}}}}",
                    "A",
                )
            )
            .with_target(
                c.prom(
                    c.sum_by((c.JOB_LABEL,), c.series(schema.FORWARD_SPILL_BYTES, TARGET)),
                    f"disk {{{{{c.JOB_LABEL}}}}}",
                    "B",
                )
            )
        )
        .with_panel(
            c.timeseries_panel(
                "Fluentd shipper: connection",
                "Seconds since Fluentd last acked a batch (worst process), bytes sent per "
                "second and reconnects per second.",
                "short",
            )
            .with_target(
                c.prom(
                    f"max by ({c.JOB_LABEL}) "
                    f"({c.series(schema.FORWARD_SECONDS_SINCE_ACK, TARGET)})",
                    f"seconds since ack {{{{{c.JOB_LABEL}}}}}",
                    "A",
                )
            )
            .with_target(
                c.prom(
                    c.sum_by((c.JOB_LABEL,), c.rate(schema.FORWARD_SENT_BYTES, TARGET)),
                    f"bytes/s {{{{{c.JOB_LABEL}}}}}",
                    "B",
                )
            )
            .with_target(
                c.prom(
                    c.sum_by((c.JOB_LABEL,), c.rate(schema.FORWARD_RECONNECTS, TARGET)),
                    f"reconnects/s {{{{{c.JOB_LABEL}}}}}",
                    "C",
                )
            )
        )
    )


def build_dashboard() -> dashboard_model.Dashboard:
    builder = (
        c.base_dashboard("rpcscope / gRPC overview", c.OVERVIEW_UID, SOURCE)
        .link(
            dashboard.DashboardLink("rpcscope dashboards")
            .type(dashboard_model.DashboardLinkType.DASHBOARDS)
            .tags(["rpcscope"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    for section in (_variables, _summary, _server, _methods, _client, _self_telemetry):
        builder = section(builder)
    return c.finalize(builder)
