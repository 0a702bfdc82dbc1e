# SPDX-License-Identifier: Apache-2.0
"""The encrypted store: format, round trips, tamper detection and crash-safe rotation."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import struct
from pathlib import Path
from unittest import mock

import msgpack
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from edge.errors import (
    InsecurePermissionsError,
    StoreCorruptError,
    StoreSymlinkError,
    StoreWriteError,
)
from edge.secrets.contents import (
    DeploymentRecord,
    LocalSecret,
    SecretVersion,
    StoreContents,
    to_plain,
)
from edge.secrets.keys import CoreKey, generate_key
from edge.secrets.store import (
    MAGIC,
    MAX_HEADER_LEN,
    STORE_FILE_NAME,
    SecretStore,
    seal,
    unseal,
)

STRING_VALUE = "hunter2-correct-horse-battery-staple"
BINARY_VALUE = b"\x00\xffbinary-secret-value\x01\x02\x03\xfe"
PREVIOUS_VALUE = "the-previous-password-value"
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def sample_contents() -> StoreContents:
    """Two secrets: a string one whose two labels share a version, and a binary one."""
    current = SecretVersion(
        version_id="v2",
        version_stages=("AWSCURRENT", "Blue"),
        created_date=1_700_000_000.25,
        secret_string=STRING_VALUE,
    )
    previous = SecretVersion(
        version_id="v1",
        version_stages=("AWSPREVIOUS",),
        created_date=1_600_000_000.0,
        secret_string=PREVIOUS_VALUE,
    )
    binary = SecretVersion(
        version_id="b1",
        version_stages=("AWSCURRENT",),
        created_date=1_650_000_000.5,
        secret_binary=BINARY_VALUE,
    )
    return StoreContents(
        deployment=DeploymentRecord(
            deployment_id="d-1",
            deployment_type="NewDeployment",
            group_id="g-1",
            group_version_id="gv-1",
            created_at="2024-05-01T12:00:00Z",
        ),
        group={"Resources": [{"Id": "db-password", "Name": "db"}], "Version": 3},
        secrets={
            "db-password": LocalSecret(
                resource_id="db-password",
                arn="arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf",
                name="db",
                labels={"AWSCURRENT": "v2", "Blue": "v2", "AWSPREVIOUS": "v1"},
                versions={"v2": current, "v1": previous},
            ),
            "cert": LocalSecret(
                resource_id="cert",
                arn="arn:aws:secretsmanager:eu-west-1:123456789012:secret:cert-XyZ123",
                name="cert",
                labels={"AWSCURRENT": "b1"},
                versions={"b1": binary},
            ),
        },
    )


def other_contents() -> StoreContents:
    return StoreContents(group={"Version": 4})


def split(blob: bytes) -> tuple[bytes, bytes]:
    """Split a sealed blob into its header bytes and everything after them."""
    (header_len,) = struct.unpack(">I", blob[8:12])
    return blob[12 : 12 + header_len], blob[12 + header_len :]


def seal_by_hand(plaintext: bytes, key: CoreKey, header: dict[str, object] | None = None) -> bytes:
    """Build a store file from the format in the module docstring, independently of `seal`."""
    header_bytes = msgpack.packb(
        header
        or {
            "v": 1,
            "cipher": "AES-256-GCM",
            "wrap": key.algorithm,
            "key": key.fingerprint,
            "created": "2024-05-01T12:00:00+00:00",
        }
    )
    aad = MAGIC + struct.pack(">I", len(header_bytes)) + header_bytes
    data_key = os.urandom(32)
    wrapped = key.wrap(data_key, aad=aad)
    nonce = os.urandom(12)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, aad)
    return aad + struct.pack(">I", len(wrapped)) + wrapped + nonce + ciphertext


@pytest.fixture(scope="module")
def ec_key(tmp_path_factory: pytest.TempPathFactory) -> CoreKey:
    return generate_key(tmp_path_factory.mktemp("keys") / "ec.key")


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> CoreKey:
    """One RSA-2048 key for the module: generating RSA keys is slow."""
    return generate_key(tmp_path_factory.mktemp("keys") / "rsa.key", kind="rsa")


@pytest.fixture(params=["ec", "rsa"])
def any_key(request: pytest.FixtureRequest) -> CoreKey:
    """Each supported kind of core key in turn."""
    return request.getfixturevalue(f"{request.param}_key")


@pytest.fixture(scope="module")
def sealed(ec_key: CoreKey) -> bytes:
    """The sample contents sealed once with the EC key, for the tamper tests."""
    return seal(sample_contents(), ec_key)


@pytest.fixture
def store(tmp_path: Path, ec_key: CoreKey) -> SecretStore:
    return SecretStore(path=tmp_path / STORE_FILE_NAME, key=ec_key)


def directory_listing(store: SecretStore) -> set[str]:
    return {p.name for p in store.path.parent.iterdir()}


# --- round trips -------------------------------------------------------------------------------


def test_round_trip_through_a_file(tmp_path, any_key):
    """What is saved loads back equal: string and binary values, labels sharing a version."""
    store = SecretStore(path=tmp_path / STORE_FILE_NAME, key=any_key)
    store.save(sample_contents())
    loaded = store.load()
    assert loaded == sample_contents()
    assert loaded is not None
    db = loaded.secrets["db-password"]
    assert db.version_for("AWSCURRENT") is db.version_for("Blue")
    assert db.version_for("AWSCURRENT").secret_string == STRING_VALUE
    assert loaded.secrets["cert"].version_for("AWSCURRENT").secret_binary == BINARY_VALUE


def test_load_without_a_file_is_none(store):
    """A fresh core has no store: load returns None and exists() is False."""
    assert not store.exists()
    assert store.load() is None


def test_save_creates_a_private_file(store):
    """The store file is created with mode 0600, even under a permissive umask."""
    old = os.umask(0)
    try:
        store.save(sample_contents())
    finally:
        os.umask(old)
    assert store.exists()
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert directory_listing(store) == {STORE_FILE_NAME}


def test_no_value_or_name_appears_in_the_file(store):
    """Neither secret values nor names, ARNs or labels are readable in the file bytes."""
    contents = sample_contents()
    store.save(contents)
    raw = store.path.read_bytes()
    for value in contents.values():
        needle = value.encode() if isinstance(value, str) else value
        assert needle not in raw
    for needle in (b"db-password", b"secretsmanager", b"AWSPREVIOUS", b"NewDeployment"):
        assert needle not in raw


def test_file_layout_matches_the_documented_format(sealed, ec_key):
    """The file starts with the magic and a msgpack header naming version, cipher and key."""
    assert sealed.startswith(b"EDGESTOR")
    header_bytes, _ = split(sealed)
    header = msgpack.unpackb(header_bytes)
    assert header["v"] == 1
    assert header["cipher"] == "AES-256-GCM"
    assert header["wrap"] == ec_key.algorithm
    assert header["key"] == ec_key.fingerprint
    assert header["created"].endswith("+00:00")


def test_a_file_built_from_the_spec_unseals(any_key):
    """An independent encoder that follows the documented format produces a readable store."""
    plaintext = msgpack.packb(to_plain(sample_contents()), use_bin_type=True)
    assert unseal(seal_by_hand(plaintext, any_key), any_key) == sample_contents()


def test_every_save_uses_a_fresh_data_key(store):
    """Saving the same contents twice writes different bytes (new data key and nonce)."""
    store.save(sample_contents())
    first = store.path.read_bytes()
    store.save(sample_contents())
    second = store.path.read_bytes()
    assert split(first)[1] != split(second)[1]
    assert store.load() == sample_contents()


def test_save_replaces_previous_contents(store):
    """A second save replaces the first completely."""
    store.save(sample_contents())
    store.save(other_contents())
    assert store.load() == other_contents()


async def test_aload_and_asave_run_off_the_event_loop(store):
    """The async `asave` and `aload` work from a coroutine, and concurrent loads agree."""
    await store.asave(sample_contents())
    results = await asyncio.gather(store.aload(), store.aload())
    assert results == [sample_contents(), sample_contents()]


def test_repr_shows_no_contents(store):
    """The store's repr names the path and key fingerprint only."""
    store.save(sample_contents())
    assert STRING_VALUE not in repr(store)
    assert store.path.name in repr(store)


