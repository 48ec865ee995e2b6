"""Grafana dashboard "rpcscope / SLOs": what someone paged by a burn-rate alert opens first.

Per service and SLO: the 30-day error budget left, the burn rate over each alert window against
that window's threshold (REFERENCE §4: 14.4 / 6 / 3 / 1), and the burn-rate alerts firing. It
reads the recording rules the chart renders from ``alerting.slos`` (alerts/slo.py), so a new SLO
in values appears here without a dashboard change.
"""

from __future__ import annotations

from typing import Final

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_model

from alerts import slo_names as n
from dashboards import _common as c

SOURCE = "dashboards/slo.py"
UID: Final = "rpcscope-slo"

AVAILABILITY_BUDGET: Final = "Availability error budget left (30d)"
AVAILABILITY_BURN: Final = "Availability burn rate"
LATENCY_BUDGET: Final = "Latency error budget left (30d)"
LATENCY_BURN: Final = "Latency burn rate"
FIRING: Final = "Firing burn-rate alerts"

SELECTED = {c.NAMESPACE_LABEL: c.regex_var(c.NAMESPACE_LABEL), "service": c.regex_var("service")}


def _per_budget(expr: str, objective: str) -> str:
    """``expr`` (an error ratio) in units of the SLO's error budget (1 - objective)."""
    return f"({expr}) / on (slo) group_left () (1 - {objective})"


def budget_left(record_5m: str, objective: str) -> str:
    """1 - (error ratio over 30 days / budget): averaged from the 5m ratios (as Sloth does), so
    the panel does not run a 30-day rate over raw counters."""
    sel = c.series(record_5m, SELECTED)
    ratio = f"sum_over_time({sel}[30d]) / count_over_time({sel}[30d])"
    return f"1 - {_per_budget(ratio, objective)}"


def _budget_panel(title: str, record_5m: str, objective: str) -> timeseries.Panel:
    return c.timeseries_panel(
        title,
        "Share of the 30-day error budget not yet spent (1 = untouched, 0 = gone, below 0 = "
        "objective missed), from the SLO's 5-minute error ratios.",
        "percentunit",
    ).with_target(c.prom(budget_left(record_5m, objective), "{{slo}} {{service}}"))


def _burn_panel(title: str, records: dict[str, str], objective: str) -> timeseries.Panel:
    panel = c.timeseries_panel(
        title,
        "Error ratio over each alert window divided by the error budget: 1 spends exactly the "
        "budget in 30 days. An alert fires when both windows of a tier exceed its threshold "
        "(dashed lines).",
        "x",
    )
    refs = iter("ABCDEFGHIJ")
    for tier in n.TIERS:
        burn = _per_budget(c.series(records[tier.long], SELECTED), objective)
        panel = panel.with_target(
            c.prom(burn, f"{{{{slo}}}} {{{{service}}}} {tier.long}", next(refs))
        )
    # The tiers' factors as dashed threshold lines (Grafana draws a line at each step).
    steps = [dashboard_model.Threshold(value=None, color="green")] + [
        dashboard_model.Threshold(value=factor, color=color)
        for factor, color in zip(sorted({t.factor for t in n.TIERS}),
                                 ("yellow", "orange", "red", "dark-red"), strict=True)
    ]
    return panel.thresholds(
        dashboard.ThresholdsConfig().mode(dashboard_model.ThresholdsMode.ABSOLUTE).steps(steps)
    ).thresholds_style(
        common_builder.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.DASHED)
    )


def build_dashboard() -> dashboard_model.Dashboard:
    objective_a = c.series(n.AVAILABILITY_OBJECTIVE, {})
    objective_l = c.series(n.LATENCY_OBJECTIVE, {})
    any_slo = f'{{__name__=~"{n.ERRORS_PREFIX}5m|{n.SLOW_PREFIX}5m"}}'
    firing = c.series(
        "ALERTS",
        {"alertstate": "firing", "alertname": "=~" + "|".join(n.ALERT_NAMES), **SELECTED},
    )
    builder = (
        c.base_dashboard("rpcscope / SLOs", UID, SOURCE)
        .time("now-6h", "now")
        .with_variable(c.prometheus_datasource_variable())
        .with_variable(c.label_values_variable(c.NAMESPACE_LABEL, "Namespace", any_slo))
        .with_variable(c.label_values_variable(
            "service", "Service", f'{{__name__=~"{n.ERRORS_PREFIX}5m|{n.SLOW_PREFIX}5m",'
            f'namespace=~"$namespace"}}'))
        .with_row(dashboard.Row("Alerts"))
        .with_panel(
            c.table_panel(FIRING, "Burn-rate alerts firing now, with their SLO and window.")
            .with_target(c.prom_table(firing, "A"))
        )
        .with_row(dashboard.Row("Availability"))
        .with_panel(_budget_panel(AVAILABILITY_BUDGET, n.ERRORS_PREFIX + "5m", objective_a))
        .with_panel(_burn_panel(
            AVAILABILITY_BURN, {w: n.ERRORS_PREFIX + w for w in n.WINDOWS}, objective_a))
        .with_row(dashboard.Row("Latency"))
        .with_panel(_budget_panel(LATENCY_BUDGET, n.SLOW_PREFIX + "5m", objective_l))
        .with_panel(_burn_panel(
            LATENCY_BURN, {w: n.SLOW_PREFIX + w for w in n.WINDOWS}, objective_l))
    )
    return c.finalize(builder)
