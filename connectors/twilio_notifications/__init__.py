# SPDX-License-Identifier: Apache-2.0
"""Twilio Notifications: text messages and phone calls through Twilio's REST API (V1's shape).

The manifest below is all the core reads; the worker's code is `connector.py`.
"""

from __future__ import annotations

from connectors.schema import ISOLATION_MODES, ConnectorManifest, Parameter

#: Twilio numbers are E.164: a plus sign and up to 15 digits, the first not zero.
PHONE_NUMBER = r"\+[1-9][0-9]{1,14}"

MANIFEST = ConnectorManifest(
    name="TwilioNotifications",
    versions=(1, 2, 3, 4, 5),
    handler="connector.function_handler",
    # Measured: ~24 MB resident with the SDK, urllib and a TLS context loaded (python -S);
    # the rest is headroom for TLS sessions and responses.
    memory_kb=40960,
    # One message may be retried (`retries`, at most 5) with backoff; the connector stops
    # retrying when less than one attempt's worth of this is left, so it always answers.
    timeout_seconds=60,
    parameters=(
        Parameter(
            "TWILIO_ACCOUNT_SID",
            required=True,
            pattern=r"[A-Za-z0-9]+",
            description="The Twilio account SID (the basic-auth user and part of the URL).",
        ),
        Parameter(
            "TwilioAuthTokenSecretArn",
            required=True,
            secret=True,
            description="ARN of the secret holding the Twilio auth token (a SecretString).",
        ),
        Parameter(
            "DefaultFromPhoneNumber",
            pattern=f"|{PHONE_NUMBER}",
            description="The sender when a request has no from_number.",
        ),
        Parameter(
            "IsolationMode",
            choices=ISOLATION_MODES,
            description="Accepted for V1 compatibility; connectors always run as a worker.",
        ),
        Parameter(
            "TwilioBaseUrl",
            # https, or http to this device only (a test double): the auth token rides along.
            pattern=(
                r"https://[^\s/?#@]+(/[^\s?#]*)?"
                r"|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]{1,5})?(/[^\s?#]*)?"
            ),
            description="Twilio's API root (default https://api.twilio.com); an edge extension.",
        ),
    ),
    input_topics=("twilio/txt", "twilio/call"),
    output_topics=("twilio/message/status",),
)
