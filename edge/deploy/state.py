# SPDX-License-Identifier: Apache-2.0
"""The deployment lifecycle as one table: states, events, and the only legal moves.

A deployment is `Received` when it arrives, `InProgress` once validated and started, and ends
`Success` or `Failure`. A document that fails validation goes straight to `Failure`. Anything
else is a bug in the caller, and says so.
"""

from __future__ import annotations

import enum


class DeploymentState(enum.StrEnum):
    """Where a deployment is; the last three are the status values published over MQTT."""

    RECEIVED = "Received"
    IN_PROGRESS = "InProgress"
    SUCCESS = "Success"
    FAILURE = "Failure"

    @property
    def is_final(self) -> bool:
        """Whether no further transition is possible."""
        return self in {DeploymentState.SUCCESS, DeploymentState.FAILURE}


class DeploymentEvent(enum.StrEnum):
    """What can happen to a deployment."""

    START = "start"
    SUCCEED = "succeed"
    FAIL = "fail"


TRANSITIONS: dict[tuple[DeploymentState, DeploymentEvent], DeploymentState] = {
    (DeploymentState.RECEIVED, DeploymentEvent.START): DeploymentState.IN_PROGRESS,
    (DeploymentState.RECEIVED, DeploymentEvent.FAIL): DeploymentState.FAILURE,
    (DeploymentState.IN_PROGRESS, DeploymentEvent.SUCCEED): DeploymentState.SUCCESS,
    (DeploymentState.IN_PROGRESS, DeploymentEvent.FAIL): DeploymentState.FAILURE,
}


class IllegalTransitionError(RuntimeError):
    """A caller tried a move the table does not allow (a bug, never user input)."""

    def __init__(self, state: DeploymentState, event: DeploymentEvent) -> None:
        self.state = state
        self.event = event
        super().__init__(f"can't handle event {event.value} in state {state.value}")


def next_state(state: DeploymentState, event: DeploymentEvent) -> DeploymentState:
    """Return the state after `event`, or raise IllegalTransitionError."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransitionError(state, event) from None
