"""Journal events as the console shows and sends them: one line of text a person can act on."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# categories of events: the page colours them, the notifier sends some of them
FAULT, PAUSED, ESTOP, FINISHED, CONTROL, PROGRESS, INFO = (
    "fault",
    "paused",
    "estop",
    "finished",
    "control",
    "progress",
    "info",
)
NOTIFY_CATEGORIES = frozenset({FAULT, PAUSED, ESTOP, FINISHED})


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
        }
