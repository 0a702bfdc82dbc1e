# SPDX-License-Identifier: Apache-2.0
"""The bulk deployment lifecycle as one table: V1's six states and the only legal moves.

`Initializing` while the input file is read into records, `Running` while groups are started,
then `Completed` once every record was processed (started, or counted invalid). A stop request
(StopBulkDeployment) moves it to `Stopping` until its runner has stopped starting groups, then
`Stopped`; the abort rule goes to `Stopped` directly, with the reason in ErrorMessage. `Failed`
is for a bulk deployment that can't go on at all (its input file became unreadable). Nothing
already started is taken back: as in AWS, stopping doesn't roll deployments back.
"""

from __future__ import annotations

import enum


class BulkState(enum.StrEnum):
    """BulkDeploymentStatus, as botocore's greengrass model lists its values."""

    INITIALIZING = "Initializing"
    RUNNING = "Running"
    COMPLETED = "Completed"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    FAILED = "Failed"

    @property
    def is_final(self) -> bool:
        """Whether no further transition is possible."""
        return self in FINAL


FINAL = frozenset({BulkState.COMPLETED, BulkState.STOPPED, BulkState.FAILED})


class BulkEvent(enum.StrEnum):
    """What can happen to a bulk deployment."""

    LOADED = "loaded"  # the input file is read into records
    FINISHED = "finished"  # every record is processed
    STOP = "stop"  # StopBulkDeployment
    HALTED = "halted"  # the runner stopped starting groups after a stop request
    ABORT = "abort"  # the abort rule
    FAIL = "fail"  # the input file can't be read


_S, _E = BulkState, BulkEvent

TRANSITIONS: dict[tuple[BulkState, BulkEvent], BulkState] = {
    (_S.INITIALIZING, _E.LOADED): _S.RUNNING,
    (_S.INITIALIZING, _E.STOP): _S.STOPPING,
    (_S.INITIALIZING, _E.FAIL): _S.FAILED,
    (_S.RUNNING, _E.FINISHED): _S.COMPLETED,
    (_S.RUNNING, _E.STOP): _S.STOPPING,
    (_S.RUNNING, _E.ABORT): _S.STOPPED,
    (_S.RUNNING, _E.FAIL): _S.FAILED,
    (_S.STOPPING, _E.STOP): _S.STOPPING,
    (_S.STOPPING, _E.HALTED): _S.STOPPED,
}


class IllegalBulkTransitionError(RuntimeError):
    """A caller tried a move the table does not allow (a bug, never user input)."""

    def __init__(self, state: BulkState, event: BulkEvent) -> None:
        self.state = state
        self.event = event
        super().__init__(f"can't handle event {event.value} in state {state.value}")


def next_state(state: BulkState, event: BulkEvent) -> BulkState:
    """Return the state after `event`, or raise IllegalBulkTransitionError."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalBulkTransitionError(state, event) from None
