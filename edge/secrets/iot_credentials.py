# SPDX-License-Identifier: Apache-2.0
"""Short-lived AWS credentials from the AWS IoT credentials provider (`[aws] credentials = "iot"`).

A Greengrass V1 core never held long-lived AWS keys: it exchanged its X.509 certificate for
temporary credentials. The AWS IoT credentials provider does the same for any thing: a GET of
`https://{endpoint}/role-aliases/{alias}/credentials` over mutual TLS, with the thing's name in
`x-amzn-iot-thingname`, answers credentials of the IAM role the alias names, valid for up to
the role's session length. `iot_session` gives aiobotocore a session whose only credential
source is that exchange, wrapped in botocore's refreshable credentials, so they are renewed
before they expire (botocore refreshes 15 minutes ahead, and must 10 minutes ahead). They live
in the core's memory only: never written, never logged.
"""

from __future__ import annotations

import json
import logging
import ssl
from datetime import UTC, datetime
from http import HTTPStatus

import aiohttp
from aiobotocore.credentials import AioCredentialResolver, AioRefreshableCredentials
from aiobotocore.session import AioSession, get_session
from botocore.credentials import CredentialProvider

from edge.config import IotCredentialSettings
from edge.errors import ConfigError, IotCredentialsError
from edge.mqtt.token_key import load_token_client_key
from edge.secrets.keyref import TokenKeyRef

#: One exchange's deadline: the provider answers in well under a second when it is reachable.
EXCHANGE_TIMEOUT_SECONDS = 15.0
#: Bytes of the provider's answer read at most (a real one is under 2 KB).
MAX_ANSWER_BYTES = 64 * 1024


class IotCredentialProvider(CredentialProvider):  # type: ignore[misc] # botocore is untyped
    """A botocore credential provider that exchanges the thing's certificate for credentials."""

    METHOD = "iot-credentials-provider"
    CANONICAL_NAME = "IotCredentialsProvider"

    def __init__(self, settings: IotCredentialSettings) -> None:
        super().__init__()
        self._settings = settings
        endpoint = settings.endpoint.rstrip("/")
        self._url = f"{endpoint}/role-aliases/{settings.role_alias}/credentials"
        #: Exchanges made so far (each one a TLS handshake with the thing's certificate).
        self.exchanges = 0

    def _tls(self) -> ssl.SSLContext:
        s = self._settings
        context = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        if isinstance(s.key_file, TokenKeyRef):
            try:
                load_token_client_key(context, s.cert_file, s.key_file, setting="[aws] iot key")
            except ConfigError as exc:
                raise IotCredentialsError(str(exc)) from None
            return context
        try:
            context.load_cert_chain(str(s.cert_file), str(s.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise IotCredentialsError(
                f"the certificate {s.cert_file} or its key {s.key_file} can't be loaded "
                f"({exc.__class__.__name__}); check [aws] iot_cert_file and iot_key_file "
                "(by default [mqtt] cert_file and key_file)"
            ) from None
        return context

    async def exchange(self) -> dict[str, str]:
        """One GET of the provider; botocore's credential metadata, or a clear error."""
        s = self._settings
        self.exchanges += 1
        timeout = aiohttp.ClientTimeout(total=EXCHANGE_TIMEOUT_SECONDS)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(
                    self._url,
                    headers={"x-amzn-iot-thingname": s.thing_name},
                    ssl=self._tls(),
                    allow_redirects=False,
                ) as response,
            ):
                body = await response.content.read(MAX_ANSWER_BYTES)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise IotCredentialsError(
                f"the credentials provider {s.endpoint} can't be reached or refused the TLS "
                f"handshake ({exc.__class__.__name__}): check [aws] iot_credentials_endpoint "
                "(`aws iot describe-endpoint --endpoint-type iot:CredentialProvider`) and that "
                "the certificate is active"
            ) from None
        return self._metadata(status, body)

    def _metadata(self, status: int, body: bytes) -> dict[str, str]:
        s = self._settings
        if status in {401, 403}:
            raise IotCredentialsError(
                f"the credentials provider refused the certificate {s.cert_file} for thing "
                f"{s.thing_name} (HTTP {status}): it is revoked or inactive, not attached to the "
                "thing, or its policy lacks iot:AssumeRoleWithCertificate on role alias "
                f"{s.role_alias}"
            )
        if status == HTTPStatus.NOT_FOUND:
            raise IotCredentialsError(
                f"role alias {s.role_alias} does not exist at {s.endpoint}: create it with "
                "`aws iot create-role-alias`, or fix [aws] role_alias"
            )
        if status != HTTPStatus.OK:
            raise IotCredentialsError(f"the credentials provider answered HTTP {status}")
        try:
            credentials = json.loads(body)["credentials"]
            return {
                "access_key": str(credentials["accessKeyId"]),
                "secret_key": str(credentials["secretAccessKey"]),
                "token": str(credentials["sessionToken"]),
                "expiry_time": str(credentials["expiration"]),
            }
        except (ValueError, KeyError, TypeError):
            # The answer holds credentials: never quote it.
            raise IotCredentialsError(
                "the credentials provider's answer is not the documented JSON"
            ) from None

    async def load(self) -> AioRefreshableCredentials:
        """Botocore's entry point: credentials that make their first exchange when first used.

        aiobotocore loads credentials when a client is created, which the core does at start.
        An already expired placeholder defers the exchange to the first request, so a core
        that starts offline still serves its store, and a refused certificate fails the
        deployment that needed AWS, with the reason, instead of the start.
        """
        return AioRefreshableCredentials(
            access_key="",
            secret_key="",
            token="",
            expiry_time=datetime.fromtimestamp(0, UTC),
            refresh_using=self.exchange,
            method=self.METHOD,
        )


def aws_session(iot: IotCredentialSettings | None) -> AioSession:
    """An aiobotocore session: botocore's usual credential chain, or only the IoT exchange."""
    session = get_session()
    if iot is not None:
        # aiobotocore logs every failed refresh with a traceback before re-raising it; the
        # core reports the same IotCredentialsError, with its fix, where it matters (the
        # deployment or refresh that needed AWS), so the traceback would only repeat it.
        logging.getLogger("aiobotocore.credentials").setLevel(logging.ERROR)
        session.register_component(
            "credential_provider", AioCredentialResolver([IotCredentialProvider(iot)])
        )
    return session
