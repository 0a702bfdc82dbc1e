"""The worker's cache of answers: what is cached, and that nothing outlives an invalidation."""

from __future__ import annotations

import json

from edge.child.cache import MAX_ENTRIES, AnswerCache, cache_key
from edge.ipc.protocol import OP_GET_SECRET_VALUE, OP_GET_SECRET_VALUE_V1, OP_INVOKE

V1 = OP_GET_SECRET_VALUE_V1


def _v1(**request: str | bool) -> dict[str, bytes]:
    return {"Payload": json.dumps(request).encode()}


def test_only_plain_secret_reads_are_cacheable() -> None:
    """Refresh reads, escaped JSON, other ops and unexpected arguments always reach the core."""
    assert cache_key(V1, _v1(SecretId="db")) == (V1, b'{"SecretId": "db"}')
    assert cache_key(V1, _v1(SecretId="db", Refresh=True)) is None
    assert cache_key(V1, {"Payload": b'{"SecretId": "db", "\\u0052efresh": true}'}) is None
    assert cache_key(V1, {"Payload": "not bytes"}) is None
    assert cache_key(OP_GET_SECRET_VALUE, {"SecretId": "db", "VersionStage": "AWSPREVIOUS"}) == (
        OP_GET_SECRET_VALUE,
        "db",
        None,
        "AWSPREVIOUS",
    )
    assert cache_key(OP_GET_SECRET_VALUE, {"SecretId": "db", "Refresh": True}) is None
    assert cache_key(OP_INVOKE, {"FunctionName": "f"}) is None


def test_an_answer_fetched_before_an_invalidation_is_not_kept_after_it() -> None:
    """Off until a watch is registered; an invalidation drops everything and stale stores."""
    cache = AnswerCache(None)
    key = (V1, b"{}")
    cache.store(cache.ticket(), key, {"Payload": b"old"})
    assert cache.lookup(key) is None  # no watch yet: nothing is kept
    cache.reset(1, on=True)
    before = cache.ticket()
    cache.store(before, key, {"Payload": b"old"})
    assert cache.lookup(key) == {"Payload": b"old"}
    in_flight = cache.ticket()  # a request sent now, answered after the next invalidation
    seq, reads = cache.reset(2, on=True)
    assert (seq, reads, cache.lookup(key)) == (1, [(key, 1)], None)
    cache.store(in_flight, key, {"Payload": b"old"})
    assert cache.lookup(key) is None
    cache.store(cache.ticket(), key, {"Payload": b"new"})
    assert cache.lookup(key) == {"Payload": b"new"}
    assert cache.take_reads() == (2, [(key, 1)])


def test_the_cache_is_bounded() -> None:
    """Past MAX_ENTRIES distinct answers it starts over rather than growing."""
    cache = AnswerCache(None)
    cache.reset(1, on=True)
    for n in range(MAX_ENTRIES + 1):
        cache.store(cache.ticket(), (V1, str(n).encode()), {})
    assert cache.lookup((V1, b"0")) is None
    assert cache.lookup((V1, str(MAX_ENTRIES).encode())) == {}
