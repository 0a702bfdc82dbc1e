# SPDX-License-Identifier: Apache-2.0
"""edge.workers.router: MQTT topic filters, function ARNs, and delivery by Subscriptions."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from edge.workers.manager import UnknownFunctionError
from edge.workers.router import CLOUD, Route, Router, parse_routes, same_function, topic_matches

PREFIX = "arn:aws:lambda:us-west-2:123456789012:function:"
SENSOR = PREFIX + "sensor:1"
SENSOR_V2 = PREFIX + "sensor:2"
SENSOR_ALIAS = PREFIX + "sensor:prod"
SENSOR_UNQUALIFIED = PREFIX + "sensor"
ALARM = PREFIX + "alarm:3"
LOGGER = PREFIX + "logger:1"


# --- topic filters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "topic", "expected"),
    [
        # Exact names; levels are case-sensitive and compared whole.
        ("sport/tennis", "sport/tennis", True),
        ("sport/tennis", "sport/Tennis", False),
        ("sport/tennis", "sport/tennis/player1", False),
        ("sport/tennis/player1", "sport/tennis", False),
        ("sport", "sports", False),
        # '#' matches the rest, including the parent level itself (MQTT 3.1.1, 4.7.1.2).
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
        ("sport/#", "sport", True),
        ("sport/#", "sports", False),
        ("sport/#", "sport/", True),
        ("a/#", "a", True),
        ("a/#", "ab/c", False),
        ("a/#", "b/a", False),
        ("#", "sport", True),
        ("#", "sport/tennis/player1", True),
        ("#", "/", True),
        ("+/#", "a", True),
        ("+/#", "a/b/c", True),
        # '+' matches exactly one level, which may be empty (MQTT 3.1.1, 4.7.1.3).
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("sport/+/player1", "sport/tennis/player1", True),
        ("sport/+/player1", "sport//player1", True),
        ("sport/+/player1", "sport/tennis/x/player1", False),
        ("+", "sport", True),
        ("+", "sport/tennis", False),
        ("+", "/finance", False),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+/+", "a/b", True),
        ("+/+", "a/b/c", False),
        ("+/+", "a", False),
        ("+/tennis/#", "sport/tennis", True),
        ("+/tennis/#", "sport/golf", False),
        # Empty levels are levels like any other.
        ("a//b", "a//b", True),
        ("a//b", "a/b", False),
        ("a/", "a", False),
        ("/a", "a", False),
    ],
)
def test_topic_matches_follows_mqtt_rules(subject, topic, expected):
    """Topic filters match as MQTT 3.1.1 section 4.7 specifies."""
    assert topic_matches(subject, topic) is expected


# Topic names never contain the wildcard characters; levels may be empty. `$` topics are
# system topics that leading wildcards deliberately skip (tested on their own below).
levels = st.text(
    st.characters(blacklist_characters="/+#$", blacklist_categories=["Cs"]), max_size=4
)
topics = st.lists(levels, min_size=1, max_size=6)


@given(topic_levels=topics)
def test_topic_matches_itself_and_hash(topic_levels):
    """Any topic matches itself as a filter, and `#`."""
    topic = "/".join(topic_levels)
    assert topic_matches(topic, topic)
    assert topic_matches("#", topic)


@given(topic_levels=topics, data=st.data())
def test_one_level_replaced_by_plus_still_matches(topic_levels, data):
    """Replacing any one level of a topic with `+` gives a filter that matches it."""
    index = data.draw(st.integers(0, len(topic_levels) - 1))
    subject = "/".join([*topic_levels[:index], "+", *topic_levels[index + 1 :]])
    assert topic_matches(subject, "/".join(topic_levels))


@given(topic_levels=topics, data=st.data())
def test_any_prefix_then_hash_matches(topic_levels, data):
    """`prefix/#` matches every topic below prefix, and prefix itself."""
    cut = data.draw(st.integers(1, len(topic_levels)))
    subject = "/".join([*topic_levels[:cut], "#"])
    assert topic_matches(subject, "/".join(topic_levels))


@given(topic_levels=topics, extra=levels)
def test_plus_never_spans_levels(topic_levels, extra):
    """A filter with one `+` per level never matches a topic with more or fewer levels."""
    subject = "/".join("+" for _ in topic_levels)
    assert not topic_matches(subject, "/".join([*topic_levels, extra]))
    if len(topic_levels) > 1:
        assert not topic_matches(subject, "/".join(topic_levels[:-1]))


# --- function ARNs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (SENSOR, SENSOR, True),
        (SENSOR_UNQUALIFIED, SENSOR, True),
        (SENSOR, SENSOR_UNQUALIFIED, True),
        (SENSOR_UNQUALIFIED, SENSOR_ALIAS, True),
        (SENSOR_UNQUALIFIED, SENSOR_UNQUALIFIED, True),
        (SENSOR, SENSOR_V2, False),
        (SENSOR, SENSOR_ALIAS, False),
        (SENSOR, ALARM, False),
        (SENSOR_UNQUALIFIED, PREFIX + "alarm", False),
        (SENSOR_UNQUALIFIED, PREFIX + "sensor2:1", False),
        (SENSOR_UNQUALIFIED, SENSOR.replace("123456789012", "210987654321"), False),
        (SENSOR_UNQUALIFIED, SENSOR.replace("us-west-2", "eu-west-1"), False),
        (CLOUD, SENSOR, False),
    ],
)
def test_same_function(a, b, expected):
    """Qualified ARNs match only exactly; an unqualified ARN matches each of its versions."""
    assert same_function(a, b) is expected
    assert same_function(b, a) is expected


# --- delivery ---------------------------------------------------------------------------------


@dataclass
class RecordingManager:
    """Stands in for our WorkerManager: records invocations; unknown targets raise as it does."""

    known: frozenset[str] = frozenset({SENSOR, ALARM, LOGGER})
    invocations: list[dict[str, Any]] = field(default_factory=list)

    async def invoke(
        self, target: str, payload: bytes, *, client_context: str, invocation_type: str
    ) -> None:
        if target not in self.known:
            raise UnknownFunctionError(target)
        context = json.loads(base64.b64decode(client_context))
        self.invocations.append(
            {"target": target, "payload": payload, "context": context, "type": invocation_type}
        )


@dataclass
class Delivery:
    """A router wired to recorders for local invocations and broker publishes."""

    router: Router
    manager: RecordingManager
    published: list[tuple[str, bytes]]


def subscription(sid: str, source: str, subject: str, target: str) -> dict[str, str]:
    return {"Id": sid, "Source": source, "Subject": subject, "Target": target}


SUBSCRIPTIONS = [
    subscription("up", SENSOR, "sensors/+/temperature", CLOUD),
    subscription("local", SENSOR, "sensors/#", ALARM),
    subscription("any-version", SENSOR_UNQUALIFIED, "sensors/+/humidity", LOGGER),
    subscription("down", CLOUD, "commands/#", SENSOR),
    subscription("down-alarm", CLOUD, "commands/alarm", ALARM),
    subscription("ghost", CLOUD, "ghost/#", PREFIX + "deleted:1"),
    subscription("ghost-after", CLOUD, "ghost/#", LOGGER),
    subscription("loop", CLOUD, "mirror/#", CLOUD),
]


def wired(subscriptions: list[dict[str, str]]) -> Delivery:
    """A router over these subscriptions, delivering into fresh recorders."""
    published: list[tuple[str, bytes]] = []
    manager = RecordingManager()
    router = Router(
        manager=manager,  # type: ignore[arg-type] - the router only calls `invoke`
        publish_cloud=lambda topic, payload: published.append((topic, payload)),
    )
    router.update(parse_routes(subscriptions))
    return Delivery(router, manager, published)


@pytest.fixture
def delivery() -> Delivery:
    return wired(SUBSCRIPTIONS)


def test_parse_routes_keeps_every_field():
    """Each subscription becomes a Route with its Id, Source, Subject and Target."""
    routes = parse_routes(SUBSCRIPTIONS[:1])
    assert routes == (Route("up", SENSOR, "sensors/+/temperature", CLOUD),)


async def test_function_publish_reaches_cloud_and_local_targets(delivery):
    """A function's publish goes to the broker and, as an Event, to a subscribed function."""
    count = await delivery.router.from_function(SENSOR, "sensors/room1/temperature", b'{"t":21}')
    assert count == 2
    assert delivery.published == [("sensors/room1/temperature", b'{"t":21}')]
    assert delivery.manager.invocations == [
        {
            "target": ALARM,
            "payload": b'{"t":21}',
            "context": {"custom": {"subject": "sensors/room1/temperature", "source": SENSOR}},
            "type": "Event",
        }
    ]


