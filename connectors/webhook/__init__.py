# SPDX-License-Identifier: Apache-2.0
"""Webhook: POST messages as JSON to a URL, with a bearer token read from a secret resource.

An edge connector (no V1 counterpart) that shows the framework isn't Twilio-shaped. The
manifest below is all the core reads; the worker's code is `connector.py`.
"""

from __future__ import annotations

from connectors.schema import ISOLATION_MODES, ConnectorManifest, Parameter

MANIFEST = ConnectorManifest(
    name="Webhook",
    versions=(1,),
    handler="connector.function_handler",
    # The same footprint as Twilio Notifications: the SDK, urllib and TLS (~24 MB measured).
    memory_kb=40960,
    timeout_seconds=60,
    parameters=(
        Parameter(
            "WebhookUrl",
            required=True,
            pattern=r"https?://[^\s/?#@]+([/?][^\s#]*)?",
            description="Where messages are POSTed; http:// sends the token in clear text.",
        ),
        Parameter(
            "BearerTokenSecretArn",
            required=True,
            secret=True,
            description="ARN of the secret holding the bearer token (a SecretString).",
        ),
        Parameter("IsolationMode", choices=ISOLATION_MODES, description="Accepted, ignored."),
    ),
    input_topics=("webhook/send",),
    output_topics=("webhook/status",),
)