# --- hypothesis: arbitrary contents ------------------------------------------------------------

names = st.text(max_size=12)
# msgpack ints span int64..uint64; NaN is excluded only because NaN != NaN breaks equality.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def secret_versions(draw: st.DrawFn, version_id: str) -> SecretVersion:
    value = draw(st.one_of(st.text(), st.binary()))
    return SecretVersion(
        version_id=version_id,
        version_stages=tuple(draw(st.lists(names, max_size=3))),
        created_date=draw(st.floats(allow_nan=False)),
        secret_string=value if isinstance(value, str) else None,
        secret_binary=value if isinstance(value, bytes) else None,
    )


@st.composite
def local_secrets(draw: st.DrawFn, resource_id: str) -> LocalSecret:
    version_ids = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    return LocalSecret(
        resource_id=resource_id,
        arn=draw(names),
        name=draw(names),
        labels=draw(st.dictionaries(names, st.sampled_from(version_ids), max_size=3)),
        versions={vid: draw(secret_versions(vid)) for vid in version_ids},
    )


@st.composite
def store_contents(draw: st.DrawFn) -> StoreContents:
    resource_ids = draw(st.lists(names, max_size=3, unique=True))
    deployment = draw(
        st.none()
        | st.builds(
            DeploymentRecord,
            deployment_id=names,
            deployment_type=names,
            group_id=names,
            group_version_id=names,
            created_at=names,
        )
    )
    return StoreContents(
        deployment=deployment,
        group=draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
        secrets={rid: draw(local_secrets(rid)) for rid in resource_ids},
    )


