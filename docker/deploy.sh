#!/bin/sh
# The control plane's one-shot job in docker/compose.yaml, once both cores are up: a secret in
# Secrets Manager (moto) with the extra labels Label1 and Label2, the reference document's
# resource and function definitions, its handler published with the unmodified greengrasssdk,
# then for each core a core definition, a group and a deployment, waited for.
set -eu
cloud() { edge cloud --config /etc/edge/cloud.toml "$@"; }
field() { python -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
function_arn="arn:aws:lambda:us-west-2:123456789012:function:myFunction:1"
work=$(mktemp -d)

echo "cloud-deploy: creating greengrass-SomeSecret in Secrets Manager"
python - "$work" <<'PY'
import secrets
import sys
import time
from pathlib import Path

import botocore.session
from botocore.exceptions import ClientError, EndpointConnectionError

from edge.fixtures.reference import DEMO_FUNCTIONS, REFERENCE_ARN, REFERENCE_RESOURCES
from edge.fixtures.reference import build_function_package

work = Path(sys.argv[1])
sm = botocore.session.get_session().create_client(
    "secretsmanager", endpoint_url="http://moto:5000"
)
for _ in range(60):  # moto may still be starting
    try:
        arn = sm.create_secret(
            Name="greengrass-SomeSecret", SecretString=secrets.token_urlsafe(24)
        )["ARN"]
        sm.put_secret_value(
            SecretId=arn,
            SecretString=secrets.token_urlsafe(24),
            VersionStages=["Label1", "Label2"],
        )
        break
    except EndpointConnectionError:
        time.sleep(1)
    except ClientError as exc:  # a second `up`: the secret is there already
        if exc.response["Error"]["Code"] != "ResourceExistsException":
            raise
        arn = sm.describe_secret(SecretId="greengrass-SomeSecret")["ARN"]
        break
else:
    sys.exit("cloud-deploy: moto's server did not answer within 60 s")
(work / "resources.json").write_text(REFERENCE_RESOURCES.replace(REFERENCE_ARN, arn))
(work / "functions.json").write_text(DEMO_FUNCTIONS)
build_function_package(work / "app.zip")
PY

resources=$(cloud create-resource-definition --name MyGreengrassResources \
    --initial-version "file://$work/resources.json" | field LatestVersionArn)
functions=$(cloud create-function-definition --name MyGreengrassFunctions \
    --initial-version "file://$work/functions.json" | field LatestVersionArn)
cloud publish-function --function-arn "$function_arn" --zip-file "fileb://$work/app.zip" \
    --handler app.function_handler >/dev/null

for thing in core-1 core-2; do
    cat >"$work/$thing.json" <<JSON
{"Cores": [{"Id": "$thing", "ThingArn": "arn:aws:iot:us-west-2:123456789012:thing/$thing",
            "CertificateArn": "arn:aws:iot:us-west-2:123456789012:cert/$thing",
            "SyncShadow": false}]}
JSON
    cores=$(cloud create-core-definition --name "$thing" \
        --initial-version "file://$work/$thing.json" | field LatestVersionArn)
    group=$(cloud create-group --name "fleet-$thing" | field Id)
    cloud create-group-version --group-id "$group" --core-definition-version-arn "$cores" \
        --resource-definition-version-arn "$resources" \
        --function-definition-version-arn "$functions" >/dev/null
    echo "cloud-deploy: deploying group fleet-$thing ($group) to $thing"
    cloud create-deployment --group-id "$group" --deployment-type NewDeployment \
        --wait --timeout 120 >/dev/null
done
echo "cloud-deploy: done. Try:"
echo "  docker compose -f docker/compose.yaml exec core-1 edge secrets list --config /etc/edge/core.toml"
echo "  docker compose -f docker/compose.yaml exec core-2 edge invoke --config /etc/edge/core.toml \\"
echo "      --function-arn $function_arn --payload '{}'"