async def test_unqualified_source_matches_any_version_of_the_publisher(delivery):
    """A route whose Source is an unqualified ARN takes publishes from any version."""
    await delivery.router.from_function(SENSOR, "sensors/room1/humidity", b"55")
    assert [i["target"] for i in delivery.manager.invocations] == [ALARM, LOGGER]
    assert delivery.published == []


async def test_other_version_of_the_publisher_is_not_routed(delivery):
    """Routes naming version 1 don't carry what version 2 publishes."""
    count = await delivery.router.from_function(SENSOR_V2, "sensors/room1/temperature", b"x")
    assert count == 0
    assert delivery.published == []
    assert delivery.manager.invocations == []


async def test_cloud_message_invokes_local_targets(delivery):
    """A broker message on a cloud subject invokes each subscribed function with its topic."""
    count = await delivery.router.from_cloud("commands/alarm", b"on")
    assert count == 2
    assert delivery.published == []
    assert {i["target"] for i in delivery.manager.invocations} == {SENSOR, ALARM}
    for invocation in delivery.manager.invocations:
        assert invocation["type"] == "Event"
        assert invocation["payload"] == b"on"
        assert invocation["context"] == {"custom": {"subject": "commands/alarm", "source": CLOUD}}


async def test_cloud_to_cloud_route_does_not_echo_to_the_broker(delivery):
    """A message from the broker is never published back to it."""
    await delivery.router.from_cloud("mirror/x", b"m")
    assert delivery.published == []
    assert delivery.manager.invocations == []


