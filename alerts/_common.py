"""What the fixed rules and the SLO rule template share: severities, link paths, log fields.

Link annotations hold *paths*; the chart prepends the URLs of ``alerting.links`` when it loads
the rules (``templates/prometheus/_rules.tpl``), so one generated file serves every install:

=================  ===================================  ===================================
annotation         generated value                      the chart prepends
=================  ===================================  ===================================
``runbook_url``    ``/d/<runbooks>/?viewPanel=<id>#<a>``  Grafana URL, or ``runbookUrl`` + ``#<a>``
``dashboard_url``  ``/d/<uid>/?viewPanel=<id>&var-...``  ``alerting.links.grafanaUrl``
``logs_url``       ``/app/discover#/?_g=...&_a=...``     ``alerting.links.kibanaUrl``
=================  ===================================  ===================================
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Final, Protocol
from urllib.parse import quote

from dashboards import kibana_logs, runbooks
from rpcscope import schema

CRITICAL: Final = "critical"
WARNING: Final = "warning"

RUNBOOK_KEY: Final = "runbook_url"
DASHBOARD_KEY: Final = "dashboard_url"
LOGS_KEY: Final = "logs_url"
#: Annotation keys whose values the chart turns into absolute URLs, and the value it uses.
LINK_BASES: Final[Mapping[str, str]] = {
    RUNBOOK_KEY: "runbookUrl",
    DASHBOARD_KEY: "grafanaUrl",
    LOGS_KEY: "kibanaUrl",
}

#: ECS / OpenTelemetry fields of rpcscope's access log the Kibana links filter on.
LOG_SERVICE_FIELD: Final = schema.FIELD_SERVICE
LOG_CODE_FIELD: Final = schema.FIELD_CODE
LOG_DURATION_FIELD: Final = schema.FIELD_DURATION
#: The Kibana data view the chart provisions (dashboards/kibana_logs.py).
DATA_VIEW_ID: Final = kibana_logs.DATA_VIEW_ID


class _Built(Protocol):
    panels: Any
    uid: Any


@functools.cache
def _runbooks() -> _Built:
    return runbooks.build_dashboard()


def runbook(alert: str) -> str:
    """The alert's runbook as ``<Grafana path of its panel>#<anchor in docs/runbooks.md>``.

    The chart keeps the path (runbooks served by the stack's Grafana, the default) or replaces
    it with ``alerting.links.runbookUrl`` and keeps the anchor (GitHub-style: the heading in
    lowercase). An alert without a section in docs/runbooks.md fails here, at generation."""
    return f"/d/{runbooks.UID}/?viewPanel={panel_id(_runbooks(), alert)}#{alert.lower()}"


def panel_id(board: _Built, title: str) -> int:
    """Id of the panel titled ``title`` (ids come from dashboards._common.finalize)."""
    for panel in board.panels or []:
        if panel.title == title:
            return int(panel.id_val)
    raise KeyError(f"dashboard {board.uid} has no panel {title!r}")


def dashboard_path(board: _Built, title: str, variables: Mapping[str, str] = {}) -> str:
    """``/d/<uid>/?viewPanel=<id>&var-x=...``: Grafana opens that one panel, variables set.

    Variable values may hold Prometheus template actions (``{{ $labels.x | urlquery }}``)."""
    params = [f"viewPanel={panel_id(board, title)}"]
    params += [f"var-{k}={v}" for k, v in variables.items()]
    return f"/d/{board.uid}/?" + "&".join(params)


def kibana_time(offset_seconds: int) -> str:
    """A Prometheus template action printing ISO time ``offset_seconds`` before evaluation."""
    promql = f"time() - {offset_seconds}" if offset_seconds else "time()"
    return (
        f'{{{{ with query "{promql}" }}}}{{{{ (. | first | value | toTime).UTC.Format '
        '"2006-01-02T15:04:05.000Z" }}{{ end }}'
    )


def discover_path(kql_template: str, window_seconds: int) -> str:
    """Kibana Discover on rpcscope's data view, the last ``window_seconds`` before evaluation.

    ``kql_template`` is a Prometheus template *expression* evaluating to the KQL string; it is
    URL-encoded at alert time (spaces as %20: Kibana reads ``+`` literally in rison state)."""
    kql = '{{ reReplaceAll "\\\\+" "%%20" (%s | urlquery) }}' % kql_template
    g = f"(time:(from:'{kibana_time(window_seconds)}',to:'{kibana_time(0)}'))"
    a = (
        f"(dataSource:(dataViewId:'{quote(DATA_VIEW_ID)}',type:dataView),"
        f"query:(language:kuery,query:'{kql}'))"
    )
    return f"/app/discover#/?_g={g}&_a={a}"
