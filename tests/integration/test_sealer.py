# SPDX-License-Identifier: Apache-2.0
"""The core's crypto child: the store opened, sealed and signatures checked in a real process.

Each operation runs `python -m edge.secrets.sealer` for real. Errors are compared with those of
the in-process store (`edge.secrets.store`), which the CLI still uses: the same class and the
same message, whichever process met the problem. Faults a healthy child never has (dying
mid-answer, garbage, hanging) come from `tests.support.faulty_sealer`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.deploy.trust import DeploymentTrust
from edge.errors import (
    BadSignatureError,
    EdgeError,
    EnvelopeMalformedError,
    SignatureCheckError,
    StoreError,
    StoreWriteError,
    UnsignedDeploymentError,
    UntrustedKeyError,
    WrongThingError,
)
from edge.secrets import seal_process
from edge.secrets.contents import StoreContents
from edge.secrets.keys import CoreKey, generate_key
from edge.secrets.seal_process import ChildStore, Unsealing, Verifier
from edge.secrets.sealing import seal_plaintext
from edge.secrets.store import SecretStore
from edge.secrets.storefile import STORE_FILE_NAME
from edge.signing import key_id, seal
from tests.support.recording import RecordingLogger
from tests.unit.test_store import other_contents, sample_contents

FAULTY = "tests.support.faulty_sealer"


class World:
    """A state directory with a core key, the store's path, and both ways to open it."""

    def __init__(self, root: Path) -> None:
        self.key_path = root / "core.key"
        self.path = root / STORE_FILE_NAME
        generate_key(self.key_path)
        self.log = RecordingLogger([])

    def child(self) -> ChildStore:
        return ChildStore(path=self.path, key=self.key_path, logger=self.log)

    def in_process(self) -> StoreContents | None:
        return SecretStore(path=self.path, key=CoreKey.load(self.key_path)).load()

    def gone(self) -> bool:
        return all_gone(self.log)


def all_gone(log: RecordingLogger) -> bool:
    """Faulty children announced themselves, and every one has exited and been reaped."""
    pids = log.pids("faulty-sealer-pid")
    return bool(pids) and not any(Path(f"/proc/{pid}").exists() for pid in pids)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


async def test_a_store_sealed_in_the_child_opens_in_process_and_back(world: World) -> None:
    """Same file format both ways, 0600, and a fresh core (no store) gets None."""
    store = world.child()
    assert await store.aload() is None
    await store.asave(sample_contents())
    assert stat.S_IMODE(world.path.stat().st_mode) == 0o600
    assert world.in_process() == sample_contents()
    assert store.rotations == 1

    SecretStore(path=world.path, key=CoreKey.load(world.key_path)).save(other_contents())
    assert await world.child().aload() == other_contents()


def test_the_unseal_started_before_the_event_loop_is_answered_in_it(world: World) -> None:
    """`edge run` starts the unseal before the core's imports; `aload` takes its answer."""
    SecretStore(path=world.path, key=CoreKey.load(world.key_path)).save(sample_contents())
    unsealing = Unsealing(world.key_path, world.path)
    store = ChildStore(path=world.path, key=world.key_path, unsealing=unsealing)
    assert asyncio.run(store.aload()) == sample_contents()
    unsealing.cancel()  # spent: nothing to kill


def _no_key(w: World) -> None:
    w.key_path.unlink()


def _loose_key(w: World) -> None:
    w.key_path.chmod(0o644)


def _not_a_key(w: World) -> None:
    w.key_path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def _sealed(w: World, blob: bytes) -> None:
    w.path.write_bytes(blob)
    w.path.chmod(0o600)


def _stored(w: World) -> bytes:
    SecretStore(path=w.path, key=CoreKey.load(w.key_path)).save(sample_contents())
    return w.path.read_bytes()


def _symlink(w: World) -> None:
    _stored(w)
    target = w.path.with_name("elsewhere")
    w.path.rename(target)
    w.path.symlink_to(target)


def _other_key(w: World) -> None:
    other = generate_key(w.key_path.with_name("other.key"))
    _sealed(w, seal_plaintext(b"\x80", other))


