"""Grafana dashboard "rpcscope / gRPC method": one method's traffic, errors, latency, callers.

Reached from the overview's method table (which passes service and method in the URL); links
on to the logs dashboard filtered to the same method.
"""

from __future__ import annotations

from urllib.parse import quote

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models import dashboard as dashboard_model

from dashboards import _common as c
from rpcscope import schema

SOURCE = "dashboards/grpc_method.py"

#: Service and method are single-value variables here: a drill-down shows one method.
METHOD = {
    c.JOB_LABEL: c.regex_var(c.JOB_LABEL),
    c.NAMESPACE_LABEL: c.regex_var(c.NAMESPACE_LABEL),
    schema.LABEL_SERVICE: c.var(schema.LABEL_SERVICE),
    schema.LABEL_METHOD: c.var(schema.LABEL_METHOD),
}
#: Callers of the method, seen from their gRPC clients, in any job or namespace.
CALLERS = {
    schema.LABEL_SERVICE: c.var(schema.LABEL_SERVICE),
    schema.LABEL_METHOD: c.var(schema.LABEL_METHOD),
}
BY_TYPE = (schema.LABEL_TYPE,)


def _logs_url() -> str:
    """Link to the logs dashboard with a Lucene query for this method's access-log records.

    The literal parts are percent-encoded here and the variables by Grafana (``percentencode``),
    so a service name can never break out of the query parameter.
    """
    service = "${" + schema.LABEL_SERVICE + ":percentencode}"
    method = "${" + schema.LABEL_METHOD + ":percentencode}"
    query = (
        quote('rpc.service:"', safe="")
        + service
        + quote('" AND rpc.method:"', safe="")
        + method
        + quote('"', safe="")
    )
    return f"/d/{c.LOGS_UID}?${{__url_time_range}}&var-query={query}"


def _variables(builder: dashboard.Dashboard) -> dashboard.Dashboard:
    started = c.series(schema.SERVER_STARTED, {c.JOB_LABEL: c.regex_var(c.JOB_LABEL)})
    in_ns = c.series(
        schema.SERVER_STARTED,
        {c.JOB_LABEL: c.regex_var(c.JOB_LABEL), c.NAMESPACE_LABEL: c.regex_var(c.NAMESPACE_LABEL)},
    )
    in_service = c.series(
        schema.SERVER_STARTED,
        {
            c.JOB_LABEL: c.regex_var(c.JOB_LABEL),
            c.NAMESPACE_LABEL: c.regex_var(c.NAMESPACE_LABEL),
            schema.LABEL_SERVICE: c.var(schema.LABEL_SERVICE),
        },
    )
    return (
        builder.with_variable(c.prometheus_datasource_variable())
        .with_variable(c.label_values_variable(c.JOB_LABEL, "Job", schema.SERVER_STARTED))
        .with_variable(c.label_values_variable(c.NAMESPACE_LABEL, "Namespace", started))
        .with_variable(
            c.label_values_variable(schema.LABEL_SERVICE, "gRPC service", in_ns, multi=False)
        )
        .with_variable(
            c.label_values_variable(schema.LABEL_METHOD, "gRPC method", in_service, multi=False)
        )
    )


def _summary(builder: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        builder.with_row(dashboard.Row("$grpc_service / $grpc_method"))
        .with_panel(
            c.stat_panel(
                "Requests / s",
                "Calls of this method completed per second on the server.",
                "reqps",
                c.sum_by((), c.rate(schema.SERVER_HANDLED, METHOD)),
            )
        )
        .with_panel(
            c.stat_panel(
                "Server-fault error ratio",
                f"Share ending in {', '.join(schema.SERVER_FAULT_CODES)}.",
                "percentunit",
                c.error_ratio(schema.SERVER_HANDLED, METHOD, ()),
            )
        )
        .with_panel(
            c.stat_panel(
                "p99 latency",
                "99th percentile of handling time (a stream's whole lifetime for streams).",
                "s",
                c.histogram_quantile(0.99, schema.SERVER_HANDLING_SECONDS, METHOD, ()),
            )
        )
        .with_panel(
            c.stat_panel(
                "In flight",
                "Calls started but not yet completed (started - handled).",
                "short",
                c.in_flight(schema.SERVER_STARTED, schema.SERVER_HANDLED, METHOD, ()),
            )
        )
    )


def _detail(builder: dashboard.Dashboard) -> dashboard.Dashboard:
    latency = c.quantiles_panel(
        "Latency quantiles",
        "Server handling time quantiles, by grpc_type (a method has one type; streams are "
        "timed over their whole lifetime).",
        schema.SERVER_HANDLING_SECONDS, METHOD, BY_TYPE, schema.LABEL_TYPE,
    )
    return (
        builder.with_row(dashboard.Row("Detail"))
        .with_panel(
            c.timeseries_panel(
                "Request rate by code", "Completed calls per second, by grpc_code.", "reqps"
            ).with_target(
                c.prom(
                    c.sum_by((schema.LABEL_CODE,), c.rate(schema.SERVER_HANDLED, METHOD)),
                    f"{{{{{schema.LABEL_CODE}}}}}",
                )
            )
        )
        .with_panel(latency)
        .with_panel(
            c.timeseries_panel(
                "Messages per call",
                "Stream messages received and sent per started call (1 and 1 for unary).",
                "short",
            )
            .with_target(
                c.prom(
                    f"{c.sum_by((), c.rate(schema.SERVER_MSG_RECEIVED, METHOD))} / "
                    f"{c.sum_by((), c.rate(schema.SERVER_STARTED, METHOD))}",
                    "received / call",
                    "A",
                )
            )
            .with_target(
                c.prom(
                    f"{c.sum_by((), c.rate(schema.SERVER_MSG_SENT, METHOD))} / "
                    f"{c.sum_by((), c.rate(schema.SERVER_STARTED, METHOD))}",
                    "sent / call",
                    "B",
                )
            )
        )
        .with_panel(
            c.timeseries_panel(
                "Callers (client side) by code",
                "Calls of this method made by instrumented clients, per calling job and the "
                "code they saw. Differences from the server's view are network or proxy "
                "failures, or client deadlines.",
                "reqps",
            ).with_target(
                c.prom(
                    c.sum_by(
                        (c.JOB_LABEL, schema.LABEL_CODE), c.rate(schema.CLIENT_HANDLED, CALLERS)
                    ),
                    f"{{{{{c.JOB_LABEL}}}}} {{{{{schema.LABEL_CODE}}}}}",
                )
            )
        )
    )


def build_dashboard() -> dashboard_model.Dashboard:
    builder = (
        c.base_dashboard("rpcscope / gRPC method", c.METHOD_UID, SOURCE)
        .link(
            dashboard.DashboardLink("Overview")
            .type(dashboard_model.DashboardLinkType.LINK)
            .url(f"/d/{c.OVERVIEW_UID}")
            .include_vars(True)
            .keep_time(True)
        )
        .link(
            dashboard.DashboardLink("Access logs of this method")
            .type(dashboard_model.DashboardLinkType.LINK)
            .url(_logs_url())
        )
    )
    for section in (_variables, _summary, _detail):
        builder = section(builder)
    return c.finalize(builder)
