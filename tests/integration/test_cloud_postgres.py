"""The control plane on PostgreSQL: `edge cloud migrate`, password files, a server restart."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from botocore.exceptions import ClientError

from edge.fixtures.core import edge_cli
from edge.fixtures.services import TEST_REGION, Mosquitto, MotoServer
from tests.integration import test_cloud
from tests.integration.test_cloud import Cloud
from tests.integration.test_cloud_serve import (
    Served,
    free_port,
    start_service,
    write_serve_config,
)
from tests.support.controlplane import dump_tables, open_configured
from tests.support.postgres import private_cluster, with_database

pytestmark = pytest.mark.network

#: test_cloud's control plane and core, shared as a fixture.
cloud = test_cloud.cloud


def serve_on(root: Path, broker: Mosquitto, moto: MotoServer, database: str, **keys: str) -> Any:
    """Write a serve config on `database` (extra [cloud] keys too), start it; (service, client)."""
    root.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(30)
    secret_file = root / "operator.secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    port = free_port()
    extra = "\n".join(f'{key} = "{value}"' for key, value in keys.items())
    config = write_serve_config(root, broker=broker, moto=moto, port=port, database=database)
    text = config.read_text().replace("[cloud]\n", f"[cloud]\n{extra}\n", 1)
    config.write_text(text)
    assert edge_cli("cloud", "--config", str(config), "init").returncode == 0
    service = start_service(root, config, port)
    client = Served(root, config, f"http://127.0.0.1:{port}", secret, service, sm=None).client()
    return service, client, config


def answer(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


@pytest.mark.parametrize("cloud_database", ["sqlite"], indirect=True)
def test_migrate_copies_a_sqlite_control_plane_that_serve_then_answers_from_postgresql(
    cloud: Cloud, broker: Mosquitto, moto: MotoServer, postgres_url: str
) -> None:
    """Groups, versions, deployments, statuses and tags made by the CLI on SQLite move whole.

    `edge cloud serve` on the PostgreSQL copy answers what the CLI answered on the file; a
    second migrate into the now non-empty database is refused and changes nothing.
    """
    secret_arn, _ = cloud.create_secret("migrated")
    resources = {
        "Resources": [
            {
                "Id": "r1",
                "Name": "migrated",
                "ResourceDataContainer": {"SecretsManagerSecretResourceData": {"ARN": secret_arn}},
            }
        ]
    }
    resource = cloud.json(
        "create-resource-definition", "--name", "r", "--initial-version", json.dumps(resources)
    )["LatestVersionArn"]
    group_id, _ = cloud.group(core=cloud.core_definition(), resource=resource)
    deployment_id, result = cloud.deploy(group_id)
    assert result.returncode == 0, result.stderr
    group_arn = cloud.json("get-group", "--group-id", group_id)["Arn"]
    cloud.run("tag-resource", "--resource-arn", group_arn, "--tags", '{"team": "ops"}')
    on_sqlite = {
        "group": cloud.json("get-group", "--group-id", group_id),
        "versions": cloud.json("list-group-versions", "--group-id", group_id),
        "deployments": cloud.json("list-deployments", "--group-id", group_id),
        "status": cloud.status(group_id, deployment_id),
        "tags": cloud.json("list-tags-for-resource", "--resource-arn", group_arn),
    }
    assert on_sqlite["status"]["DeploymentStatus"] == "Success"

    source = cloud.root / "cloud" / "edge-cloud.db"
    moved = cloud.run("migrate", "--from", str(source), "--to", postgres_url)
    assert "deployments: 1 rows" in moved.stderr
    assert "groups: 1 rows" in moved.stderr
    with open_configured(cloud.config) as sqlite_db:
        before = dump_tables(sqlite_db)

    service, client, config = serve_on(cloud.root / "pg", broker, moto, postgres_url)
    try:
        with open_configured(config) as pg_db:
            assert dump_tables(pg_db) == before
        on_postgresql = {
            "group": answer(client.get_group(GroupId=group_id)),
            "versions": answer(client.list_group_versions(GroupId=group_id)),
            "deployments": answer(client.list_deployments(GroupId=group_id)),
            "status": answer(
                client.get_deployment_status(GroupId=group_id, DeploymentId=deployment_id)
            ),
            "tags": answer(client.list_tags_for_resource(ResourceArn=group_arn)),
        }
    finally:
        assert service.stop() == 0
    assert on_postgresql == on_sqlite

    again = cloud.run("migrate", "--from", str(source), "--to", postgres_url, check=False)
    assert again.returncode == 2
    assert "already holds a control plane" in again.stderr
    with open_configured(config) as pg_db:
        assert dump_tables(pg_db) == before


def test_a_password_file_is_checked_and_a_restart_answers_503_then_recovers(
    tmp_path: Path, broker: Mosquitto, moto: MotoServer
) -> None:
    """A password file and a server restart, on a private cluster with password auth.

    The password file works; a readable one or a wrong password is refused without showing it;
    while the server restarts the API answers 503 ServiceUnavailable, then recovers.
    """
    password = secrets.token_urlsafe(18)
    with private_cluster(password=password) as cluster:
        url = with_database(cluster.url, "edge")
        with psycopg.connect(cluster.url, password=password, autocommit=True) as conn:
            conn.execute("CREATE DATABASE edge")
        password_file = tmp_path / "db.password"
        password_file.write_text(password + "\n")
        password_file.chmod(0o644)
        config = tmp_path / "cli" / "cloud.toml"
        config.parent.mkdir()
        config.write_text(
            f'[cloud]\ndatabase = "{url}"\ndatabase_password_file = "{password_file}"\n'
            f'[aws]\nregion = "{TEST_REGION}"\n'
        )
        refused = edge_cli("cloud", "--config", str(config), "list-groups")
        assert refused.returncode == 2
        assert "chmod 0600" in refused.stderr
        wrong = tmp_path / "wrong.password"
        wrong.write_text("not-the-password\n")
        wrong.chmod(0o600)
        config.write_text(config.read_text().replace(str(password_file), str(wrong)))
        failed = edge_cli("cloud", "--config", str(config), "list-groups")
        assert failed.returncode == 2
        assert "password authentication failed" in failed.stderr
        assert "not-the-password" not in failed.stderr
        password_file.chmod(0o600)

        service, client, _ = serve_on(
            tmp_path / "serve",
            broker,
            moto,
            url,
            database_password_file=str(password_file),
        )
        try:
            group_id = client.create_group(Name="before")["Id"]
            cluster.stop()
            with pytest.raises(ClientError) as raised:
                client.get_group(GroupId=group_id)
            assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert raised.value.response["Error"]["Code"] == "ServiceUnavailable"
            cluster.start()
            assert wait_for_group(client, group_id)["Name"] == "before"
            assert client.create_group(Name="after")["Name"] == "after"
        finally:
            assert service.stop() == 0
        log = service.log_text()
        assert password not in log
        assert password not in refused.stderr + failed.stderr


def wait_for_group(client: Any, group_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """GetGroup until the database answers again (503 meanwhile); bounded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return answer(client.get_group(GroupId=group_id))
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ServiceUnavailable" or (
                time.monotonic() > deadline
            ):
                raise
        time.sleep(0.2)
