# SPDX-License-Identifier: Apache-2.0
"""Short-lived AWS credentials from the AWS IoT credentials provider (`[aws] credentials = "iot"`).

A Greengrass V1 core never held long-lived AWS keys: it exchanged its X.509 certificate for
temporary credentials. The AWS IoT credentials provider does the same for any thing: a GET of
`https://{endpoint}/role-aliases/{alias}/credentials` over mutual TLS, with the thing's name in
`x-amzn-iot-thingname`, answers credentials of the IAM role the alias names, valid for up to
the role's session length. `IotCredentialProvider.credentials` keeps the last set in the core's
memory and exchanges again when it is within `REFRESH_AHEAD` of expiring (botocore's own
advisory window), so one exchange serves every fetch of that window. The fetch process
(`edge.secrets.fetcher`) gets them over its stdin pipe, never in its environment or argv,
which other processes may read in /proc. They are never written, never logged.

This module imports no botocore: it runs in the long-lived core.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Final

import aiohttp

from edge.config import IotCredentialSettings
from edge.errors import ConfigError, IotCredentialsError
from edge.mqtt.token_key import load_token_client_key
from edge.secrets.keyref import TokenKeyRef

#: One exchange's deadline: the provider answers in well under a second when it is reachable.
EXCHANGE_TIMEOUT_SECONDS = 15.0
#: Bytes of the provider's answer read at most (a real one is under 2 KB).
MAX_ANSWER_BYTES = 64 * 1024
#: Exchange again when the credentials held expire within this (botocore's advisory refresh).
REFRESH_AHEAD: Final = timedelta(minutes=15)


class IotCredentialProvider:
    """Exchanges the thing's certificate for credentials and keeps the last set in memory."""

    def __init__(self, settings: IotCredentialSettings) -> None:
        self._settings = settings
        endpoint = settings.endpoint.rstrip("/")
        self._url = f"{endpoint}/role-aliases/{settings.role_alias}/credentials"
        #: Exchanges made so far (each one a TLS handshake with the thing's certificate).
        self.exchanges = 0
        self._held: dict[str, str] | None = None
        self._lock = asyncio.Lock()

    async def credentials(self) -> dict[str, str]:
        """Credentials valid for at least `REFRESH_AHEAD`, exchanging for new ones if needed.

        Returns:
            `access_key`, `secret_key`, `token` and `expiry_time` (ISO 8601).

        Raises:
            IotCredentialsError: The exchange failed; the message says how to fix it.
        """
        async with self._lock:
            held = self._held
            if held is None or _expires_within(held["expiry_time"], REFRESH_AHEAD):
                held = self._held = await self.exchange()
            return held

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


def _expires_within(expiry_time: str, window: timedelta) -> bool:
    """Whether an ISO 8601 expiry falls within `window` from now (unparsable: expired)."""
    try:
        expiry = datetime.fromisoformat(expiry_time)
    except ValueError:
        return True
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=UTC)
    return expiry - datetime.now(UTC) < window
