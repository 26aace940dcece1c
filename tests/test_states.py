"""The guest state table: every state is reachable and can be stopped; a move
outside the table raises; the API schema publishes exactly these names."""

from __future__ import annotations

import itertools

import pytest
from bridgelab.api.schemas import GuestView
from bridgelab.lab.states import ON_THE_WAY, SETTLED, TRANSITIONS, GuestState, InvalidTransition, check_transition


def reachable(start: GuestState) -> set[GuestState]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_is_reachable_from_pending_and_every_state_can_end_stopped():
    assert reachable(GuestState.pending) == set(GuestState)
    for s in GuestState:
        assert GuestState.stopped in reachable(s), s


def test_the_bring_up_path_and_its_exits_are_in_the_table():
    path = [GuestState.pending, GuestState.booting, GuestState.login, GuestState.configuring,
            GuestState.verifying, GuestState.ready]
    for old, new in itertools.pairwise(path):
        check_transition("rv1", old, new)
    for s in set(GuestState) - {GuestState.failed, GuestState.stopping, GuestState.stopped}:
        check_transition("rv1", s, GuestState.failed)
        check_transition("rv1", s, GuestState.stopping)


@pytest.mark.parametrize(("old", "new"), [
    (GuestState.booting, GuestState.configuring),  # skipping login
    (GuestState.failed, GuestState.configuring),  # a step that raced a qemu crash
    (GuestState.stopped, GuestState.ready),
    (GuestState.ready, GuestState.ready),
    (GuestState.stopping, GuestState.booting),
])
def test_a_move_outside_the_table_raises_and_names_the_guest(old, new):
    with pytest.raises(InvalidTransition, match=f"guest rv1: {old} -> {new}"):
        check_transition("rv1", old, new)


def test_settled_and_on_the_way_do_not_overlap():
    assert not SETTLED & ON_THE_WAY


def test_the_api_schema_publishes_the_table_names():
    schema = GuestView.model_json_schema()
    ref = schema["properties"]["state"]["$ref"].rsplit("/", 1)[-1]
    assert schema["$defs"][ref]["enum"] == [s.value for s in GuestState]
