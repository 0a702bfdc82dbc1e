"""Hostile input, at volume: the deployment parser and the IPC frame decoder.

    .venv/bin/python bench/fuzz.py [--inputs 100000] [--seed 1]

Feeds each entry point `--inputs` generated inputs: random bytes, valid inputs with bytes
flipped, inserted or cut, truncations at every length, oversized and deeply nested documents,
and wrong-typed fields. Every outcome must be a parsed value or the module's own clear error
(DeploymentInvalidError, RemoteProtocolError); anything else, or an IPC buffer growing past its
cap, is a failure and stops the run with the input that caused it. The tests in tests/unit run
the same properties with hypothesis at smaller counts on every `make test`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator

from edge.errors import DeploymentInvalidError, RemoteProtocolError
from edge.ipc.protocol import (
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    NEED_DATA,
    OP_GET_SECRET_VALUE,
    Connection,
    Hello,
    Request,
    Role,
    encode,
)
from edge.model import parse_deployment

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-AbCdEf"
VALID_DOCUMENT = json.dumps(
    {
        "DeploymentId": "5f2c0d2e-0000-4000-8000-000000000001",
        "DeploymentType": "NewDeployment",
        "GroupId": "group-1",
        "GroupVersionId": "v1",
        "CreatedAt": "2026-11-28T12:00:00Z",
        "Group": {
            "Resources": [
                {
                    "Id": "db",
                    "Name": "db",
                    "ResourceDataContainer": {
                        "SecretsManagerSecretResourceData": {
                            "ARN": ARN,
                            "AdditionalStagingLabelsToDownload": ["Label1"],
                        }
                    },
                }
            ],
            "Functions": [
                {
                    "Id": "f",
                    "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:f:1",
                    "FunctionConfiguration": {
                        "Environment": {
                            "ResourceAccessPolicies": [{"ResourceId": "db", "Permission": "ro"}]
                        }
                    },
                }
            ],
            "Connectors": [],
            "Subscriptions": [],
        },
    }
).encode()
_ODD_VALUES: list[object] = [None, True, 0, -1, 2**70, 1.5, "", "x" * 300, [], {}, [[[]]], "arn:"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random byte-level change: flip, insert, delete, truncate or duplicate a slice."""
    if not data:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
    buf = bytearray(data)
    kind = rng.randrange(5)
    i = rng.randrange(len(buf))
    if kind == 0:
        buf[i] ^= 1 << rng.randrange(8)
    elif kind == 1:
        buf.insert(i, rng.randrange(256))
    elif kind == 2:
        del buf[i]
    elif kind == 3:
        del buf[i:]
    else:
        j = rng.randrange(i, len(buf))
        buf[i:i] = buf[i:j]
    return bytes(buf)


def replace_a_value(doc: object, rng: random.Random) -> object:
    """Replace one node of a JSON value with something of the wrong type or shape."""
    if isinstance(doc, dict) and doc and rng.random() < 0.8:
        key = rng.choice(list(doc))
        return {**doc, key: replace_a_value(doc[key], rng)}
    if isinstance(doc, list) and doc and rng.random() < 0.8:
        i = rng.randrange(len(doc))
        return [*doc[:i], replace_a_value(doc[i], rng), *doc[i + 1 :]]
    return rng.choice(_ODD_VALUES)


def deployment_inputs(n: int, rng: random.Random) -> Iterator[bytes]:
    """Inputs for the deployment parser."""
    valid = json.loads(VALID_DOCUMENT)
    for i in range(n):
        kind = i % 6
        if kind == 0:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        elif kind == 1:
            data = VALID_DOCUMENT
            for _ in range(rng.randrange(1, 4)):
                data = mutate(data, rng)
            yield data
        elif kind == 2:
            yield json.dumps(replace_a_value(valid, rng)).encode()
        elif kind == 3:
            yield VALID_DOCUMENT[: rng.randrange(len(VALID_DOCUMENT))]
        elif kind == 4:
            depth = rng.choice([10, 100, 1000, 100_000])
            yield b'{"DeploymentId": "d", "Group": ' + b"[" * depth + b"]" * depth + b"}"
        else:
            yield b'{"DeploymentId": "' + b"a" * rng.choice([10, 2_000_000]) + b'"}'


def check_parser(data: bytes, outcomes: Counter[str]) -> None:
    """Parse one document; only a Deployment or a DeploymentInvalidError may come out."""
    try:
        parse_deployment(data)
    except DeploymentInvalidError:
        outcomes["rejected"] += 1
    else:
        outcomes["accepted"] += 1


def frame_inputs(n: int, rng: random.Random) -> Iterator[bytes]:
    """Byte streams for a server-side IPC connection (after or instead of a Hello)."""
    hello = encode(Hello("t" * 43, 1))
    request = encode(Request(1, OP_GET_SECRET_VALUE, {"SecretId": "db", "VersionStage": "x"}))
    for i in range(n):
        kind = i % 5
        if kind == 0:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        elif kind == 1:
            yield hello + mutate(request, rng)
        elif kind == 2:
            yield mutate(hello, rng) + request
        elif kind == 3:
            size = rng.choice([0, 1, MAX_FRAME_SIZE, MAX_FRAME_SIZE + 1, 2**32 - 1])
            yield size.to_bytes(HEADER_SIZE, "big") + b"\x80" * rng.randrange(0, 32)
        else:
            yield request  # a Request before any Hello


def check_decoder(data: bytes, outcomes: Counter[str], rng: random.Random) -> None:
    """Feed a stream in random chunks; only events or RemoteProtocolError may come out."""
    conn = Connection(Role.SERVER)
    pos = 0
    try:
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                if pos >= len(data):
                    conn.receive_data(b"")
                    outcomes["eof"] += 1
                    return
                step = rng.randrange(1, 64)
                conn.receive_data(data[pos : pos + step])
                pos += step
                if conn.buffered > MAX_FRAME_SIZE + HEADER_SIZE:
                    msg = f"buffer grew to {conn.buffered} bytes"
                    raise AssertionError(msg)
                continue
            if not isinstance(event, Hello):
                outcomes[type(event).__name__] += 1
                return
            # Answering a Hello is the server's business; here it only has to parse.
            outcomes["hello"] += 1
            return
    except RemoteProtocolError:
        outcomes["rejected"] += 1


def run(name: str, inputs: Iterator[bytes], check: Callable[[bytes], None], n: int) -> None:
    """Run one entry point over all its inputs and print a summary line."""
    started = time.perf_counter()
    for count, data in enumerate(inputs, 1):
        try:
            check(data)
        except Exception as exc:
            print(
                f"{name}: input {count} raised {type(exc).__name__}: {exc!r}; input {data[:200]!r}"
            )
            raise
    elapsed = time.perf_counter() - started
    print(f"{name}: {n} inputs in {elapsed:.1f} s ({n / elapsed:,.0f}/s), no unexpected outcome")


def main() -> int:
    """Fuzz both entry points; exit non-zero on the first unexpected outcome."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)  # noqa: S311 - reproducible fuzzing, not cryptography
    parsed: Counter[str] = Counter()
    decoded: Counter[str] = Counter()
    run(
        "deployment parser",
        deployment_inputs(args.inputs, rng),
        lambda d: check_parser(d, parsed),
        args.inputs,
    )
    print(f"  outcomes: {dict(parsed)}")
    run(
        "IPC frame decoder",
        frame_inputs(args.inputs, rng),
        lambda d: check_decoder(d, decoded, rng),
        args.inputs,
    )
    print(f"  outcomes: {dict(decoded)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
