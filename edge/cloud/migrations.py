# SPDX-License-Identifier: Apache-2.0
"""The control plane's schema: numbered migrations that apply to SQLite and PostgreSQL alike.

Each migration is plain DDL both engines read the same way (TEXT, INTEGER, BIGINT, foreign
keys, `ALTER TABLE ... ADD COLUMN`); the only type that is spelt differently is binary data,
written `{blob}` (BLOB on SQLite, BYTEA on PostgreSQL). `Database.open` applies the missing ones
in order, once, and records each in `schema_migrations`.

Migrations are expand/contract: a release only adds (tables, nullable columns, indexes) and
keeps writing what the previous release reads, so replicas can be upgraded one at a time
against one database. Dropping or renaming something the previous release still uses waits
for a later release, once no replica runs the old code. A migration never rewrites a row's
meaning in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: The control plane's tables, parents before children (the order a copy inserts them in).
TABLES: Final = (
    "definitions",
    "definition_versions",
    "groups",
    "group_versions",
    "deployments",
    "deployment_events",
    "outbox",
    "function_code",
    "applied_signatures",
    "tags",
    "client_tokens",
    "documents",
    "bulk_deployments",
    "bulk_records",
)
#: How each dialect spells the types the migrations name in braces.
_TYPES: Final = {"sqlite": {"blob": "BLOB"}, "postgresql": {"blob": "BYTEA"}}


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change: applied once, in order, recorded in `schema_migrations`."""

    version: int
    name: str
    sql: str

    def statements(self, dialect: str) -> list[str]:
        """Its DDL statements for one dialect ("sqlite" or "postgresql")."""
        script = self.sql.format_map(_TYPES[dialect])
        # Migrations hold no ';' inside literals.
        return [s.strip() for s in script.split(";") if s.strip()]