@settings(max_examples=150, deadline=None)
@given(contents=store_contents())
def test_any_contents_round_trip(contents, ec_key):
    """unseal(seal(c)) == c for arbitrary contents, including arbitrary text and bytes."""
    assert unseal(seal(contents, ec_key), ec_key) == contents


# --- tamper and damage detection ---------------------------------------------------------------


def test_every_single_byte_flip_is_detected(any_key):
    """Flipping the low bit of any byte, header through tag, raises StoreCorruptError."""
    blob = seal(sample_contents(), any_key)
    for offset in range(len(blob)):
        damaged = bytearray(blob)
        damaged[offset] ^= 0x01
        with pytest.raises(StoreCorruptError):
            unseal(bytes(damaged), any_key)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_byte_change_is_detected(sealed, ec_key, data):
    """Any change to any one byte raises StoreCorruptError and nothing else."""
    offset = data.draw(st.integers(min_value=0, max_value=len(sealed) - 1), label="offset")
    mask = data.draw(st.integers(min_value=1, max_value=255), label="xor mask")
    damaged = bytearray(sealed)
    damaged[offset] ^= mask
    with pytest.raises(StoreCorruptError):
        unseal(bytes(damaged), ec_key)


def test_every_truncation_is_detected(sealed, ec_key):
    """A file cut at any length, including empty, raises StoreCorruptError."""
    for length in range(len(sealed)):
        with pytest.raises(StoreCorruptError):
            unseal(sealed[:length], ec_key)


@settings(max_examples=50, deadline=None)
@given(extra=st.binary(min_size=1, max_size=64))
def test_appended_bytes_are_detected(sealed, ec_key, extra):
    """Bytes appended after the tag raise StoreCorruptError."""
    with pytest.raises(StoreCorruptError):
        unseal(sealed + extra, ec_key)


@settings(max_examples=200, deadline=None)
@given(blob=st.binary(max_size=200) | st.binary(max_size=200).map(lambda b: MAGIC + b))
def test_random_bytes_are_refused(ec_key, blob):
    """Arbitrary bytes, with or without the magic, raise StoreCorruptError and nothing else."""
    with pytest.raises(StoreCorruptError):
        unseal(blob, ec_key)


def test_bad_magic_is_named(sealed, ec_key):
    """A file that doesn't start with the magic is called not a secret store."""
    with pytest.raises(StoreCorruptError, match="not a secret store"):
        unseal(b"NOTSTORE" + sealed[8:], ec_key)


@pytest.mark.parametrize("length", [0, MAX_HEADER_LEN + 1, 0xFFFFFFFF])
def test_header_length_is_capped_before_reading(sealed, ec_key, length):
    """An absurd header length is refused by its value, before anything is read by it."""
    damaged = sealed[:8] + struct.pack(">I", length) + sealed[12:]
    with pytest.raises(StoreCorruptError, match="header length"):
        unseal(damaged, ec_key)


def test_wrapped_key_length_is_capped_before_reading(sealed, ec_key):
    """An absurd wrapped-key length is refused by its value."""
    header_bytes, rest = split(sealed)
    damaged = sealed[: 12 + len(header_bytes)] + struct.pack(">I", 0xFFFFFFFF) + rest[4:]
    with pytest.raises(StoreCorruptError, match="wrapped-key length"):
        unseal(damaged, ec_key)


def test_unknown_format_version_is_named(ec_key):
    """A header from a future format version is refused, naming the version."""
    header = {
        "v": 2,
        "cipher": "AES-256-GCM",
        "wrap": ec_key.algorithm,
        "key": ec_key.fingerprint,
        "created": "2030-01-01T00:00:00+00:00",
    }
    blob = seal_by_hand(b"\x80", ec_key, header)
    with pytest.raises(StoreCorruptError, match="unknown format version 2"):
        unseal(blob, ec_key)


