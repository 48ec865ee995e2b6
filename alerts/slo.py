"""Multi-window multi-burn-rate rules for one gRPC SLO, as a Helm template.

SLOs are values (``alerting.slos``), so their rules can only exist at install time: this module
writes the *template* of one SLO's rules, ``charts/rpcscope-stack/templates/generated/
_slo_rules.tpl``, and the chart renders it once per SLO after checking the values
(``templates/prometheus/_rules.tpl``). The rule shapes, windows, factors, metric and label names
are decided here, from :mod:`rpcscope.schema` and :mod:`alerts.slo_names`; the chart only
supplies the SLO's own values.

The template builds the rules as data (``dict``/``list``) and prints them with ``toJson``, so no
value can break the YAML, and Prometheus's own template actions in annotations
(``{{ $labels.service }}``) travel as plain strings. Per SLO it records, for every window:

- ``slo:grpc_server_handled_errors:ratio_rate<w>``: calls ending in one of the SLO's error codes
  / all calls (0 when there are no errors, nothing when there is no traffic);
- ``slo:grpc_server_handling_seconds_slow:ratio_rate<w>`` (with a latency objective): unary
  calls slower than the threshold / all unary calls (a stream's duration is its lifetime);

labelled ``slo``, ``namespace``, ``grpc_service`` and ``service`` (a copy of ``grpc_service``:
Alertmanager groups and inhibits by ``service``), plus one alert per tier of
:data:`alerts.slo_names.TIERS`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from alerts import _common as a
from alerts import slo_names as n
from dashboards import _common as c
from dashboards import slo as slo_dashboard
from rpcscope import schema

DEFINE = "rpcscope-stack.alerting.sloGroups"
BY = f"{c.NAMESPACE_LABEL}, {schema.LABEL_SERVICE}"


@dataclass(frozen=True)
class V:
    """A Go template expression inside a concatenation (everything else is a literal)."""

    expr: str


Part = str | V


def concat(*parts: Part) -> str:
    """A Go template expression printing the parts one after the other (adjacent literals
    merged, so the generated template stays readable)."""
    merged: list[Part] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        elif part != "":
            merged.append(part)
    items = [p.expr if isinstance(p, V) else json.dumps(p) for p in merged]
    return "(print " + " ".join(items) + ")" if len(items) != 1 else items[0]


def gdict(**items: str) -> str:
    return "(dict " + " ".join(f"{json.dumps(k)} {v}" for k, v in items.items()) + ")"


SLO = V("$s.name")
SEL = V("$s.selector")


def _service_label(expr: Sequence[Part]) -> list[Part]:
    return ["label_replace(", *expr, f', "service", "$1", "{schema.LABEL_SERVICE}", "(.*)")']


def availability_ratio(window: str) -> list[Part]:
    handled = schema.SERVER_HANDLED
    total: list[Part] = [f"sum by ({BY}) (rate({handled}{{", SEL, f"}}[{window}]))"]
    bad: list[Part] = [f"sum by ({BY}) (rate({handled}{{", SEL,
                       f',{schema.LABEL_CODE}=~"', V("$s.codes"), f'"}}[{window}]))']
    return _service_label(["(", *bad, " or 0 * ", *total, ") / (", *total, " > 0)"])


def latency_ratio(window: str) -> list[Part]:
    h = schema.SERVER_HANDLING_SECONDS
    unary = f',{schema.LABEL_TYPE}="{schema.TYPE_UNARY}"'
    fast: list[Part] = [f"sum by ({BY}) (rate({h}_bucket{{", SEL, unary,
                        ',le=~"', V("$s.latency.le"), f'"}}[{window}]))']
    total: list[Part] = [f"sum by ({BY}) (rate({h}_count{{", SEL, unary, f"}}[{window}]))"]
    return _service_label(["1 - (", *fast, " / (", *total, " > 0))"])


def _kql_availability() -> list[Part]:
    # A Prometheus template expression (evaluated per alert) whose value is the KQL query.
    return [
        f'(print "{a.LOG_SERVICE_FIELD}:\\"" $labels.service "\\" and {a.LOG_CODE_FIELD}:(',
        V("$s.codesKql"),
        ')")',
    ]


def _kql_latency() -> list[Part]:
    return [
        f'(print "{a.LOG_SERVICE_FIELD}:\\"" $labels.service "\\" and '
        f'{a.LOG_DURATION_FIELD} > ',
        V("$s.latency.thresholdNs"),
        '")',
    ]


def _alert(kind: str, tier: n.Tier) -> str:
    availability = kind == "availability"
    prefix = n.ERRORS_PREFIX if availability else n.SLOW_PREFIX
    objective = V("$s.objective") if availability else V("$s.latency.objective")
    pct = V("$s.objectivePercent") if availability else V("$s.latency.objectivePercent")
    name = n.AVAILABILITY_ALERT if availability else n.LATENCY_ALERT
    threshold: list[Part] = [f"({tier.factor:g} * (1 - ", objective, "))"]
    expr: list[Part] = [
        f'{prefix}{tier.long}{{slo="', SLO, '"} > ', *threshold,
        f' and {prefix}{tier.short}{{slo="', SLO, '"} > ', *threshold,
    ]
    what: list[Part] = (
        ["ended with a server-fault code (", V("$s.codesText"), ")"]
        if availability
        else ["took longer than ", V("$s.latency.thresholdText"), " (unary calls)"]
    )
    exhaust = f"{tier.days_to_exhaustion:.3g} days"
    summary: list[Part] = [
        "{{ $labels.service }}: SLO ", SLO,
        f" burns its {kind} error budget {tier.factor:g}x too fast ({tier.long} and "
        f"{tier.short} windows)",
    ]
    description: list[Part] = [
        "{{ $value | humanizePercentage }} of the calls to {{ $labels.service }} "
        "(namespace {{ $labels.namespace }}) ", *what,
        f" over the last {tier.long}, and the last {tier.short} agrees. The objective is ",
        pct, f"% over 30 days: at this rate the whole error budget is gone in {exhaust} "
        f"({tier.budget_percent}% of it every {tier.long}).",
    ]
    board = slo_dashboard.build_dashboard()
    panel = slo_dashboard.AVAILABILITY_BURN if availability else slo_dashboard.LATENCY_BURN
    dash = a.dashboard_path(board, panel, {
        c.NAMESPACE_LABEL: "{{ $labels.namespace | urlquery }}",
        "service": "{{ $labels.service | urlquery }}",
    }) + f"&from=now-{tier.long}&to=now"
    kql = _kql_availability() if availability else _kql_latency()
    logs_path = a.discover_path("\x00", tier.long_seconds)
    before, after = logs_path.split("\x00")
    labels = gdict(severity=json.dumps(tier.severity), slo=SLO.expr,
                   window=json.dumps(tier.long))
    annotations = gdict(**{
        "summary": concat(*summary),
        "description": concat(*description),
        a.RUNBOOK_KEY: concat(a.runbook(name)),
        a.DASHBOARD_KEY: concat(dash),
        a.LOGS_KEY: concat(before, *kql, after),
    })
    rule = gdict(
        alert=json.dumps(name),
        expr=concat(*expr),
        **{"for": f'(index $for "{tier.key}")'},
        labels=labels,
        annotations=annotations,
    )
    return f"{{{{- $alerts = append $alerts {rule} -}}}}"


def _record(name: str, expr: Sequence[Part]) -> str:
    rule = gdict(record=json.dumps(name), expr=concat(*expr), labels=gdict(slo=SLO.expr))
    return f"{{{{- $records = append $records {rule} -}}}}"


def _kind(kind: str) -> list[str]:
    availability = kind == "availability"
    lines = []
    for w in n.WINDOWS:
        if availability:
            lines.append(_record(n.ERRORS_PREFIX + w, availability_ratio(w)))
        else:
            lines.append(_record(n.SLOW_PREFIX + w, latency_ratio(w)))
    objective = n.AVAILABILITY_OBJECTIVE if availability else n.LATENCY_OBJECTIVE
    value = V("$s.objective") if availability else V("$s.latency.objective")
    lines.append(_record(objective, ["vector(", value, ")"]))
    lines += [_alert(kind, tier) for tier in n.TIERS]
    return lines


def build_template() -> str:
    lines = [
        "{{- /*",
        c.generated_marker("alerts/slo.py"),
        "",
        f'{DEFINE}: the rule groups of one SLO, as a JSON list. Args: (dict "slo" <the',
        'normalized SLO from rpcscope-stack.alerting.slos> "for" <alerting.slo.for>). Link',
        "annotations are paths: the chart completes them like the fixed rules' (_rules.tpl).",
        "*/ -}}",
        f'{{{{- define "{DEFINE}" -}}}}',
        "{{- $s := .slo -}}",
        "{{- $for := .for -}}",
        "{{- $records := list -}}",
        "{{- $alerts := list -}}",
        *_kind("availability"),
        "{{- if $s.latency -}}",
        *_kind("latency"),
        "{{- end -}}",
        '{{- $rec := dict "name" (print "slo-" $s.name "-recordings") "rules" $records -}}',
        '{{- $alg := dict "name" (print "slo-" $s.name "-alerts") "rules" $alerts -}}',
        "{{- toJson (list $rec $alg) -}}",
        "{{- end -}}",
        "",
    ]
    return "\n".join(lines)
