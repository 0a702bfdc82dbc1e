# SPDX-License-Identifier: Apache-2.0
"""A replica SIGKILLed mid-bulk: the kill, the other's takeover, and what the death broke."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from bench.fleetbench.controlplane import ControlPlane
from bench.fleetbench.procfs import cpu_seconds

if TYPE_CHECKING:
    from bench.fleetbench.world import Fleet


def psycopg_url(database: str) -> str:
    """The run's database URL as psycopg takes it."""
    return database.replace("postgresql+psycopg://", "postgresql://")


class ReplicaKill:
    """SIGKILL the replica holding a bulk deployment's lease; watch the other take it over.

    A thread of its own, so the kill lands on time whatever the main loop is waiting for. It
    reads the lease and the counts straight from the control plane's PostgreSQL database.
    """

    def __init__(self, fleet: Fleet, bulk_id: str, t0: float) -> None:
        self.fleet = fleet
        self.bulk_id = bulk_id
        self.t0 = t0
        self.killed = threading.Event()
        #: What was seen: times are seconds after StartBulkDeployment was sent.
        self.facts: dict[str, Any] = {}
        self.survivor: ControlPlane = fleet.replicas[-1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replica-kill", daemon=True)
        self._thread.start()

    def close(self, timeout: float) -> None:
        """Stop watching (after the takeover or at the deadline) and wait for the thread."""
        self._stop.set()
        self._thread.join(timeout)

    def _bulk(self, conn: Any) -> tuple[str | None, float | None, str, int, int]:
        """Lease owner, its seconds left, state, deployments created and outbox rows unsent."""
        row = conn.execute(
            "SELECT lease_owner, lease_expires - extract(epoch FROM clock_timestamp()), state,"
            " (SELECT count(*) FROM bulk_records WHERE bulk_id = %(id)s"
            "  AND deployment_id IS NOT NULL),"
            " (SELECT count(*) FROM outbox)"
            " FROM bulk_deployments WHERE id = %(id)s",
            {"id": self.bulk_id},
        ).fetchone()
        left = None if row[1] is None else float(row[1])
        return row[0], left, str(row[2]), int(row[3]), int(row[4])

    def _run(self) -> None:
        import psycopg  # noqa: PLC0415

        fleet = self.fleet
        with psycopg.connect(psycopg_url(fleet.database), autocommit=True) as conn:
            self._stop.wait(max(0.0, self.t0 + fleet.args.kill_replica_after - time.monotonic()))
            owner, left, state, created, unsent = self._bulk(conn)
            # The lease owner is host:pid:random; the replica with that pid runs the bulk.
            pid = int(owner.split(":")[1]) if owner else -1
            victim = next(
                (r for r in fleet.replicas if r.proc is not None and r.proc.pid == pid),
                fleet.replicas[0],
            )
            assert victim.proc is not None  # noqa: S101 - every replica runs by now
            self.survivor = next(r for r in fleet.replicas if r is not victim)
            victim_cpu = cpu_seconds(victim.proc.pid)
            victim.proc.kill()
            killed_at = time.monotonic()
            victim.proc.wait(10)
            with fleet.counter.lock:
                delivered = sum(len(ids) for ids in fleet.counter.delivered.values())
                finals = len(fleet.counter.finals)
            self.facts.update(
                killed_at=killed_at - self.t0,
                victim=fleet.replicas.index(victim),
                held_lease=owner is not None and pid == victim.proc.pid,
                lease_left=left,
                state_at_kill=state,
                created_at_kill=created,
                unsent_at_kill=unsent,
                delivered_at_kill=delivered,
                finals_at_kill=finals,
                victim_cpu=victim_cpu,
            )
            self.killed.set()
            while not self._stop.wait(0.05):
                now_owner, _, state, created, _ = self._bulk(conn)
                if now_owner is not None and now_owner != owner:
                    self.facts.update(
                        resumed_at=time.monotonic() - self.t0,
                        created_at_resume=created,
                        state_at_resume=state,
                    )
                    return
                if state in {"Completed", "Stopped", "Failed"}:
                    self.facts["ended_without_takeover"] = state
                    return

    def outcome(self, cpu_before: list[float]) -> dict[str, Any]:
        """Stop watching; the facts, the census and each replica's CPU since `cpu_before`."""
        self.close(10)
        fleet, facts = self.fleet, dict(self.facts)
        survivor = fleet.replicas.index(self.survivor)
        pid = self.survivor.proc.pid if self.survivor.proc else 0
        facts["survivor_cpu"] = cpu_seconds(pid) - cpu_before[survivor]
        facts["victim_cpu"] = facts.get("victim_cpu", 0.0) - cpu_before[facts.get("victim", 0)]
        facts["census"] = self.census()
        import psycopg  # noqa: PLC0415

        with psycopg.connect(psycopg_url(fleet.database), autocommit=True) as conn:
            facts["unfinished_things"] = [
                str(row[0])
                for row in conn.execute(
                    "SELECT thing_name FROM deployments WHERE status NOT IN ('Success', 'Failure')"
                )
            ]
        return facts

    def census(self) -> dict[str, int]:
        """What the kill may have broken, from the database: each count must be 0."""
        import psycopg  # noqa: PLC0415

        queries = {
            "groups with more than one deployment": "SELECT count(*) FROM (SELECT group_id"
            " FROM deployments GROUP BY group_id HAVING count(*) > 1) AS twice",
            "groups of the input without a deployment": "SELECT count(*) FROM bulk_records r"
            " WHERE r.bulk_id = %(id)s AND NOT EXISTS"
            " (SELECT 1 FROM deployments d WHERE d.group_id = r.group_id)",
            "deployments without a final status": "SELECT count(*) FROM deployments"
            " WHERE status NOT IN ('Success', 'Failure')",
            "outbox rows never sent": "SELECT count(*) FROM outbox",
        }
        with psycopg.connect(psycopg_url(self.fleet.database), autocommit=True) as conn:
            return {
                name: int(conn.execute(sql, {"id": self.bulk_id}).fetchone()[0])  # type: ignore[index]
                for name, sql in queries.items()
            }