def test_wrong_key_names_both_fingerprints(tmp_path, ec_key, rsa_key):
    """A store sealed with another core's key says which key sealed it and which we have."""
    other = generate_key(tmp_path / "other.key")
    for sealer in (other, rsa_key):
        with pytest.raises(StoreCorruptError) as info:
            unseal(seal(sample_contents(), sealer), ec_key, path="/var/lib/edge/secrets.store")
        message = str(info.value)
        assert f"sealed with key {sealer.fingerprint}" in message
        assert f"this core's key is {ec_key.fingerprint}" in message
        assert info.value.path == "/var/lib/edge/secrets.store"


def test_undecodable_plaintext_is_corrupt(ec_key):
    """Authentic ciphertext whose plaintext isn't msgpack is a StoreCorruptError."""
    with pytest.raises(StoreCorruptError, match="not valid msgpack"):
        unseal(seal_by_hand(b"\xc1", ec_key), ec_key)


@pytest.mark.parametrize(
    "plain",
    [
        {"format": 2},
        [1, 2, 3],
        {"format": 1, "deployment": None, "group": {}, "secrets": {"r": {"ARN": "a"}}},
    ],
)
def test_wrong_layout_is_corrupt(ec_key, plain):
    """Authentic msgpack that isn't our layout is a StoreCorruptError, not a KeyError."""
    with pytest.raises(StoreCorruptError, match="unexpected layout"):
        unseal(seal_by_hand(msgpack.packb(plain), ec_key), ec_key)


def test_corrupt_file_on_disk_is_reported_and_left_alone(store):
    """load() of a damaged file raises StoreCorruptError and doesn't touch the file."""
    store.save(sample_contents())
    damaged = bytearray(store.path.read_bytes())
    damaged[-1] ^= 0xFF
    store.path.write_bytes(bytes(damaged))
    with pytest.raises(StoreCorruptError, match="do not authenticate") as info:
        store.load()
    assert info.value.path == str(store.path)
    assert store.path.read_bytes() == bytes(damaged)


def test_corrupt_errors_never_quote_secret_values(sealed, ec_key):
    """No StoreCorruptError message, for any single-byte flip, contains a secret value."""
    for offset in range(len(sealed)):
        damaged = bytearray(sealed)
        damaged[offset] ^= 0x80
        with pytest.raises(StoreCorruptError) as info:
            unseal(bytes(damaged), ec_key)
        assert STRING_VALUE not in str(info.value)
        assert PREVIOUS_VALUE not in str(info.value)


# --- permissions -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_load_refuses_a_file_others_can_reach(store, mode):
    """A store file with group or other permissions is refused with the chmod to run."""
    store.save(sample_contents())
    store.path.chmod(mode)
    with pytest.raises(InsecurePermissionsError, match="chmod 0600") as info:
        store.load()
    assert info.value.mode == mode


@pytest.mark.parametrize("dangling", [False, True])
def test_a_store_that_is_a_symbolic_link_is_refused(tmp_path, ec_key, dangling):
    """A link at the store's path is never followed, even to a valid store sealed by this key."""
    elsewhere = SecretStore(path=tmp_path / "elsewhere.store", key=ec_key)
    if not dangling:
        elsewhere.save(sample_contents())
    store = SecretStore(path=tmp_path / STORE_FILE_NAME, key=ec_key)
    store.path.symlink_to(elsewhere.path)
    assert store.exists()
    with pytest.raises(StoreSymlinkError) as info:
        store.load()
    message = str(info.value)
    assert str(store.path) in message
    assert "symbolic link" in message
    assert "mv" in message
    assert store.path.is_symlink()


def test_a_save_replaces_a_planted_link_without_writing_through_it(tmp_path, ec_key):
    """A link planted at the store's path is replaced by the new file; its target is untouched."""
    target = tmp_path / "victim"
    target.write_bytes(b"keep me")
    store = SecretStore(path=tmp_path / STORE_FILE_NAME, key=ec_key)
    store.path.symlink_to(target)
    store.save(sample_contents())
    assert not store.path.is_symlink()
    assert target.read_bytes() == b"keep me"
    assert store.load() == sample_contents()


# --- failed saves ------------------------------------------------------------------------------
# Disk-full and read-only filesystems can't be produced in tmp_path (and the tests run as root,
# which chmod doesn't stop), so these patch the one system call that would fail. This is the
# only use of mocks in this module.


