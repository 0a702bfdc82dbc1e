"""Function code from AWS Lambda: moto's Lambda behind a proxy, `edge cloud`, a real core."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import boto3
import pytest

from bench.lambda_proxy import LambdaCodeProxy, lambda_proxy
from edge.cloud.lambdacode import supply_hint
from edge.fixtures.core import edge_cli
from edge.fixtures.services import TEST_REGION, MotoServer
from tests.integration import test_cloud
from tests.integration.test_cloud import Cloud, write_cloud_config
from tests.support.controlplane import open_configured
from tests.support.functions import build_package

pytestmark = pytest.mark.network

#: test_cloud's control plane and core, shared as a fixture.
cloud = test_cloud.cloud

ROLE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def create_lambda(moto: MotoServer, name: str, package: bytes) -> tuple[str, str]:
    """A function in moto's Lambda, version 1 published and alias `live` on it; (version, alias)."""
    iam = boto3.client("iam", region_name=TEST_REGION, endpoint_url=moto.url)
    role = iam.create_role(
        RoleName=f"{name}-role", AssumeRolePolicyDocument=json.dumps(ROLE_POLICY)
    )
    client = boto3.client("lambda", region_name=TEST_REGION, endpoint_url=moto.url)
    client.create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role=role["Role"]["Arn"],
        Handler="app.function_handler",
        Code={"ZipFile": package},
    )
    version = client.publish_version(FunctionName=name)
    alias = client.create_alias(FunctionName=name, Name="live", FunctionVersion=version["Version"])
    return version["FunctionArn"], alias["AliasArn"]


def function_group(cloud: Cloud, secret_arn: str, function_arns: list[str]) -> tuple[str, str]:
    """A group whose functions (by ARN) may read `MyApiKey`, a secret resource; (id, warnings).

    The warnings are what create-function-definition said on stderr.
    """
    resources = {
        "Resources": [
            {
                "Id": "MyApiKey",
                "Name": "MyApiKey",
                "ResourceDataContainer": {"SecretsManagerSecretResourceData": {"ARN": secret_arn}},
            }
        ]
    }
    functions = {
        "Functions": [
            {
                "Id": f"fn{index}",
                "FunctionArn": arn,
                "FunctionConfiguration": {
                    "Pinned": False,
                    "MemorySize": 16384,
                    "Timeout": 10,
                    "Environment": {
                        "ResourceAccessPolicies": [{"ResourceId": "MyApiKey", "Permission": "ro"}]
                    },
                },
            }
            for index, arn in enumerate(function_arns)
        ]
    }
    res = cloud.json("create-resource-definition", "--initial-version", json.dumps(resources))
    fns = cloud.run("create-function-definition", "--initial-version", json.dumps(functions))
    group_id, _ = cloud.group(
        resource=res["LatestVersionArn"],
        function=json.loads(fns.stdout)["LatestVersionArn"],
        core=cloud.core_definition(),
    )
    return group_id, fns.stderr


def refused(cloud: Cloud, group_id: str) -> str:
    """create-deployment fails before anything is published; its error line."""
    result = cloud.run(
        *("create-deployment", "--group-id", group_id, "--deployment-type", "NewDeployment"),
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    return result.stderr


def via_proxy(cloud: Cloud, moto: MotoServer, proxy: LambdaCodeProxy) -> None:
    """Point the control plane's [aws] endpoint (Lambda, S3) at the proxy in front of moto."""
    write_cloud_config(
        cloud.config,
        broker=cloud.broker,
        moto=dataclasses.replace(moto, port=proxy.port),
        database=cloud.database,
    )


def invoke(cloud: Cloud, function_arn: str, secret_id: str) -> dict[str, Any]:
    result = edge_cli(
        *("invoke", "--config", str(cloud.core_config), "--function-arn", function_arn),
        *("--payload", json.dumps({"SecretId": secret_id})),
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def test_a_lambda_hosted_function_is_fetched_stored_by_digest_and_reads_its_secret(
    cloud: Cloud, moto: MotoServer
) -> None:
    """A function that lives only in AWS Lambda deploys by alias ARN and reads its secret.

    create-deployment resolves it through GetFunction, reads the zip from Code.Location, stores
    it in the artifact bucket by digest and deploys it; the core runs it.
    """
    package_path, digest = build_package(cloud.root / "app.zip")
    package = package_path.read_bytes()
    _, alias_arn = create_lambda(moto, "lambdaReader", package)
    secret_arn, _ = cloud.create_secret("lambda-secret")
    value = cloud.values[-1]
    with lambda_proxy(moto.url) as proxy:
        proxy.add(package)
        via_proxy(cloud, moto, proxy)
        group_id, warnings = function_group(cloud, secret_arn, [alias_arn])
        assert warnings == "", "the function exists in Lambda"
        _, result = cloud.deploy(group_id)
        assert result.returncode == 0, result.stderr
        assert "Success" in result.stderr
        assert proxy.downloads == 1
    assert invoke(cloud, alias_arn, "lambda-secret")["SecretString"] == value
    s3 = boto3.client("s3", region_name=TEST_REGION, endpoint_url=moto.url)
    stored = s3.get_object(Bucket="edge-artifacts", Key=f"functions/{digest}.zip")["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == digest


def test_a_version_arn_is_kept_and_a_corrupt_download_is_refused(
    cloud: Cloud, moto: MotoServer
) -> None:
    """A version ARN is fetched once and kept; a package whose digest differs is never stored."""
    package_path, digest = build_package(cloud.root / "app.zip")
    package = package_path.read_bytes()
    version_arn, _ = create_lambda(moto, "versioned", package)
    secret_arn, _ = cloud.create_secret("versioned-secret")
    with lambda_proxy(moto.url) as proxy:
        proxy.add(package, served=package + b"tampered")
        via_proxy(cloud, moto, proxy)
        group_id, _ = function_group(cloud, secret_arn, [version_arn])
        error = refused(cloud, group_id)
        assert "has SHA-256" in error
        assert "nothing was stored" in error
        with open_configured(cloud.config) as db, db.read() as conn:
            assert conn.execute("SELECT count(*) FROM deployments").scalar() == 0
            assert conn.execute("SELECT count(*) FROM function_code").scalar() == 0

        proxy.add(package)
        _, result = cloud.deploy(group_id)
        assert result.returncode == 0, result.stderr
        _, result = cloud.deploy(group_id)
        assert result.returncode == 0, result.stderr
        assert proxy.downloads == 2, "a version's package is fetched once, then kept"
    with open_configured(cloud.config) as db, db.read() as conn:
        rows = conn.execute("SELECT function_arn, sha256 FROM function_code").fetchall()
    assert [dict(row) for row in rows] == [{"function_arn": version_arn, "sha256": digest}]


def test_a_function_that_exists_nowhere_is_warned_at_once_and_refused_at_deployment(
    cloud: Cloud,
) -> None:
    """create-function-definition warns on stderr; create-deployment fails naming both ways."""
    missing = f"arn:aws:lambda:{TEST_REGION}:123456789012:function:nowhere:3"
    secret_arn, _ = cloud.create_secret("nowhere-secret")
    group_id, warned = function_group(cloud, secret_arn, [missing])
    problem = "has no published code and AWS Lambda has no such function"
    assert f"edge: warning: function {missing}: {problem}; {supply_hint(missing, TEST_REGION)}" in (
        warned
    )
    error = refused(cloud, group_id)
    assert f"function {missing}: {problem}" in error
    assert f"edge cloud publish-function --function-arn {missing}" in error
    assert "create the function (that version or alias) in AWS Lambda" in error