FAULTS: dict[str, Callable[[World], object]] = {
    "no key file": _no_key,
    "a key open to others": _loose_key,
    "not a key": _not_a_key,
    "not a store": lambda w: _sealed(w, b"NOTSTORE" + bytes(40)),
    "a truncated store": lambda w: _sealed(w, _stored(w)[:-20]),
    "an altered store": lambda w: _sealed(w, _stored(w)[:-1] + b"\x00"),
    "a store open to others": lambda w: (_stored(w), w.path.chmod(0o640)),
    "a store that is a link": _symlink,
    "a store that is a directory": lambda w: w.path.mkdir(),
    "a store sealed with another key": _other_key,
    "contents that are not msgpack": lambda w: _sealed(
        w, seal_plaintext(b"\xc1", CoreKey.load(w.key_path))
    ),
}


@pytest.mark.parametrize("fault", FAULTS)
async def test_each_problem_opening_the_store_is_the_in_process_error(
    world: World, fault: str
) -> None:
    """The child's error is the same class with the same message as the in-process load's."""
    FAULTS[fault](world)
    with pytest.raises(EdgeError) as expected:
        world.in_process()
    with pytest.raises(EdgeError) as got:
        await world.child().aload()
    assert type(got.value) is type(expected.value)
    assert str(got.value) == str(expected.value)
    if fault == "no key file":
        assert "run `edge init" in str(got.value)


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        ("half", "ended without an answer (exit status -9)"),
        ("garbage", "answered something that is not a frame"),
        ("exit", "ended without an answer (exit status 3)"),
        ("hang", "gave no answer within 1 s"),
    ],
)
async def test_a_seal_child_that_fails_leaves_the_old_store_byte_for_byte(
    world: World, monkeypatch: pytest.MonkeyPatch, fault: str, why: str
) -> None:
    """Dead mid-answer, garbage, no answer or none in time: StoreWriteError, store untouched."""
    store = world.child()
    await store.aload()
    await store.asave(sample_contents())
    before = world.path.read_bytes()
    monkeypatch.setattr(seal_process, "SEALER_MODULE", FAULTY)
    monkeypatch.setattr(seal_process, "SEAL_DEADLINE_SECONDS", 1.0)
    monkeypatch.setenv("EDGE_TEST_SEALER_FAULT", fault)
    with pytest.raises(StoreWriteError) as failed:
        await store.asave(other_contents())
    assert str(failed.value) == (
        f"could not write secret store {world.path}: the sealer process {why}; the previous "
        "store is unchanged"
    )
    assert world.path.read_bytes() == before
    assert sorted(p.name for p in world.path.parent.iterdir()) == ["core.key", STORE_FILE_NAME]
    assert store.rotations == 1
    assert world.gone()