@pytest.mark.parametrize("call", ["replace", "fsync", "write"])
def test_failed_save_leaves_previous_store_identical(store, call):
    """ENOSPC at write, fsync or rename: StoreWriteError, old bytes intact, no temp file."""
    store.save(sample_contents())
    before = store.path.read_bytes()
    with (
        mock.patch.object(os, call, side_effect=ENOSPC),
        pytest.raises(StoreWriteError, match="No space left on device") as info,
    ):
        store.save(other_contents())
    assert info.value.path == str(store.path)
    assert store.path.read_bytes() == before
    assert directory_listing(store) == {STORE_FILE_NAME}
    assert store.load() == sample_contents()


def test_failed_first_save_leaves_no_file(store):
    """A first save that fails leaves the directory empty."""
    with mock.patch.object(os, "replace", side_effect=ENOSPC), pytest.raises(StoreWriteError):
        store.save(sample_contents())
    assert directory_listing(store) == set()


def test_read_only_filesystem_is_a_write_error(store):
    """EROFS when creating the temp file is a StoreWriteError; the old store stays."""
    store.save(sample_contents())
    before = store.path.read_bytes()
    real_open = os.open

    def refuse_create(path, flags, *args, **kwargs):
        # Reads still work on a read-only filesystem; only creating a file fails.
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    with (
        mock.patch.object(os, "open", side_effect=refuse_create),
        pytest.raises(StoreWriteError, match="Read-only file system"),
    ):
        store.save(other_contents())
    assert store.path.read_bytes() == before
    assert directory_listing(store) == {STORE_FILE_NAME}


def test_missing_directory_is_a_write_error(tmp_path, ec_key):
    """Saving into a directory that doesn't exist is a StoreWriteError."""
    store = SecretStore(path=tmp_path / "missing" / STORE_FILE_NAME, key=ec_key)
    with pytest.raises(StoreWriteError, match="No such file or directory"):
        store.save(sample_contents())


def test_unserialisable_contents_are_a_write_error(store):
    """A group holding something msgpack can't encode fails the save, old store intact."""
    store.save(sample_contents())
    before = store.path.read_bytes()
    with pytest.raises(StoreWriteError, match="can't be serialised"):
        store.save(StoreContents(group={"huge": 2**70}))
    assert store.path.read_bytes() == before


def test_directory_sync_failure_after_rename_still_saves(store):
    """If only the final directory fsync fails, the new store is in place and no error is raised.

    The rename has happened, so raising "previous store unchanged" would be false.
    """
    real_fsync = os.fsync
    calls = []

    def fail_second_fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # the first syncs the temp file, the second the directory
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    with capture_logs() as logs, mock.patch.object(os, "fsync", side_effect=fail_second_fsync):
        store.save(sample_contents())
    assert len(calls) == 2
    assert [entry["event"] for entry in logs] == ["store.dir_sync_failed"]
    assert store.load() == sample_contents()


# --- stale temporary files ---------------------------------------------------------------------


def test_load_removes_stale_temp_files(store):
    """Temp files a crashed save left are removed by load(); other files are not."""
    store.save(sample_contents())
    stale = store.path.with_name(f".{STORE_FILE_NAME}.tmp-4242-deadbeef")
    stale.write_bytes(b"half a store")
    unrelated = store.path.with_name(".other.store.tmp-4242-deadbeef")
    unrelated.write_bytes(b"not ours")
    with capture_logs() as logs:
        assert store.load() == sample_contents()
    assert not stale.exists()
    assert [(e["event"], e["path"]) for e in logs] == [("store.stale_temp_removed", str(stale))]
    assert unrelated.exists()


def test_load_removes_stale_temp_files_without_a_store(store):
    """Cleanup also runs when the crash happened before the first store was written."""
    stale = store.path.with_name(f".{STORE_FILE_NAME}.tmp-1-00")
    stale.write_bytes(b"")
    assert store.load() is None
    assert not stale.exists()


def test_cleanup_spares_the_temp_file_of_a_running_save(store):
    """A cleanup that runs while a save is writing leaves that save's temp file alone."""
    real_fsync = os.fsync
    removed_during_save = []

    def clean_then_fsync(fd):
        # Interleave a cleanup between writing the temp file and renaming it, as a load()
        # in another thread could; there's no other way to hit this window reliably.
        removed_during_save.extend(store.clean_stale_temp_files())
        real_fsync(fd)

    with mock.patch.object(os, "fsync", side_effect=clean_then_fsync):
        store.save(sample_contents())
    assert removed_during_save == []
    assert store.load() == sample_contents()
