# SPDX-License-Identifier: Apache-2.0
"""Read again the retained status of deployments that should have finished by now.

With a shared subscription each report reaches one replica, which acknowledges it to the broker
on arrival and records it a moment later, with the reports that arrived together. A replica
killed in between takes those reports with it: the broker won't send them to another member of
the group, and the cores don't report again. Their last report stays retained on each core's
status topic, though, so every `[cloud] status_reread_seconds` each replica finds the
deployments created between `RECONCILE_WINDOW_SECONDS` and `[cloud] status_reread_after_seconds`
ago that are not final yet, and has the broker send those things' retained reports again
(`Publisher.reread_retained`); they are recorded like any other, once.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime, timedelta
from typing import Final

from structlog.typing import FilteringBoundLogger

from edge.cloud.config import STATUS_REREAD_AFTER_SECONDS, CloudConfig
from edge.cloud.db import Database
from edge.cloud.errors import CloudDatabaseError
from edge.cloud.ids import precise_timestamp
from edge.cloud.publisher import Publisher
from edge.cloud.serve.dbthread import DatabaseThread
from edge.cloud.status import FINAL

#: One older than this waits for its core to come back (a live report), not for a re-read.
RECONCILE_WINDOW_SECONDS: Final = 600.0
#: Things whose reports are read again per pass at most.
RECONCILE_BATCH: Final = 500


#: The window's unfinished deployments' things; a range of the `deployments_by_creation` index.
UNFINISHED_THINGS_SQL: Final = (
    "SELECT DISTINCT thing_name FROM deployments WHERE created_at > :oldest"
    " AND created_at < :newest AND status NOT IN :final LIMIT :limit"
)


def unfinished_things_binds(
    now: datetime | None = None, *, after: float = STATUS_REREAD_AFTER_SECONDS
) -> dict[str, object]:
    """The values `UNFINISHED_THINGS_SQL` is run with at `now`, for deployments `after` old."""
    moment = now or datetime.now(UTC)
    return {
        "oldest": precise_timestamp(moment - timedelta(seconds=RECONCILE_WINDOW_SECONDS)),
        "newest": precise_timestamp(moment - timedelta(seconds=after)),
        "final": sorted(FINAL),
        "limit": RECONCILE_BATCH,
    }


def unfinished_things(
    db: Database, *, now: datetime | None = None, after: float = STATUS_REREAD_AFTER_SECONDS
) -> list[str]:
    """Things with a deployment in the window, `after` old or more, with no final status yet."""
    with db.read() as conn:
        binds = unfinished_things_binds(now, after=after)
        rows = conn.execute(UNFINISHED_THINGS_SQL, binds).fetchall()
    return [row["thing_name"] for row in rows]


async def reconcile_statuses(
    config: CloudConfig, publisher: Publisher, db: DatabaseThread, *, log: FilteringBoundLogger
) -> None:
    """Every `status_reread_seconds`, have the unfinished deployments' reports sent again."""
    settings, after = config.mqtt, config.cloud.status_reread_after_seconds
    while True:
        await asyncio.sleep(config.cloud.status_reread_seconds)
        try:
            things = await db.call(functools.partial(unfinished_things, after=after))
        except CloudDatabaseError as exc:
            log.warning("cloud.status.reconcile_failed", error=str(exc))
            continue
        if things and await publisher.reread_retained(
            [settings.status_topic(thing) for thing in things]
        ):
            log.info("cloud.status.reread", things=len(things))
