"""The result of a chaos run: one report per scenario, as a table and as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ScenarioReport:
    """The figures of one scenario; durations in seconds."""

    scenario: str
    form: str
    fault: str
    fault_s: float
    clients: int
    sent: int
    acknowledged: int
    unacknowledged: int
    lost: int
    duplicates: int
    order_violations: int
    regressions: int
    conflicts: int
    sender_inversions: int
    sessions_lost: int
    moved_region: int
    not_resumed: int
    resume_p50_s: float | None
    resume_p99_s: float | None
    back_home_p50_s: float | None
    back_home_p99_s: float | None
    catch_up_s: float | None
    presence_convergence_s: float | None
    delivery_p50_s: float | None
    delivery_p99_s: float | None
    lost_ids: list[str] = field(default_factory=list)
    # Accepted messages not shown within the settle timeout without a sync.
    late: int = 0
    not_back_home: int = 0

    @property
    def failures(self) -> list[str]:
        """Return what went wrong, in words; empty when the scenario passed."""
        found = []
        if self.lost:
            found.append(f"{self.lost} lost: {', '.join(self.lost_ids[:5])}")
        if self.duplicates:
            found.append(f"{self.duplicates} duplicates")
        if self.order_violations:
            found.append(
                f"{self.order_violations} order violations "
                f"({self.regressions} regressions, {self.conflicts} conflicts, "
                f"{self.sender_inversions} sender inversions)"
            )
        if self.acknowledged == 0:
            found.append("no message was acknowledged")
        if self.not_resumed:
            found.append(f"{self.not_resumed} sessions did not resume")
        if self.not_back_home:
            found.append(f"{self.not_back_home} clients did not return home")
        if self.catch_up_s is None:
            found.append("recipients did not catch up without a sync")
        if self.late:
            found.append(f"{self.late} messages not shown without a sync")
        if self.presence_convergence_s is None:
            found.append("presence did not converge")
        return found

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "failures": self.failures}


COLUMNS = (
    ("scenario", "scenario"),
    ("fault_s", "fault s"),
    ("acknowledged", "acked"),
    ("lost", "lost"),
    ("duplicates", "dup"),
    ("order_violations", "order"),
    ("late", "late"),
    ("moved_region", "moved"),
    ("resume_p50_s", "resume p50"),
    ("resume_p99_s", "resume p99"),
    ("back_home_p99_s", "home p99"),
    ("catch_up_s", "catch-up"),
    ("presence_convergence_s", "presence"),
    ("delivery_p99_s", "delivery p99"),
)


def format_table(reports: Sequence[ScenarioReport]) -> str:
    """Render the reports as a Markdown table, with durations in seconds."""
    header = [title for _, title in COLUMNS] + ["result"]
    rows = [
        [_cell(getattr(report, name)) for name, _ in COLUMNS]
        + ["pass" if report.passed else "FAIL"]
        for report in reports
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def write_json(reports: Sequence[ScenarioReport], path: Path, **about: Any) -> None:
    """Write the reports, and any facts about the run in `about`, as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**about, "scenarios": [report.as_dict() for report in reports]}
    path.write_text(json.dumps(body, indent=2) + "\n")
