# SPDX-License-Identifier: Apache-2.0
"""Tags of groups and definitions, with AWS's limits, stored by resource ARN.

AWS tags every Greengrass V1 group and definition: `tags` on create, `tags` in each Get answer,
and `TagResource`, `UntagResource` and `ListTagsForResource` by ARN. The limits are AWS's for
tags everywhere: at most 50 per resource, keys of 1 to 128 characters and values of at most
256, and keys starting `aws:` are AWS's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from edge.cloud.errors import NotFoundError, TagsInvalidError

if TYPE_CHECKING:
    # Annotations only: `edge cloud`'s parser reads this module, and importing the database
    # code (SQLAlchemy, a few tenths of a second) would slow `--help` and a mistyped argument.
    from edge.cloud.db import Connection, Database

MAX_TAGS: Final = 50
MAX_KEY_LENGTH: Final = 128
MAX_VALUE_LENGTH: Final = 256
RESERVED_PREFIX: Final = "aws:"


def check_tags(tags: object, option: str = "tags") -> dict[str, str]:
    """Return `tags` if it is a valid tag map (no more than 50, keys and values in bounds).

    Raises:
        TagsInvalidError: Not a map of strings, or a limit is broken; the message names it.
    """
    if not isinstance(tags, dict):
        raise TagsInvalidError(option, 'must be a map of keys to values, like {"team": "ops"}')
    if len(tags) > MAX_TAGS:
        raise TagsInvalidError(option, f"at most {MAX_TAGS} tags per resource, not {len(tags)}")
    for key, value in tags.items():
        check_key(key, option)
        if not isinstance(value, str):
            raise TagsInvalidError(option, f"the value of {key!r} must be a string")
        if len(value) > MAX_VALUE_LENGTH:
            raise TagsInvalidError(
                option,
                f"the value of {key!r} must be at most {MAX_VALUE_LENGTH} characters, "
                f"not {len(value)}",
            )
    return dict(tags)


def check_key(key: object, option: str) -> str:
    """Return `key` if it is a valid tag key.

    Raises:
        TagsInvalidError: Empty, too long, or starting with the reserved `aws:`.
    """
    if not isinstance(key, str) or not key:
        raise TagsInvalidError(option, "a tag key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise TagsInvalidError(
            option, f"tag key {key[:20]!r}… must be at most {MAX_KEY_LENGTH} characters"
        )
    if key.lower().startswith(RESERVED_PREFIX):
        raise TagsInvalidError(
            option, f"tag key {key!r}: keys starting {RESERVED_PREFIX!r} are reserved for AWS"
        )
    return key


def tags_of(conn: Connection, arn: str) -> dict[str, str]:
    """The tags of the resource with this ARN (empty if it has none)."""
    rows = conn.execute(
        "SELECT key, value FROM tags WHERE resource_arn = :resource_arn ORDER BY key",
        {"resource_arn": arn},
    ).fetchall()
    return {row["key"]: row["value"] for row in rows}


def put_tags(conn: Connection, arn: str, tags: dict[str, str]) -> None:
    """Add or replace tags (inside a write transaction), keeping the resource under 50.

    Raises:
        TagsInvalidError: The resource would hold more than 50 tags.
    """
    merged = tags_of(conn, arn) | tags
    if len(merged) > MAX_TAGS:
        raise TagsInvalidError(
            "tags", f"a resource holds at most {MAX_TAGS} tags; this would make {len(merged)}"
        )
    conn.executemany(
        "INSERT INTO tags (resource_arn, key, value) VALUES (:arn, :key, :value)"
        " ON CONFLICT (resource_arn, key) DO UPDATE SET value = excluded.value",
        [{"arn": arn, "key": key, "value": value} for key, value in tags.items()],
    )


def drop_tags(conn: Connection, arn: str) -> None:
    """Forget every tag of a deleted resource (inside a write transaction)."""
    conn.execute("DELETE FROM tags WHERE resource_arn = :resource_arn", {"resource_arn": arn})


def _check_resource(conn: Connection, arn: str) -> None:
    found = conn.execute(
        "SELECT 1 FROM groups WHERE arn = :arn UNION ALL SELECT 1 FROM definitions WHERE arn ="
        " :arn2",
        {"arn": arn, "arn2": arn},
    ).fetchone()
    if found is None:
        raise NotFoundError(
            "resource",
            arn,
            "tags belong to a group or definition ARN (the `Arn` of get-group or get-X-definition)",
        )


def tag_resource(db: Database, arn: str, tags: object) -> None:
    """tag-resource: add or replace tags of a group or definition."""
    checked = check_tags(tags)
    with db.write() as conn:
        _check_resource(conn, arn)
        put_tags(conn, arn, checked)


def untag_resource(db: Database, arn: str, keys: list[str]) -> None:
    """untag-resource: remove these keys (a key the resource lacks is no error)."""
    with db.write() as conn:
        _check_resource(conn, arn)
        conn.executemany(
            "DELETE FROM tags WHERE resource_arn = :arn AND key = :key",
            [{"arn": arn, "key": key} for key in keys],
        )


def list_tags(db: Database, arn: str) -> dict[str, dict[str, str]]:
    """list-tags-for-resource: `{"tags": {...}}`."""
    with db.read() as conn:
        _check_resource(conn, arn)
        return {"tags": tags_of(conn, arn)}
