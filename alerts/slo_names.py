"""Names and numbers of the SLO rules, shared by the rule template and the SLO dashboard.

The tiers are REFERENCE §4 (Google SRE workbook, "Alerting on SLOs"): for a 30-day objective
with error budget B = 1 - objective, a tier fires when the error ratio over *both* its long and
its short window exceeds factor x B. ``for_`` is the default of ``alerting.slo.for.<key>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from rpcscope import schema


@dataclass(frozen=True)
class Tier:
    key: str
    severity: str
    long: str
    short: str
    factor: float
    #: Share of the 30-day budget one long window at this rate spends.
    budget_percent: int
    for_: str

    @property
    def long_seconds(self) -> int:
        units = {"m": 60, "h": 3600, "d": 86400}
        return int(self.long[:-1]) * units[self.long[-1]]

    @property
    def days_to_exhaustion(self) -> float:
        return 30 / self.factor


TIERS: Final = (
    Tier("pageFast", "critical", "1h", "5m", 14.4, 2, "2m"),
    Tier("pageSlow", "critical", "6h", "30m", 6, 5, "15m"),
    Tier("ticketFast", "warning", "1d", "2h", 3, 10, "1h"),
    Tier("ticketSlow", "warning", "3d", "6h", 1, 10, "3h"),
)
#: Every window a tier uses, shortest first: one recording rule each.
WINDOWS: Final = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")

#: Recording rules: ``<prefix><window>`` holds the SLO's bad-event ratio over that window.
ERRORS_PREFIX: Final = f"slo:{schema.SERVER_HANDLED.removesuffix('_total')}_errors:ratio_rate"
SLOW_PREFIX: Final = f"slo:{schema.SERVER_HANDLING_SECONDS}_slow:ratio_rate"
AVAILABILITY_OBJECTIVE: Final = "slo:availability_objective:ratio"
LATENCY_OBJECTIVE: Final = "slo:latency_objective:ratio"

AVAILABILITY_ALERT: Final = "GRPCAvailabilityBudgetBurn"
LATENCY_ALERT: Final = "GRPCLatencyBudgetBurn"
ALERT_NAMES: Final = (AVAILABILITY_ALERT, LATENCY_ALERT)
