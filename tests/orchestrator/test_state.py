"""The campaign state machine: every (from, to) pair is either allowed or refused, as tabled here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from orchestrator import state
from orchestrator.state import InvalidTransition, check_transition, describe

# The specification, written out independently of orchestrator.state: row = from, X = allowed to.
#                 cre que run psg psd flt est abg abd fin orp
SPEC = """
created          .   X   X   .   X   .   X   X   X   .   .
queued           X   .   X   .   X   .   X   X   X   .   .
running          .   X   .   X   X   X   X   X   X   X   X
pausing          .   .   X   .   X   X   X   X   X   .   X
paused           .   X   X   .   .   .   X   X   X   .   .
faulted          .   X   X   .   X   .   X   X   X   .   .
estopped         .   X   X   .   X   .   X   X   X   .   .
aborting         .   .   .   .   .   .   X   .   X   .   X
aborted          .   .   .   .   .   .   .   .   .   .   .
finished         .   .   .   .   .   .   .   .   .   .   .
orphaned         .   X   X   .   X   X   X   X   X   .   .
"""
COLUMNS = [
    "created",
    "queued",
    "running",
    "pausing",
    "paused",
    "faulted",
    "estopped",
    "aborting",
    "aborted",
    "finished",
    "orphaned",
]


def _spec() -> dict[tuple[str, str], bool]:
    table: dict[tuple[str, str], bool] = {}
    for line in SPEC.strip().splitlines():
        name, *marks = line.split()
        assert len(marks) == len(COLUMNS), line
        for to, mark in zip(COLUMNS, marks, strict=True):
            table[(name, to)] = mark == "X"
    return table


EXPECTED = _spec()


def test_the_states_are_the_ones_the_console_uses() -> None:
    assert set(state.STATES) == set(COLUMNS)
    assert set(state.TRANSITIONS) == set(COLUMNS)
    assert state.ENDED == {"aborted", "finished"}


@pytest.mark.parametrize(("old", "new"), sorted(EXPECTED))
def test_every_transition_is_allowed_or_refused_as_specified(old: str, new: str) -> None:
    if EXPECTED[(old, new)]:
        check_transition(old, new)
        assert new in state.allowed(old)
    else:
        with pytest.raises(InvalidTransition) as info:
            check_transition(old, new)
        assert info.value.old == old and info.value.new == new
        assert old in str(info.value)


def test_ended_states_are_final_and_say_how_to_go_on() -> None:
    for ended in state.ENDED:
        assert state.allowed(ended) == frozenset()
        with pytest.raises(InvalidTransition, match="sdl run"):
            check_transition(ended, "running")


def test_every_state_that_is_not_final_can_be_aborted() -> None:
    for s in set(state.STATES) - state.ENDED:
        assert "aborted" in state.allowed(s) or "aborting" in state.allowed(s), s


def test_pressing_estop_twice_is_harmless_but_pausing_twice_is_refused() -> None:
    check_transition("estopped", "estopped")
    with pytest.raises(InvalidTransition, match="already paused"):
        check_transition("paused", "paused")


def test_refusals_tell_the_operator_what_to_do() -> None:
    with pytest.raises(InvalidTransition, match="sdl estop --clear"):
        check_transition("estopped", "finished")
    with pytest.raises(InvalidTransition, match="sdl resume"):
        check_transition("paused", "pausing")


def test_unknown_states_are_refused_with_the_list_of_states() -> None:
    with pytest.raises(InvalidTransition, match="running"):
        check_transition("running", "sleeping")
    with pytest.raises(InvalidTransition, match="sdl db upgrade"):
        check_transition("sleeping", "running")


def test_describe_reads_like_a_sentence() -> None:
    at = datetime(2026, 11, 29, 2, 14, 33, tzinfo=UTC)
    assert describe("paused", "bubble in line", "alice", at) == "paused by alice at 02:14: bubble in line"
    assert describe("running", "", "system", at) == "running at 02:14"
    assert describe("finished") == "finished"
    # times are shown in UTC whatever zone they arrive in
    local = at.astimezone(timezone(timedelta(hours=5)))
    assert describe("faulted", "pump stalled", "", local) == "faulted at 02:14: pump stalled"