MIGRATIONS: Final = (
    Migration(
        1,
        "definitions, groups, deployments, function code",
        """
        CREATE TABLE definitions (
            id                TEXT PRIMARY KEY,
            kind              TEXT NOT NULL,
            name              TEXT,
            arn               TEXT NOT NULL UNIQUE,
            created_at        TEXT NOT NULL,
            updated_at        TEXT NOT NULL,
            latest_version_id TEXT
        );
        CREATE INDEX definitions_by_kind ON definitions (kind, created_at);
        CREATE TABLE definition_versions (
            id            TEXT PRIMARY KEY,
            definition_id TEXT NOT NULL REFERENCES definitions (id) ON DELETE CASCADE,
            seq           INTEGER NOT NULL,
            arn           TEXT NOT NULL UNIQUE,
            created_at    TEXT NOT NULL,
            body          TEXT NOT NULL,
            UNIQUE (definition_id, seq)
        );
        CREATE TABLE groups (
            id                TEXT PRIMARY KEY,
            name              TEXT,
            arn               TEXT NOT NULL UNIQUE,
            created_at        TEXT NOT NULL,
            updated_at        TEXT NOT NULL,
            latest_version_id TEXT
        );
        CREATE TABLE group_versions (
            id         TEXT PRIMARY KEY,
            group_id   TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
            seq        INTEGER NOT NULL,
            arn        TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            body       TEXT NOT NULL,
            UNIQUE (group_id, seq)
        );
        CREATE TABLE deployments (
            id               TEXT PRIMARY KEY,
            group_id         TEXT NOT NULL REFERENCES groups (id),
            group_version_id TEXT NOT NULL,
            arn              TEXT NOT NULL UNIQUE,
            deployment_type  TEXT NOT NULL,
            redeployment_of  TEXT,
            thing_name       TEXT NOT NULL,
            created_at       TEXT NOT NULL,
            status           TEXT NOT NULL,
            error_message    TEXT,
            updated_at       TEXT NOT NULL,
            envelope         {blob} NOT NULL
        );
        CREATE INDEX deployments_by_group ON deployments (group_id, created_at);
        CREATE TABLE deployment_events (
            deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
            seq           INTEGER NOT NULL,
            status        TEXT NOT NULL,
            error_message TEXT,
            updated_at    TEXT NOT NULL,
            recorded_at   TEXT NOT NULL,
            PRIMARY KEY (deployment_id, seq)
        );
        CREATE TABLE function_code (
            function_arn TEXT PRIMARY KEY,
            handler      TEXT NOT NULL,
            uri          TEXT NOT NULL,
            sha256       TEXT NOT NULL,
            size         BIGINT NOT NULL,
            published_at TEXT NOT NULL
        );
        """,
    ),
    Migration(
        2,
        "applied request signatures",
        # One row per signed API request that changed something, until its signature expires:
        # `edge cloud serve` refuses the same signature again (a replay). Keyed by signature so
        # that replicas sharing this database refuse each other's replays too.
        """
        CREATE TABLE applied_signatures (
            signature  TEXT PRIMARY KEY,
            expires_at BIGINT NOT NULL,
            applied_at TEXT NOT NULL
        );
        CREATE INDEX applied_signatures_by_expiry ON applied_signatures (expires_at);
        """,
    ),
    Migration(
        3,
        "tags and client tokens",
        # Tags are keyed by ARN (what TagResource names); a client token by operation and token,
        # with a digest of the input it came with and the first answer (NULL while the first
        # request is still running). Both live here so that replicas sharing the database agree.
        """
        CREATE TABLE tags (
            resource_arn TEXT NOT NULL,
            key          TEXT NOT NULL,
            value        TEXT NOT NULL,
            PRIMARY KEY (resource_arn, key)
        );
        CREATE TABLE client_tokens (
            operation    TEXT NOT NULL,
            token        TEXT NOT NULL,
            input_sha256 TEXT NOT NULL,
            answer       TEXT,
            created_at   TEXT NOT NULL,
            PRIMARY KEY (operation, token)
        );
        """,
    ),
    Migration(
        4,
        "deployment notes",
        # What the core ignores of a deployment (AWSCloudWatch loggers, devices), for edge's own
        # CLI to show: AWS's GetDeploymentStatus has no field for it.
        """
        ALTER TABLE deployments ADD COLUMN note TEXT;
        """,
    ),
    Migration(
        5,
        "stored documents",
        # What the API keeps and returns while edge doesn't act on it (role associations,
        # connectivity info, runtime configuration, group CAs, software update jobs): one JSON
        # document per kind and subject (a group id, a thing name, a CA or job id, "" for the
        # account). A group's documents go with the group.
        """
        CREATE TABLE documents (
            kind       TEXT NOT NULL,
            subject    TEXT NOT NULL,
            group_id   TEXT REFERENCES groups (id) ON DELETE CASCADE,
            document   TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (kind, subject)
        );
        CREATE INDEX documents_by_group ON documents (group_id, kind);
        """,
    ),
    Migration(
        6,
        "deployment error details",
        # A failed deployment's ErrorDetails as the core reported them (a JSON list), for
        # GetDeploymentStatus.
        """
        ALTER TABLE deployments ADD COLUMN error_details TEXT;
        """,
    ),
    Migration(
        7,
        "bulk deployments",
        # A bulk deployment with the lease of the replica running it (`lease_expires` in Unix
        # seconds by the database server's clock); its tags (JSON) carry the rollout settings.
        # One record per input line, keyed by line so that reading the file again adds
        # nothing twice; a DeploymentId is reserved at most once (UNIQUE).
        """
        CREATE TABLE bulk_deployments (
            id                 TEXT PRIMARY KEY,
            arn                TEXT NOT NULL UNIQUE,
            created_at         TEXT NOT NULL,
            input_uri          TEXT NOT NULL,
            execution_role_arn TEXT NOT NULL,
            input_etag         TEXT,
            state              TEXT NOT NULL,
            tags               TEXT NOT NULL,
            retry_attempts     INTEGER NOT NULL,
            lines_loaded       INTEGER NOT NULL,
            error_message      TEXT,
            error_details      TEXT NOT NULL,
            lease_owner        TEXT,
            lease_expires      DOUBLE PRECISION
        );
        CREATE INDEX bulk_deployments_by_state ON bulk_deployments (state);
        CREATE INDEX bulk_deployments_by_creation ON bulk_deployments (created_at);
        CREATE TABLE bulk_records (
            bulk_id          TEXT NOT NULL REFERENCES bulk_deployments (id) ON DELETE CASCADE,
            line             INTEGER NOT NULL,
            state            TEXT NOT NULL,
            group_id         TEXT,
            group_version_id TEXT,
            deployment_type  TEXT,
            deployment_id    TEXT UNIQUE,
            created_at       TEXT,
            error_message    TEXT,
            PRIMARY KEY (bulk_id, line)
        );
        CREATE INDEX bulk_records_by_state ON bulk_records (bulk_id, state, line);
        """,
    ),
    Migration(
        8,
        "deployment outbox",
        # A deployment waiting for the broker's acknowledgement, written in the same transaction
        # as its row (`edge.cloud.outbox`). A row leaves once the broker acknowledged it;
        # `claimed_until` (Unix seconds) is how long the replica that claimed it may publish it
        # before another one takes it over.
        """
        CREATE TABLE outbox (
            deployment_id TEXT PRIMARY KEY REFERENCES deployments (id) ON DELETE CASCADE,
            topic         TEXT NOT NULL,
            created_at    TEXT NOT NULL,
            claimed_until BIGINT NOT NULL,
            attempts      INTEGER NOT NULL
        );
        CREATE INDEX outbox_by_claim ON outbox (claimed_until, created_at);
        """,
    ),
    Migration(
        9,
        "deployments by creation time",
        # Every replica looks, every 15 s, for the deployments of the last few minutes that have
        # no final status (`edge.cloud.serve.reconcile`): a range of `created_at` that must not
        # be a scan of every deployment ever made.
        """
        CREATE INDEX deployments_by_creation ON deployments (created_at);
        """,
    ),
)