async def test_a_start_that_cannot_unseal_says_so(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that ends without opening the store: a StoreError naming the store and why."""
    monkeypatch.setattr(seal_process, "SEALER_MODULE", FAULTY)
    monkeypatch.setenv("EDGE_TEST_SEALER_FAULT", "exit")
    with pytest.raises(StoreError) as failed:
        await world.child().aload()
    assert str(failed.value) == (
        f"secret store {world.path} could not be opened: the sealer process ended without an "
        "answer (exit status 3)"
    )
    assert world.gone()


async def test_contents_that_cannot_be_serialised_start_no_child(world: World) -> None:
    """Checked in the core, before any child: a StoreWriteError, store untouched."""
    store = world.child()
    await store.aload()
    with pytest.raises(StoreWriteError, match="can't be serialised"):
        await store.asave(StoreContents(group={"huge": 2**70}))
    assert not world.path.exists()


async def test_a_store_never_opened_is_never_sealed(world: World) -> None:
    """Without the key's public half (known from opening the store), no save happens."""
    with pytest.raises(StoreWriteError, match="never opened"):
        await world.child().asave(sample_contents())
    assert not world.path.exists()


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


async def test_the_child_verifies_ed25519_signatures() -> None:
    """A good signature verifies; another message, key or signature doesn't."""
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signature = key.sign(b"message")
    verify = Verifier()
    assert await verify(_raw(key), signature, b"message") is True
    assert await verify(_raw(key), signature, b"messagE") is False
    assert await verify(_raw(other), signature, b"message") is False
    assert await verify(_raw(key), bytes(64), b"message") is False
    assert await verify(b"\xff" * 32, signature, b"message") is False


async def test_a_verify_child_that_dies_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """No answer is never a yes: SignatureCheckError, and the child is gone."""
    key = Ed25519PrivateKey.generate()
    monkeypatch.setattr(seal_process, "SEALER_MODULE", FAULTY)
    monkeypatch.setenv("EDGE_TEST_SEALER_FAULT", "half")
    log = RecordingLogger([])
    with pytest.raises(SignatureCheckError, match="exit status -9"):
        await Verifier(logger=log)(_raw(key), key.sign(b"m"), b"m")
    assert all_gone(log)


class CountingVerifier:
    """The real verifier (the crypto child), counting the children it starts."""

    def __init__(self, log: RecordingLogger | None = None) -> None:
        self.calls = 0
        self._verify = Verifier() if log is None else Verifier(logger=log)

    async def __call__(self, public_key: bytes, signature: bytes, message: bytes) -> bool:
        self.calls += 1
        return await self._verify(public_key, signature, message)


THING = "core-1"
DOCUMENT = b'{"DeploymentId": "d-1"}'


async def test_a_forged_signature_under_a_trusted_key_id_is_refused_by_the_child() -> None:
    """The key id is trusted, so the child checks the signature, and refuses it."""
    key, forger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    verify = CountingVerifier()
    trust = DeploymentTrust.of(THING, [_raw(key)], verify=verify)
    assert (await trust.open(seal(DOCUMENT, signing_key=key, thing_name=THING))).document == (
        DOCUMENT
    )
    forged = json.loads(seal(DOCUMENT, signing_key=forger, thing_name=THING))
    forged["KeyId"] = key_id(key.public_key())
    with pytest.raises(BadSignatureError):
        await trust.open(json.dumps(forged).encode())
    assert verify.calls == 2


async def test_an_unknown_key_id_or_a_broken_envelope_starts_no_child() -> None:
    """Every check that needs no crypto is made in the core, before any child."""
    key, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    verify = CountingVerifier()
    trust = DeploymentTrust.of(THING, [_raw(key)], verify=verify)
    unknown = seal(DOCUMENT, signing_key=stranger, thing_name=THING)
    with pytest.raises(UntrustedKeyError):
        await trust.open(unknown)
    short = json.loads(seal(DOCUMENT, signing_key=key, thing_name=THING))
    short["Signature"] = base64.b64encode(bytes(63)).decode()
    for payload, error in [
        (json.dumps(short).encode(), EnvelopeMalformedError),
        (seal(DOCUMENT, signing_key=key, thing_name="core-2"), WrongThingError),
        (DOCUMENT, UnsignedDeploymentError),
    ]:
        with pytest.raises(error):
            await trust.open(payload)
    assert verify.calls == 0


async def test_one_verify_child_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent checks wait for each other: each child ends before the next one starts."""
    monkeypatch.setattr(seal_process, "SEALER_MODULE", FAULTY)
    monkeypatch.setenv("EDGE_TEST_SEALER_FAULT", "slow")
    key = Ed25519PrivateKey.generate()
    log = RecordingLogger([])
    verify = Verifier(logger=log)
    results = await asyncio.gather(*(verify(_raw(key), key.sign(b"m"), b"m") for _ in range(3)))
    assert results == [True, True, True]
    marks = [line.split("=")[0] for line in log.lines if line.startswith("faulty-sealer-")]
    assert marks == ["faulty-sealer-pid", "faulty-sealer-done"] * 3


@pytest.mark.parametrize("child", ["sealer", "fetcher"])
def test_the_crypto_and_fetch_children_are_not_dumpable(child: str) -> None:
    """Like the core: no core dump of keys or values, no ptrace by the same user.

    Each child's `main` finds its stdin closed, so it ends at once, as one whose core went
    away does.
    """
    probe = (
        "from edge.hardening import is_dumpable\n"
        f"from edge.secrets import {child} as child\n"
        "before = is_dumpable()\n"
        "try:\n"
        "    child.main()\n"
        "except BaseException:\n"
        "    pass\n"
        "import sys; print(before, is_dumpable(), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stderr.split()[-2:] == ["True", "False"], done.stderr


async def test_a_module_in_the_cores_working_directory_never_runs_in_the_child(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m` would import a planted `msgpack.py` first; the child runs with `-P`."""
    planted = tmp_path / "cwd"
    planted.mkdir()
    (planted / "msgpack.py").write_text("raise SystemExit('planted module ran')\n")
    monkeypatch.chdir(planted)
    store = world.child()
    assert await store.aload() is None
    await store.asave(sample_contents())
    assert world.in_process() == sample_contents()
