"""Grafana dashboard "rpcscope / runbooks": docs/runbooks.md, one text panel per alert.

Every alert's ``runbook_url`` needs somewhere to point on a fresh install, before anyone has
published the docs: the chart's own Grafana. Each ``## <AlertName>`` section of
docs/runbooks.md becomes a markdown panel titled with the alert's name, and the alert links to
that panel (``viewPanel``). With ``alerting.links.runbookUrl`` set, alerts link to the published
file instead. The introduction (silencing, severities) is the first panel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from grafana_foundation_sdk.builders import text
from grafana_foundation_sdk.models import dashboard as dashboard_model
from grafana_foundation_sdk.models import text as text_model

from dashboards import _common as c

SOURCE = "dashboards/runbooks.py"
UID: Final = "rpcscope-runbooks"
RUNBOOKS: Final = Path(__file__).resolve().parent.parent / "docs" / "runbooks.md"
INTRO: Final = "Runbooks"


def sections(markdown: str) -> list[tuple[str, str]]:
    """(title, body) for the introduction and every ``## `` section, in order."""
    out: list[tuple[str, str]] = [(INTRO, "")]
    for line in markdown.splitlines():
        if line.startswith("## "):
            out.append((line[3:].strip(), ""))
        elif not line.startswith("# "):
            title, body = out[-1]
            out[-1] = (title, body + line + "\n")
    return [(title, body.strip() + "\n") for title, body in out]


def build_dashboard() -> dashboard_model.Dashboard:
    builder = c.base_dashboard("rpcscope / runbooks", UID, SOURCE)
    builder = builder.refresh("").time("now-1h", "now")
    for title, body in sections(RUNBOOKS.read_text()):
        builder = builder.with_panel(
            text.Panel().title(title).mode(text_model.TextMode.MARKDOWN).content(body)
            .height(12).span(24)
        )
    return c.finalize(builder)