async def test_no_route_delivers_nothing(delivery):
    """A topic no subscription names reaches nobody, and the router logs it at debug."""
    with capture_logs() as logs:
        assert await delivery.router.from_function(SENSOR, "other/topic", b"x") == 0
        assert await delivery.router.from_function(LOGGER, "sensors/a/temperature", b"x") == 0
        assert await delivery.router.from_cloud("sensors/a/temperature", b"x") == 0
    assert delivery.published == []
    assert delivery.manager.invocations == []
    assert [entry["event"] for entry in logs] == ["router.no_route"] * 3
    assert logs[0]["log_level"] == "debug"
    assert (logs[0]["source"], logs[0]["topic"]) == (SENSOR, "other/topic")


async def test_unknown_target_is_logged_not_raised(delivery):
    """A route to a function that isn't deployed logs a warning; the other targets still get it."""
    with capture_logs() as logs:
        await delivery.router.from_cloud("ghost/1", b"boo")
    assert [i["target"] for i in delivery.manager.invocations] == [LOGGER]
    assert logs == [
        {
            "event": "router.unknown_target",
            "log_level": "warning",
            "component": "router",
            "target": PREFIX + "deleted:1",
            "topic": "ghost/1",
        }
    ]


async def test_a_target_named_twice_gets_one_delivery():
    """Two routes from one source to one target deliver the message once."""
    both = wired(
        [
            subscription("a", SENSOR, "x/#", ALARM),
            subscription("b", SENSOR, "x/+", ALARM),
            subscription("c", SENSOR, "x/+", CLOUD),
            subscription("d", SENSOR, "#", CLOUD),
        ]
    )
    await both.router.from_function(SENSOR, "x/y", b"1")
    assert [i["target"] for i in both.manager.invocations] == [ALARM]
    assert both.published == [("x/y", b"1")]


async def test_update_replaces_the_routes(delivery):
    """After update, only the new deployment's subscriptions route."""
    delivery.router.update(parse_routes([subscription("n", SENSOR, "new", LOGGER)]))
    await delivery.router.from_function(SENSOR, "sensors/a/temperature", b"old")
    await delivery.router.from_function(SENSOR, "new", b"new")
    assert delivery.published == []
    assert [(i["target"], i["payload"]) for i in delivery.manager.invocations] == [(LOGGER, b"new")]


def test_cloud_subjects_lists_only_cloud_sourced_subjects(delivery):
    """The core subscribes on the broker to each cloud-sourced subject, once, sorted."""
    delivery.router.update(
        (*delivery.router.routes, Route("dup", CLOUD, "commands/#", LOGGER)),
    )
    assert delivery.router.cloud_subjects() == [
        "commands/#",
        "commands/alarm",
        "ghost/#",
        "mirror/#",
    ]
    delivery.router.update(())
    assert delivery.router.cloud_subjects() == []


def test_leading_wildcards_do_not_match_dollar_topics() -> None:
    """MQTT 4.7.2: `#` and `+/...` never match `$aws/...`; an explicit `$aws/#` does."""
    assert not topic_matches("#", "$aws/things/t/shadow/update")
    assert not topic_matches("+/things/t/shadow/update", "$aws/things/t/shadow/update")
    assert topic_matches("$aws/#", "$aws/things/t/shadow/update")
