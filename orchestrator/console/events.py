"""Journal events as the console shows and sends them: one line of text a person can act on."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# categories of events: the page colours them, the notifier sends some of them
FAULT, PAUSED, ESTOP, FINISHED, ABORTED, CONTROL, PROGRESS, WARNING, INFO = (
    "fault",
    "paused",
    "estop",
    "finished",
    "aborted",  # ended early by a person: a webhook filtering on "finished" must not read it as done
    "control",
    "progress",
    "warning",  # worth reading, nothing to do: a failed condition (the optimiser steers away; not notified)
    "info",
)
NOTIFY_CATEGORIES = frozenset({FAULT, PAUSED, ESTOP, FINISHED, ABORTED})
# the journal's per-droplet and per-condition detail: nineteen lines in twenty of a running campaign's
# log, which push what people did and what went wrong out of sight; the page hides them unless asked
DETAIL_KINDS = frozenset({"replicate_acquired", "rates_set", "condition_started", "reagent_used"})


@dataclass(frozen=True)
class ConsoleEvent:
    id: int
    campaign_id: str
    campaign_name: str
    at: datetime
    kind: str  # the store's own event kind
    category: str
    text: str
    who: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def about(self) -> str:
        """What the event is about, for a subject line: the campaign, or the lab for a rig-wide event
        (an every-rig e-stop, a scheduled start that never ran)."""
        return f"{self.campaign_name} #{self.campaign_id}" if self.campaign_id else "lab"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "campaign_id": self.campaign_id,
            "campaign": self.campaign_name,
            "at": self.at.isoformat(),
            "kind": self.kind,
            "category": self.category,
            "text": self.text,
            "who": self.who,
            "detail": self.kind in DETAIL_KINDS,
        }
