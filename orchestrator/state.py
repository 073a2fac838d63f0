"""The campaign state machine: which status may follow which, and the status in words.

A campaign is always in exactly one of these states (the console shows them as they are)::

    created ──► queued ──► running ──► finished
       │          │        │  ▲  ▲
       │          │        ▼  │  │
       │          │     pausing ─► paused ──► (resume) running
       │          │        │
       │          │        ├──► faulted   (device fault after bounded retries; pumps safe)
       │          │        ├──► estopped  (e-stop: pumps stopped at once, latched until cleared)
       │          │        ├──► orphaned  (its process vanished: no fresh heartbeat)
       │          │        └──► aborting ──► aborted
       └──────────┴────────────────────────► aborted (never started)

``aborted`` and ``finished`` are final (:data:`ENDED`). Every other state can be aborted, and every
state a process can be interrupted in can go back to ``running`` once someone resumes it (an e-stop
only after its latch is cleared: :meth:`orchestrator.store.Store.set_status` checks the latch).
"""

from __future__ import annotations

from datetime import UTC, datetime

CREATED = "created"
QUEUED = "queued"
RUNNING = "running"
PAUSING = "pausing"
PAUSED = "paused"
FAULTED = "faulted"
ESTOPPED = "estopped"
ABORTING = "aborting"
ABORTED = "aborted"
FINISHED = "finished"
ORPHANED = "orphaned"

STATES: tuple[str, ...] = (
    CREATED,
    QUEUED,
    RUNNING,
    PAUSING,
    PAUSED,
    FAULTED,
    ESTOPPED,
    ABORTING,
    ABORTED,
    FINISHED,
    ORPHANED,
)
ENDED = frozenset({ABORTED, FINISHED})
# states in which a process is (or should be) driving the rig
ACTIVE = frozenset({RUNNING, PAUSING, ABORTING})

# every allowed (from -> to); anything else raises InvalidTransition
TRANSITIONS: dict[str, frozenset[str]] = {
    CREATED: frozenset({QUEUED, RUNNING, PAUSED, ESTOPPED, ABORTING, ABORTED}),
    QUEUED: frozenset({CREATED, RUNNING, PAUSED, ESTOPPED, ABORTING, ABORTED}),
    RUNNING: frozenset({QUEUED, PAUSING, PAUSED, FAULTED, ESTOPPED, ABORTING, ABORTED, FINISHED, ORPHANED}),
    # a resume that arrives before the pause took effect cancels it (pausing -> running)
    PAUSING: frozenset({RUNNING, PAUSED, FAULTED, ESTOPPED, ABORTING, ABORTED, ORPHANED}),
    PAUSED: frozenset({QUEUED, RUNNING, ESTOPPED, ABORTING, ABORTED}),
    FAULTED: frozenset({QUEUED, RUNNING, PAUSED, ESTOPPED, ABORTING, ABORTED}),
    # pressing the e-stop twice is harmless, hence estopped -> estopped
    ESTOPPED: frozenset({ESTOPPED, QUEUED, RUNNING, PAUSED, ABORTING, ABORTED}),
    ABORTING: frozenset({ABORTED, ESTOPPED, ORPHANED}),
    ORPHANED: frozenset({QUEUED, RUNNING, PAUSED, FAULTED, ESTOPPED, ABORTING, ABORTED}),
    ABORTED: frozenset(),
    FINISHED: frozenset(),
}

# how a finished campaign's reason starts when its optimiser ended it (a model stop rule)
OPTIMISER_STOP = "optimiser stop:"

# what an operator can ask for, from the CLI or the console
CONTROL_ACTIONS = frozenset({"pause", "resume", "abort", "estop", "estop-clear", "recalibrate"})

# what to tell an operator who asked for a change the current state refuses
_ADVICE: dict[str, str] = {
    ABORTED: "it was aborted and is final; start a new campaign with `sdl run`",
    FINISHED: "it has finished and is final; start a new campaign with `sdl run`",
    ESTOPPED: "clear the e-stop with `sdl estop --clear --reason TEXT`, then `sdl resume CAMPAIGN`",
    PAUSED: "resume it with `sdl resume CAMPAIGN` or end it with `sdl abort CAMPAIGN`",
    PAUSING: "wait for the pause to take effect (next replicate boundary), or `sdl abort CAMPAIGN`",
    ABORTING: "wait: it is stopping, and will end as aborted",
    FAULTED: "read the fault with `sdl status CAMPAIGN`, fix it, then `sdl resume CAMPAIGN`",
    ORPHANED: "its process is gone: `sdl resume CAMPAIGN` continues it, `sdl abort CAMPAIGN` ends it",
    RUNNING: "pause it with `sdl pause CAMPAIGN` or stop it with `sdl abort CAMPAIGN`",
    CREATED: "start it with `sdl resume CAMPAIGN`, or `sdl abort CAMPAIGN`",
    QUEUED: "it waits for an agent on its rig; `sdl abort CAMPAIGN` withdraws it",
}


class InvalidTransition(ValueError):
    """A status change the state machine refuses; the message names the state and what to do."""

    def __init__(self, old: str, new: str, detail: str = "", *, campaign_id: str | None = None) -> None:
        self.old, self.new = old, new
        if detail:
            message = detail
        elif new not in STATES:
            message = f"unknown campaign state {new!r}: the states are {', '.join(STATES)}"
        elif old == new:
            message = f"the campaign is already {old}; {_ADVICE.get(old, 'nothing to do')}"
        else:
            message = f"a campaign that is {old} cannot become {new}; {_ADVICE.get(old, '')}".rstrip("; ")
        if campaign_id:  # the advice's commands, ready to paste
            message = message.replace("CAMPAIGN", campaign_id)
        super().__init__(message)


def check_transition(old: str, new: str) -> None:
    """Raise :class:`InvalidTransition` unless ``old -> new`` is allowed."""
    if old not in STATES:
        raise InvalidTransition(old, new, f"the store holds an unknown state {old!r}; run `sdl db upgrade`")
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(old, new)


def allowed(old: str) -> frozenset[str]:
    """The states ``old`` may change to."""
    return TRANSITIONS.get(old, frozenset())


def describe(status: str, reason: str = "", who: str = "", at: datetime | None = None) -> str:
    """The status in words for an operator: ``"paused by alice at 02:14: bubble in line"``.

    ``who`` is left out when it is the engine itself ("system"); ``at`` is shown as UTC HH:MM.
    """
    text = status
    if who and who != "system":
        text += f" by {who}"
    if at is not None:
        text += f" at {(at.astimezone(UTC) if at.tzinfo else at).strftime('%H:%M')}"
    if reason:
        text += f": {reason}"
    return text
