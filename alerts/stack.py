"""The fixed alerts: scrape targets and traffic, rpcscope's own health, and the stack's.

Everything here holds for every install, so it is generated once into
``alerts/generated/<group file>.yaml`` (the chart loads those files; ``alerting.alerts.<name>``
turns one off or changes its ``for:``). The per-SLO burn-rate rules depend on values and live
in :mod:`alerts.slo`.

rpcscope's metric names come from :mod:`rpcscope.schema`. The stack's own components export
their names under their own projects' rules; they are named once, below, with where they come
from.

Every alert carries a ``service`` label, so that Alertmanager can group by it and inhibit a
service's warnings while one of its critical alerts fires: the gRPC service
(``grpc_service``) for gRPC alerts, the scrape job for target alerts, the component otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from alerts import _common as a
from alerts.metrics import (
    AM_NOTIFY_FAILED,
    AM_NOTIFY_TOTAL,
    ES_FS_AVAILABLE,
    ES_FS_SIZE,
    ES_HEALTH,
    ES_HIGH_WATERMARK,
    ES_LOW_WATERMARK,
    FLUENTD_BUFFER_AVAILABLE,
    FLUENTD_BUFFER_MIN_FREE_PERCENT,
    FLUENTD_DEAD_LETTER_IDS,
    FLUENTD_EMITTED,
    FLUENTD_ERRORS,
    FLUENTD_RETRIES,
    PROM_NOTIFY_DROPPED,
    PROM_NOTIFY_ERRORS,
    PROM_NOTIFY_SENT,
    PROM_RULE_FAILURES,
    UP,
)
from dashboards import _common as c
from dashboards import grpc_overview, stack_health
from rpcscope import schema

TARGET_BY = (c.NAMESPACE_LABEL, c.JOB_LABEL)
SERVICE_BY = (c.NAMESPACE_LABEL, schema.LABEL_SERVICE)
#: Records waiting this long without any ack mean Fluentd (or the way to it) is not taking them.
FORWARD_NO_ACK_SECONDS: Final = 120


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    dashboard: str
    #: Static ``service`` label; empty when the expression itself yields one.
    service: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    def rule(self) -> dict[str, Any]:
        labels = {"severity": self.severity}
        if self.service:
            labels["service"] = self.service
        annotations = {
            "summary": self.summary,
            "description": self.description,
            a.RUNBOOK_KEY: a.runbook(self.name),
            a.DASHBOARD_KEY: self.dashboard,
            **self.extra,
        }
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": labels,
            "annotations": annotations,
        }


def _as_service(expr: str, source_label: str) -> str:
    """Copy ``source_label`` into ``service`` (Alertmanager groups and inhibits by it)."""
    return f'label_replace({expr}, "service", "$1", "{source_label}", "(.*)")'


def _inc(metric: str, matchers: Mapping[str, str] = {}, window: str = "10m",
         by: tuple[str, ...] = ()) -> str:
    body = c.series(metric, matchers) if matchers else metric
    return c.sum_by(by, f"increase({body}[{window}])")


def _rate(metric: str, matchers: Mapping[str, str] = {}, window: str = "5m",
          by: tuple[str, ...] = ()) -> str:
    body = c.series(metric, matchers) if matchers else metric
    return c.sum_by(by, f"rate({body}[{window}])")


def grpc_alerts() -> list[Alert]:
    overview = grpc_overview.build_dashboard()
    started = schema.SERVER_STARTED
    no_traffic = (
        f"({_rate(started, window='15m', by=SERVICE_BY)} == 0)"
        f" and ({_inc(started, window='1d', by=SERVICE_BY)} > 0)"
    )
    service_var = "{{ $labels.service | urlquery }}"
    kql = f'(print "{a.LOG_SERVICE_FIELD}:\\"" $labels.service "\\"")'
    return [
        Alert(
            "GRPCServerNoTraffic",
            _as_service(no_traffic, schema.LABEL_SERVICE),
            "5m",
            a.WARNING,
            "{{ $labels.service }} has received no calls for 15 minutes",
            "The gRPC service {{ $labels.service }} (namespace {{ $labels.namespace }}) "
            "completed calls during the last day but has started none in the last 15 "
            "minutes. Its burn-rate alerts cannot fire without traffic, so this alert "
            "stands in for them.",
            a.dashboard_path(overview, "Request rate by code",
                             {schema.LABEL_SERVICE: service_var}),
            extra={a.LOGS_KEY: a.discover_path(kql, 3600)},
        ),
        Alert(
            "RpcscopeInstrumentationErrors",
            _as_service(_rate(schema.INSTRUMENTATION_ERRORS, by=TARGET_BY) + " > 0",
                        c.JOB_LABEL),
            "10m",
            a.WARNING,
            "rpcscope's instrumentation is failing in {{ $labels.job }}",
            "{{ $labels.job }} counts {{ $value | humanize }} errors per second inside "
            f"rpcscope ({schema.INSTRUMENTATION_ERRORS}). The RPCs themselves are unaffected "
            "(the errors are swallowed), but their metrics, access logs or traces are "
            "incomplete.",
            a.dashboard_path(overview, "Instrumentation errors",
                             {c.JOB_LABEL: "{{ $labels.job | urlquery }}"}),
        ),
        Alert(
            "RpcscopeAccessLogRecordsDropped",
            _as_service(
                _rate(schema.LOG_RECORDS, {schema.LABEL_OUTCOME: "dropped"}, by=TARGET_BY)
                + " > 0",
                c.JOB_LABEL,
            ),
            "5m",
            a.WARNING,
            "{{ $labels.job }} is dropping access-log records",
            "{{ $labels.job }} drops {{ $value | humanize }} access-log records per second "
            f'({schema.LOG_RECORDS}{{{schema.LABEL_OUTCOME}="dropped"}}): its log sink '
            "cannot keep up or gave up delivering, so Kibana misses those calls.",
            a.dashboard_path(overview, "Access-log records by outcome",
                             {c.JOB_LABEL: "{{ $labels.job | urlquery }}"}),
        ),
    ]


def forward_alerts() -> list[Alert]:
    """The Fluentd Forward shipper's own health (ForwardSink, docs/fluentd-forward.md).

    ``seconds_since_last_ack`` keeps growing in a process that has nothing to send, so the
    no-ack alert only counts processes with records waiting in memory or on disk."""
    overview = grpc_overview.build_dashboard()
    job_var = {c.JOB_LABEL: "{{ $labels.job | urlquery }}"}
    records = schema.FORWARD_RECORDS
    waiting = f"{schema.FORWARD_QUEUE_BYTES} + {schema.FORWARD_SPILL_BYTES}"
    no_ack = (
        f"max by ({', '.join(TARGET_BY)}) "
        f"(({schema.FORWARD_SECONDS_SINCE_ACK} > {FORWARD_NO_ACK_SECONDS}) and ({waiting} > 0))"
    )
    return [
        Alert(
            "RpcscopeForwardNoAck",
            _as_service(no_ack, c.JOB_LABEL),
            "5m",
            a.WARNING,
            "Fluentd has acknowledged nothing from {{ $labels.job }} while records wait",
            "A process of {{ $labels.job }} has records waiting to be shipped, and Fluentd last "
            "acknowledged one of its batches {{ $value | humanize }} seconds ago "
            f"({schema.FORWARD_SECONDS_SINCE_ACK}). The shipper keeps the records (memory, "
            "then the spill directory) and retries, but they are not in Elasticsearch yet.",
            a.dashboard_path(overview, "Fluentd shipper: connection", job_var),
        ),
        Alert(
            "RpcscopeForwardSpilling",
            _as_service(
                _rate(records, {schema.LABEL_OUTCOME: "spilled"}, by=TARGET_BY) + " > 0",
                c.JOB_LABEL,
            ),
            "10m",
            a.WARNING,
            "{{ $labels.job }} is spilling log records to disk",
            "{{ $labels.job }} writes {{ $value | humanize }} log records per second to its "
            f'spill directory ({records}{{{schema.LABEL_OUTCOME}="spilled"}}): its memory '
            "buffer is full because Fluentd takes less than the service produces, or is away. "
            "Nothing is lost while the spill has room; once it is full, records are dropped.",
            a.dashboard_path(overview, "Fluentd shipper: backlog", job_var),
        ),
        Alert(
            "RpcscopeForwardDeadLetters",
            _as_service(
                _inc(records, {schema.LABEL_OUTCOME: "dead_lettered"}, by=TARGET_BY) + " > 0",
                c.JOB_LABEL,
            ),
            "0s",
            a.WARNING,
            "{{ $labels.job }} wrote log records to its dead-letter file",
            "{{ $value | humanize }} log records of {{ $labels.job }} went to the shipper's "
            "dead-letter file in the last 10 minutes "
            f'({records}{{{schema.LABEL_OUTCOME}="dead_lettered"}}): Fluentd refused each of '
            "them alone, even after its batch was split. They are on the service's disk, not "
            "in Elasticsearch.",
            a.dashboard_path(overview, "Fluentd shipper: records by outcome", job_var),
        ),
        Alert(
            "RpcscopeForwardRecordsDropped",
            _as_service(
                _inc(schema.FORWARD_DROPPED, by=(*TARGET_BY, schema.LABEL_REASON)) + " > 0",
                c.JOB_LABEL,
            ),
            "0s",
            a.WARNING,
            "{{ $labels.job }} lost log records in its Fluentd shipper ({{ $labels.reason }})",
            "The shipper of {{ $labels.job }} dropped {{ $value | humanize }} log records in "
            "the last 10 minutes for the reason {{ $labels.reason }} "
            f"({schema.FORWARD_DROPPED}). They are lost: no Fluentd, no spill and no "
            "dead-letter file has them.",
            a.dashboard_path(overview, "Fluentd shipper: dropped records", job_var),
        ),
    ]


def target_alerts() -> list[Alert]:
    board = stack_health.build_dashboard()
    return [
        Alert(
            "TargetDown",
            _as_service(f"{UP} == 0", c.JOB_LABEL),
            "5m",
            a.WARNING,
            "Prometheus cannot scrape {{ $labels.instance }} ({{ $labels.job }})",
            "The scrape of {{ $labels.instance }} in job {{ $labels.job }} (namespace "
            "{{ $labels.namespace }}) has failed for 5 minutes: the target is down, "
            "unreachable, or does not serve /metrics. Its alerts are blind meanwhile.",
            a.dashboard_path(board, stack_health.TARGETS_DOWN),
        ),
    ]


def fluentd_alerts() -> list[Alert]:
    board = stack_health.build_dashboard()
    by = (c.NAMESPACE_LABEL, "pod", "plugin_id")
    dead = {"plugin_id": "=~" + "|".join(FLUENTD_DEAD_LETTER_IDS)}
    return [
        Alert(
            "FluentdBufferNearlyFull",
            f"min by (namespace, pod, plugin_id) ({FLUENTD_BUFFER_AVAILABLE})"
            f" < {FLUENTD_BUFFER_MIN_FREE_PERCENT}",
            "10m",
            a.CRITICAL,
            "Fluentd {{ $labels.pod }}: output buffer {{ $labels.plugin_id }} is nearly full",
            "Only {{ $value | humanize }}% of the file buffer of {{ $labels.plugin_id }} in "
            "{{ $labels.pod }} is free. When it is full the node tailer pauses and the "
            "aggregator refuses Forward acks: logs stop flowing to Elasticsearch.",
            a.dashboard_path(board, stack_health.FLUENTD_BUFFER),
            service="fluentd",
        ),
        Alert(
            "FluentdRetrying",
            _inc(FLUENTD_RETRIES, by=by) + " > 0",
            "15m",
            a.WARNING,
            "Fluentd {{ $labels.pod }} keeps retrying {{ $labels.plugin_id }}",
            "{{ $labels.plugin_id }} in {{ $labels.pod }} retried {{ $value | humanize }} "
            "times in 10 minutes, for 15 minutes: its destination (Elasticsearch) refuses "
            "or does not answer, and the buffer fills meanwhile.",
            a.dashboard_path(board, stack_health.FLUENTD_RETRIES),
            service="fluentd",
        ),
        Alert(
            "FluentdOutputErrors",
            _inc(FLUENTD_ERRORS, by=by) + " > 0",
            "10m",
            a.WARNING,
            "Fluentd {{ $labels.pod }}: {{ $labels.plugin_id }} fails to write",
            "{{ $labels.plugin_id }} in {{ $labels.pod }} failed {{ $value | humanize }} "
            "writes in 10 minutes. Failed chunks are retried; chunks that keep failing end "
            "in the dead-letter files.",
            a.dashboard_path(board, stack_health.FLUENTD_ERRORS),
            service="fluentd",
        ),
        Alert(
            "FluentdDeadLetters",
            _inc(FLUENTD_EMITTED, dead, by=by) + " > 0",
            "0s",
            a.WARNING,
            "Fluentd {{ $labels.pod }} wrote log records to a dead-letter file",
            "{{ $value | humanize }} records went to {{ $labels.plugin_id }} in "
            "{{ $labels.pod }} in the last 10 minutes: Elasticsearch rejected them, or their "
            "chunk ran out of retries. They are kept on the pod's disk, not in Elasticsearch.",
            a.dashboard_path(board, stack_health.FLUENTD_DEAD_LETTERS),
            service="fluentd",
        ),
    ]


def elasticsearch_alerts() -> list[Alert]:
    board = stack_health.build_dashboard()
    used = f"(1 - {ES_FS_AVAILABLE} / {ES_FS_SIZE})"
    return [
        Alert(
            "ElasticsearchClusterRed",
            f'max by (namespace, cluster) ({ES_HEALTH}{{color="red"}}) == 1',
            "2m",
            a.CRITICAL,
            "Elasticsearch cluster {{ $labels.cluster }} is red",
            "At least one primary shard of cluster {{ $labels.cluster }} is unassigned: "
            "writes to its index fail, so Fluentd buffers and retries, and searches miss data.",
            a.dashboard_path(board, stack_health.ES_HEALTH),
            service="elasticsearch",
        ),
        Alert(
            "ElasticsearchClusterYellow",
            f'max by (namespace, cluster) ({ES_HEALTH}{{color="yellow"}}) == 1',
            "20m",
            a.WARNING,
            "Elasticsearch cluster {{ $labels.cluster }} is yellow",
            "Replica shards of cluster {{ $labels.cluster }} have been unassigned for 20 "
            "minutes: no data is lost yet, but one more node failure can lose some.",
            a.dashboard_path(board, stack_health.ES_HEALTH),
            service="elasticsearch",
        ),
        Alert(
            "ElasticsearchDiskLowWatermark",
            f"{used} > {ES_LOW_WATERMARK}",
            "15m",
            a.WARNING,
            "Elasticsearch node {{ $labels.name }} is past the low disk watermark",
            "{{ $value | humanizePercentage }} of the data disk of {{ $labels.name }} is used "
            f"(low watermark {ES_LOW_WATERMARK:.0%}): Elasticsearch allocates no new shards "
            "there, and the next rollover may fail to place its index.",
            a.dashboard_path(board, stack_health.ES_DISK),
            service="elasticsearch",
        ),
        Alert(
            "ElasticsearchDiskHighWatermark",
            f"{used} > {ES_HIGH_WATERMARK}",
            "5m",
            a.CRITICAL,
            "Elasticsearch node {{ $labels.name }} is past the high disk watermark",
            "{{ $value | humanizePercentage }} of the data disk of {{ $labels.name }} is used "
            f"(high watermark {ES_HIGH_WATERMARK:.0%}): shards are being moved away, and at "
            "95 % every index with a shard there turns read-only and log delivery stops.",
            a.dashboard_path(board, stack_health.ES_DISK),
            service="elasticsearch",
        ),
    ]


def prometheus_alerts() -> list[Alert]:
    board = stack_health.build_dashboard()
    by = (c.NAMESPACE_LABEL, c.JOB_LABEL, "instance")
    errors = _rate(PROM_NOTIFY_ERRORS, by=by)
    sent = _rate(PROM_NOTIFY_SENT, by=by)
    am_by = (c.NAMESPACE_LABEL, c.JOB_LABEL, "instance", "integration")
    return [
        Alert(
            "PrometheusRuleEvaluationFailures",
            _inc(PROM_RULE_FAILURES, window="5m", by=(*by, "rule_group")) + " > 0",
            "10m",
            a.CRITICAL,
            "Prometheus {{ $labels.instance }} fails to evaluate rules",
            "{{ $value | humanize }} evaluations of group {{ $labels.rule_group }} failed in "
            "5 minutes: alerts of that group may not fire.",
            a.dashboard_path(board, stack_health.PROM_RULE_FAILURES),
            service="prometheus",
        ),
        Alert(
            "PrometheusNotificationsFailing",
            f"({errors} / {sent} > 0.01) or ({_inc(PROM_NOTIFY_DROPPED, window='5m', by=by)} > 0)",
            "10m",
            a.CRITICAL,
            "Prometheus {{ $labels.instance }} fails to send alerts to Alertmanager",
            "Prometheus {{ $labels.instance }} could not deliver (or dropped) alerts to "
            "Alertmanager for 10 minutes: firing alerts may reach nobody.",
            a.dashboard_path(board, stack_health.PROM_NOTIFICATIONS),
            service="prometheus",
        ),
        Alert(
            "AlertmanagerNotificationsFailing",
            f"{_rate(AM_NOTIFY_FAILED, by=am_by)} / {_rate(AM_NOTIFY_TOTAL, by=am_by)} > 0.01",
            "10m",
            a.CRITICAL,
            "Alertmanager cannot deliver notifications via {{ $labels.integration }}",
            "{{ $value | humanizePercentage }} of the {{ $labels.integration }} notifications "
            "of {{ $labels.instance }} failed over 5 minutes: check the receiver's URL, "
            "credentials and the NetworkPolicy egress to it.",
            a.dashboard_path(board, stack_health.AM_NOTIFICATIONS),
            service="alertmanager",
        ),
    ]


#: File name (without .yaml) -> (group name, alerts).
GROUPS: Final = {
    "grpc": ("rpcscope-grpc", grpc_alerts),
    "forward": ("rpcscope-forward", forward_alerts),
    "targets": ("rpcscope-targets", target_alerts),
    "fluentd": ("rpcscope-fluentd", fluentd_alerts),
    "elasticsearch": ("rpcscope-elasticsearch", elasticsearch_alerts),
    "prometheus": ("rpcscope-prometheus-alertmanager", prometheus_alerts),
}


def build_rules() -> dict[str, dict[str, Any]]:
    """File name -> Prometheus rule file document."""
    return {
        name: {"groups": [{"name": group, "rules": [alert.rule() for alert in build()]}]}
        for name, (group, build) in GROUPS.items()
    }


def alert_names() -> list[str]:
    return [alert.name for _, build in GROUPS.values() for alert in build()]
