"""Grafana dashboard "rpcscope / stack health": the panels the stack's own alerts link to.

Scrape targets, the log pipeline (Fluentd's buffers, retries, errors and dead letters),
Elasticsearch (cluster health, disk against its watermarks), and Prometheus and Alertmanager
delivering alerts. Each alert in ``alerts/stack.py`` opens one of these panels.
"""

from __future__ import annotations

from typing import Final

from grafana_foundation_sdk.builders import dashboard, timeseries
from grafana_foundation_sdk.models import dashboard as dashboard_model

from alerts import metrics as m
from dashboards import _common as c

SOURCE = "dashboards/stack_health.py"
UID: Final = "rpcscope-stack-health"

TARGETS_DOWN: Final = "Scrape targets down"
FLUENTD_BUFFER: Final = "Fluentd buffer free space"
FLUENTD_RETRIES: Final = "Fluentd retries"
FLUENTD_ERRORS: Final = "Fluentd output errors"
FLUENTD_DEAD_LETTERS: Final = "Fluentd dead letters"
ES_HEALTH: Final = "Elasticsearch cluster health"
ES_DISK: Final = "Elasticsearch disk used"
PROM_RULE_FAILURES: Final = "Prometheus rule evaluation failures"
PROM_NOTIFICATIONS: Final = "Prometheus alert delivery"
AM_NOTIFICATIONS: Final = "Alertmanager failed notifications"

_POD_PLUGIN = "{{pod}} {{plugin_id}}"


def _panel(title: str, description: str, unit: str, expr: str, legend: str
           ) -> timeseries.Panel:
    return c.timeseries_panel(title, description, unit).with_target(c.prom(expr, legend))


def build_dashboard() -> dashboard_model.Dashboard:
    rate = c.RATE_INTERVAL
    dead = "|".join(m.FLUENTD_DEAD_LETTER_IDS)
    builder = (
        c.base_dashboard("rpcscope / stack health", UID, SOURCE)
        .with_variable(c.prometheus_datasource_variable())
        .with_row(dashboard.Row("Scrape targets"))
        .with_panel(_panel(
            TARGETS_DOWN, "Targets whose last scrape failed, per job (up == 0).", "short",
            f"count by (job) ({m.UP}{{}} == 0)", "{{job}}"))
        .with_row(dashboard.Row("Log pipeline (Fluentd)"))
        .with_panel(_panel(
            FLUENTD_BUFFER, "Free space of each output's file buffer, in percent. At 0 the "
            "tailer pauses and the aggregator withholds Forward acks.", "percent",
            f"min by (pod, plugin_id) ({m.FLUENTD_BUFFER_AVAILABLE}{{}})", _POD_PLUGIN))
        .with_panel(_panel(
            FLUENTD_RETRIES, "Retries per output: the destination refuses or is unreachable.",
            "short", f"sum by (pod, plugin_id) (increase({m.FLUENTD_RETRIES}{{}}[{rate}]))",
            _POD_PLUGIN))
        .with_panel(_panel(
            FLUENTD_ERRORS, "Failed writes per output.", "short",
            f"sum by (pod, plugin_id) (increase({m.FLUENTD_ERRORS}{{}}[{rate}]))", _POD_PLUGIN))
        .with_panel(_panel(
            FLUENTD_DEAD_LETTERS, "Records written to the dead-letter files instead of "
            "Elasticsearch.", "short",
            f'sum by (pod, plugin_id) (increase({m.FLUENTD_EMITTED}{{plugin_id=~"{dead}"}}'
            f"[{rate}]))", _POD_PLUGIN))
        .with_row(dashboard.Row("Elasticsearch"))
        .with_panel(_panel(
            ES_HEALTH, "1 for the cluster's current colour (green, yellow, red).", "short",
            f"max by (cluster, color) ({m.ES_HEALTH}{{}}) == 1", "{{cluster}} {{color}}"))
        .with_panel(_panel(
            ES_DISK, f"Data disk used per node; the low watermark is "
            f"{m.ES_LOW_WATERMARK:.0%}, the high one {m.ES_HIGH_WATERMARK:.0%}.", "percentunit",
            f"1 - {m.ES_FS_AVAILABLE}{{}} / {m.ES_FS_SIZE}{{}}", "{{name}}"))
        .with_row(dashboard.Row("Alert delivery"))
        .with_panel(_panel(
            PROM_RULE_FAILURES, "Failed rule evaluations per group.", "short",
            f"sum by (rule_group) (increase({m.PROM_RULE_FAILURES}{{}}[{rate}]))",
            "{{rule_group}}"))
        .with_panel(_panel(
            PROM_NOTIFICATIONS, "Alerts Prometheus failed to send to, or dropped before, "
            "Alertmanager, per second.", "short",
            f"sum by (instance) (rate({m.PROM_NOTIFY_ERRORS}{{}}[{rate}])) + "
            f"sum by (instance) (rate({m.PROM_NOTIFY_DROPPED}{{}}[{rate}]))", "{{instance}}"))
        .with_panel(_panel(
            AM_NOTIFICATIONS, "Notifications Alertmanager failed to deliver, per integration "
            "and second.", "short",
            f"sum by (integration) (rate({m.AM_NOTIFY_FAILED}{{}}[{rate}]))", "{{integration}}"))
    )
    return c.finalize(builder)
