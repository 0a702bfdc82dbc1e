"""The deployment lifecycle table: legal moves go where they should, all others raise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.deploy.state import (
    TRANSITIONS,
    DeploymentEvent,
    DeploymentState,
    IllegalTransitionError,
    next_state,
)


@given(st.sampled_from(DeploymentState), st.sampled_from(DeploymentEvent))
def test_every_state_event_pair_is_either_in_the_table_or_illegal(
    state: DeploymentState, event: DeploymentEvent
) -> None:
    """next_state follows the table exactly and names state and event when it refuses."""
    if (state, event) in TRANSITIONS:
        assert next_state(state, event) is TRANSITIONS[(state, event)]
    else:
        with pytest.raises(IllegalTransitionError) as info:
            next_state(state, event)
        assert f"can't handle event {event.value} in state {state.value}" == str(info.value)


def test_final_states_have_no_way_out() -> None:
    """Success and Failure are final: no event leaves them."""
    for state in DeploymentState:
        outgoing = [e for (s, e) in TRANSITIONS if s is state]
        assert state.is_final == (not outgoing)


def test_the_happy_and_failed_paths() -> None:
    """Received -> InProgress -> Success, and a rejected document goes straight to Failure."""
    state = next_state(DeploymentState.RECEIVED, DeploymentEvent.START)
    assert state is DeploymentState.IN_PROGRESS
    assert next_state(state, DeploymentEvent.SUCCEED) is DeploymentState.SUCCESS
    assert next_state(state, DeploymentEvent.FAIL) is DeploymentState.FAILURE
    assert next_state(DeploymentState.RECEIVED, DeploymentEvent.FAIL) is DeploymentState.FAILURE
