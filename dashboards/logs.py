"""Grafana dashboard "rpcscope / logs": access and application logs from Elasticsearch.

Reads the ECS records rpcscope writes (``logs-rpcscope*`` data streams via Fluentd). A record's
``trace.id`` links back to this dashboard filtered to that trace, which gathers every service's
records of one request: the stack has no trace backend, the shared trace id is the join.
"""

from __future__ import annotations

from urllib.parse import quote

from grafana_foundation_sdk.builders import dashboard, elasticsearch, logs, table
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_model
from grafana_foundation_sdk.models import elasticsearch as es_model

from dashboards import _common as c

SOURCE = "dashboards/logs.py"

# ECS / OpenTelemetry field names, as listed in rpcscope.schema.ACCESS_LOG_FIELDS (the test
# suite checks each is listed there).
LEVEL_FIELD = "log.level"
STATUS_CODE_FIELD = "rpc.grpc.status_code"
TRACE_ID_FIELD = "trace.id"
MESSAGE_FIELD = "message"

QUERY_VAR = "query"
#: gRPC status 0 is OK; everything else is an error from the RPC's point of view.
NON_OK = f"{STATUS_CODE_FIELD}:* AND NOT {STATUS_CODE_FIELD}:0"


def _trace_link() -> dict[str, object]:
    """Data link: this dashboard, same time range, filtered to the clicked trace id."""
    query = quote(f'{TRACE_ID_FIELD}:"', safe="") + "${__value.raw}" + quote('"', safe="")
    return c.link(
        "All logs of this trace", f"/d/{c.LOGS_UID}?${{__url_time_range}}&var-{QUERY_VAR}={query}"
    )


def _trace_override() -> list[dashboard_model.DynamicConfigValue]:
    return [dashboard_model.DynamicConfigValue(id_val="links", value=[_trace_link()])]


def _terms(field: str, agg_id: str) -> elasticsearch.Terms:
    return (
        elasticsearch.Terms()
        .id(agg_id)
        .field(field)
        .settings(
            elasticsearch.ElasticsearchTermsSettings()
            .size("10")
            .order(es_model.TermsOrder.DESC)
            .order_by("_count")
            .min_doc_count("1")
        )
    )


def _histogram(agg_id: str) -> elasticsearch.DateHistogram:
    return (
        elasticsearch.DateHistogram()
        .id(agg_id)
        .field(c.LOGS_TIME_FIELD)
        .settings(elasticsearch.ElasticsearchDateHistogramSettings().interval("auto"))
    )


def _count_by(field: str, query: str) -> elasticsearch.Dataquery:
    return (
        elasticsearch.Dataquery()
        .ref_id("A")
        .query(query)
        .time_field(c.LOGS_TIME_FIELD)
        .metrics([elasticsearch.Count().id("1")])
        .bucket_aggs([_terms(field, "2"), _histogram("3")])
    )


def _documents(
    kind: elasticsearch.Logs | elasticsearch.RawData, query: str
) -> elasticsearch.Dataquery:
    return (
        elasticsearch.Dataquery()
        .ref_id("A")
        .query(query)
        .time_field(c.LOGS_TIME_FIELD)
        .metrics([kind])
        .bucket_aggs([])
    )


def build_dashboard() -> dashboard_model.Dashboard:
    user_query = "$" + QUERY_VAR
    errors = f"({user_query}) AND {NON_OK}"
    builder = (
        c.base_dashboard("rpcscope / logs", c.LOGS_UID, SOURCE, refresh="1m")
        .link(
            dashboard.DashboardLink("Overview")
            .type(dashboard_model.DashboardLinkType.LINK)
            .url(f"/d/{c.OVERVIEW_UID}")
            .keep_time(True)
        )
        .with_variable(
            dashboard.TextBoxVariable(QUERY_VAR)
            .label("Lucene query")
            .description('e.g. rpc.service:"shop.Shop" AND log.level:error')
            .default_value("*")
            .current(dashboard_model.VariableOption(selected=True, text="*", value="*"))
        )
        .with_row(dashboard.Row(f"Logs ({c.LOGS_INDEX_PATTERN})"))
        .with_panel(
            c.timeseries_panel(
                "Log rate by level",
                f"Records per interval by {LEVEL_FIELD}, for the query above.",
                "short",
                datasource=c.ELASTICSEARCH_REF,
            )
            .draw_style(common.GraphDrawStyle.BARS)
            .with_target(_count_by(LEVEL_FIELD, user_query))
        )
        .with_panel(
            c.timeseries_panel(
                "Errors by gRPC status code",
                f"Records of RPCs that did not end OK, by {STATUS_CODE_FIELD} (numeric gRPC "
                "code: 2 Unknown, 4 DeadlineExceeded, 5 NotFound, 13 Internal, 14 Unavailable…).",
                "short",
                datasource=c.ELASTICSEARCH_REF,
            )
            .draw_style(common.GraphDrawStyle.BARS)
            .with_target(_count_by(STATUS_CODE_FIELD, errors))
        )
        .with_panel(
            table.Panel()
            .title("Error records")
            .description(
                "Latest records of failed RPCs. Click a trace.id to see every service's logs "
                "of that request."
            )
            .datasource(c.ELASTICSEARCH_REF)
            .height(10)
            .span(24)
            .show_header(True)
            .with_target(
                _documents(
                    elasticsearch.RawData()
                    .id("1")
                    .settings(elasticsearch.ElasticsearchRawDataSettings().size("100")),
                    errors,
                )
            )
            .override_by_name(TRACE_ID_FIELD, _trace_override())
        )
        .with_panel(
            logs.Panel()
            .title("Logs")
            .description("Newest first. Expand a line for its fields; trace.id links to its trace.")
            .datasource(c.ELASTICSEARCH_REF)
            .height(14)
            .span(24)
            .show_time(True)
            .wrap_log_message(True)
            .enable_log_details(True)
            .prettify_log_message(False)
            .show_labels(False)
            .show_common_labels(False)
            .sort_order(common.LogsSortOrder.DESCENDING)
            .dedup_strategy(common.LogsDedupStrategy.NONE)
            .with_target(
                _documents(
                    elasticsearch.Logs()
                    .id("1")
                    .settings(elasticsearch.ElasticsearchLogsSettings().limit("500")),
                    user_query,
                )
            )
            .override_by_name(TRACE_ID_FIELD, _trace_override())
        )
    )
    return c.finalize(builder)
