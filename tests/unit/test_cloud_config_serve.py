"""`edge cloud serve`'s keys in cloud.toml: [cloud] listen, TLS files and [cloud.auth] keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.cloud.config import AccessKey, load_cloud_config
from edge.errors import ConfigError
from tests.support import REPO


def config(tmp_path: Path, text: str):
    path = tmp_path / "cloud.toml"
    path.write_text('[aws]\nregion = "us-east-1"\n' + text)
    return load_cloud_config(path)


def test_defaults_listen_on_loopback_without_tls_or_keys(tmp_path: Path) -> None:
    """Nothing set: 127.0.0.1:8443, plain HTTP, no key (so `serve` refuses to start)."""
    serve = config(tmp_path, "").cloud.serve
    assert (serve.host, serve.port, serve.tls, serve.keys) == ("127.0.0.1", 8443, False, ())
    assert serve.metrics_listen is None


def test_metrics_listen_is_an_address(tmp_path: Path) -> None:
    serve = config(tmp_path, '[cloud]\nmetrics_listen = "[::1]:9101"\n').cloud.serve
    assert serve.metrics_listen == ("::1", 9101)


def test_keys_and_tls_files_resolve_against_the_config(tmp_path: Path) -> None:
    """Relative paths are the config directory's, as for every other path."""
    serve = config(
        tmp_path,
        """
[cloud]
listen = "[::1]:9443"
tls_cert_file = "tls/cert.pem"
tls_key_file = "tls/key.pem"

[cloud.auth]
keys = [
    {access_key_id = "EDGEKEY0000000000001", secret_access_key_file = "keys/one"},
    {access_key_id = "EDGEKEY0000000000002", secret_access_key_file = "/etc/edge/two"},
]
""",
    ).cloud.serve
    assert (serve.host, serve.port, serve.tls) == ("::1", 9443, True)
    assert serve.tls_key_file == tmp_path / "tls" / "key.pem"
    assert serve.keys == (
        AccessKey("EDGEKEY0000000000001", tmp_path / "keys" / "one"),
        AccessKey("EDGEKEY0000000000002", Path("/etc/edge/two")),
    )


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[cloud]\nlisten = "8443"\n', "cloud.listen"),
        ('[cloud]\nlisten = "127.0.0.1:70000"\n', "cloud.listen"),
        ('[cloud]\ntls_cert_file = "c.pem"\n', "cloud.tls_cert_file"),
        ('[cloud]\nmetrics_listen = "9101"\n', "cloud.metrics_listen"),
        ("[cloud.auth]\nusers = []\n", "cloud.auth.users"),
        ('[cloud.auth]\nkeys = "x"\n', "cloud.auth.keys"),
        ('[cloud.auth]\nkeys = [{access_key_id = "EDGEKEY0000000000001"}]\n', "keys[0]"),
        (
            '[cloud.auth]\nkeys = [{access_key_id = "short", secret_access_key_file = "f"}]\n',
            "keys[0].access_key_id",
        ),
        (
            (
                "[cloud.auth]\nkeys = ["
                '{access_key_id = "EDGEKEY0000000000001", secret_access_key_file = "a"},'
                '{access_key_id = "EDGEKEY0000000000001", secret_access_key_file = "b"}]\n'
            ),
            "keys[1].access_key_id",
        ),
    ],
)
def test_bad_serve_keys_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    """A wrong listen address, half a TLS pair or a bad key entry is an error naming it."""
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        config(tmp_path, text)


def test_the_example_documents_the_serve_keys() -> None:
    """cloud.example.toml shows listen and [cloud.auth], and parses."""
    text = (REPO / "cloud.example.toml").read_text()
    for key in ("listen", "tls_cert_file", "tls_key_file", "[cloud.auth]", "access_key_id"):
        assert key in text
    assert load_cloud_config(REPO / "cloud.example.toml").cloud.serve.port == 8443


def test_database_is_a_path_or_a_postgresql_url_with_its_password_in_a_file(
    tmp_path: Path,
) -> None:
    """A path stays a path; a URL keeps its query string; the password file resolves."""
    assert config(tmp_path, '[cloud]\ndatabase = "db/cloud.db"\n').cloud.database == (
        tmp_path / "db" / "cloud.db"
    )
    url = "postgresql://edge@db.example.com:5432/edge?sslmode=verify-full"
    cloud = config(tmp_path, f'[cloud]\ndatabase = "{url}"\ndatabase_password_file = "pw"\n').cloud
    assert cloud.database == url
    assert cloud.database_password_file == tmp_path / "pw"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            'database = "postgresql://edge:hunter2@db:5432/edge"',
            "must not carry a password; put it in database_password_file",
        ),
        ('database = "postgresql://edge@db:5432/"', "must name a database"),
        ('database = "postgresql:///edge"', "must name a host"),
        ('database_password_file = "pw"', "goes with a postgresql:// database URL"),
    ],
)
def test_a_wrong_database_setting_is_one_error_naming_the_key(
    tmp_path: Path, text: str, problem: str
) -> None:
    """A password inside the URL is refused (the URL is shown in errors), without echoing it."""
    with pytest.raises(ConfigError, match=problem) as raised:
        config(tmp_path, f"[cloud]\n{text}\n")
    assert "hunter2" not in str(raised.value)
