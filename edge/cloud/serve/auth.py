# SPDX-License-Identifier: Apache-2.0
"""AWS Signature Version 4 verification: who may call the API, checked on every request.

The canonical request is rebuilt with botocore's own signer (`botocore.auth.SigV4Auth`), the
code that signed the request on the client's side, from what arrived: the method, the path and
query string exactly as sent, the headers the client listed in `SignedHeaders` (and only those),
the body, and the client's `X-Amz-Date`. Only the comparison is ours, in constant time. Writing
the canonicalisation out by hand would be a second implementation to drift from the first.

What is refused, with the codes AWS answers (botocore reads them from `x-amzn-ErrorType`):

* no `Authorization` header: 403 `MissingAuthenticationTokenException`;
* a header that isn't SigV4, or lacks a part: 400 `IncompleteSignatureException`;
* an access key id not in `[cloud.auth] keys`, or a session token: 403
  `UnrecognizedClientException`;
* a scope for another service or region, or another day than `X-Amz-Date`; an `X-Amz-Date` more
  than 5 minutes from now ("Signature expired"); a signature that doesn't match (another secret
  key, or a byte changed): 403 `InvalidSignatureException`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from edge.cloud.config import AccessKey
from edge.cloud.serve.errors import ApiError
from edge.errors import ConfigError
from edge.fsutil import read_private_file

ALGORITHM: Final = "AWS4-HMAC-SHA256"
#: How far a request's X-Amz-Date may be from the service's clock: AWS's own window. It bounds
#: how long a captured request can be replayed, and tolerates ordinary clock drift.
MAX_SKEW: Final = timedelta(minutes=5)
#: `X-Amz-Date`'s format (ISO 8601 basic, UTC).
AMZ_DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
#: A secret access key file holds one line; AWS's are 40 characters.
_MAX_SECRET_FILE_BYTES: Final = 4096
_SIGNATURE: Final = re.compile(r"[0-9a-f]{64}")
_AMZ_DATE: Final = re.compile(r"[0-9]{8}T[0-9]{6}Z")

MISMATCH_MESSAGE: Final = (
    "The request signature we calculated does not match the signature you provided. Check your "
    "AWS Secret Access Key and signing method. Consult the service documentation for details."
)


def missing_token() -> ApiError:
    """403 MissingAuthenticationTokenException: the request is not signed at all."""
    return ApiError(403, "MissingAuthenticationTokenException", "Missing Authentication Token")


def _incomplete(message: str) -> ApiError:
    return ApiError(400, "IncompleteSignatureException", message)


def _invalid(message: str) -> ApiError:
    return ApiError(403, "InvalidSignatureException", message)


def _unrecognized(detail: str) -> ApiError:
    return ApiError(
        403,
        "UnrecognizedClientException",
        f"The security token included in the request is invalid. ({detail})",
    )


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request as it arrived, before anything is decoded."""

    method: str
    #: The path exactly as sent (percent-encoded), without the query string.
    path: str
    #: The query string exactly as sent, without the "?".
    query: str
    #: Every header as sent, repeated ones included, in order.
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header_values(self, name: str) -> list[str]:
        """Every value of a header (case-insensitive)."""
        lower = name.lower()
        return [value for key, value in self.headers if key.lower() == lower]


@dataclass(frozen=True, slots=True)
class _Authorization:
    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


@dataclass(frozen=True, slots=True)
class Authorized:
    """A request whose Authorization header passed every check that needs no body."""

    access_key_id: str
    #: The hex signature the client sent: what identifies this exact signed request.
    signature: str
    #: When the signature stops being accepted (X-Amz-Date + the window).
    expires_at: datetime
    #: What the signature is checked with; out of the repr, which must never show a secret.
    parsed: _Authorization = field(repr=False)
    secret: str = field(repr=False)
    amz_date: str = field(repr=False)


class _Recomputer(SigV4Auth):  # type: ignore[misc] # botocore has no type hints
    """botocore's SigV4 signer, canonicalising exactly the headers the client signed.

    botocore's signer leaves a few headers out when *it* signs (User-Agent, Expect, ...);
    other SDKs sign some of them (the Java SDK signs User-Agent). The client's SignedHeaders
    list is what counts, so every header given here is used.
    """

    def headers_to_sign(self, request: Any) -> Any:  # noqa: ANN401 - botocore types
        """All of the request's headers, lower-cased, repeated ones kept."""
        signed = type(request.headers)()
        for name, value in request.headers.items():
            signed[name.lower()] = value
        return signed


class Verifier:
    """Checks SigV4 signatures against the configured keys."""

    def __init__(
        self,
        *,
        keys: dict[str, str],
        region: str,
        service: str = "greengrass",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._keys = keys
        self._region = region
        self._service = service
        self._clock = clock

    def verify(self, request: SignedRequest) -> str:
        """Return the access key id that signed `request` (`authorize`, then `check_signature`).

        Raises:
            ApiError: The request is unsigned, malformed, signed by an unknown key, too old or
                too new, or its signature does not match (see the module's table).
        """
        authorized = self.authorize(request)
        self.check_signature(request, authorized)
        return authorized.access_key_id

    def authorize(self, request: SignedRequest) -> Authorized:
        """Check everything but the signature itself: what can be judged before the body.

        The `Authorization` header's form, the access key id (one of ours), `X-Amz-Date`
        (within the window) and the credential scope (this service and region). A request that
        fails here is refused before a byte of its body is read, so a client with no key can
        make the service hold nothing but the request head.

        Raises:
            ApiError: As `verify`, except for a signature that does not match.
        """
        values = request.header_values("authorization")
        if not values:
            raise missing_token()
        if len(values) > 1:
            raise _incomplete("Only one Authorization header is allowed.")
        auth = _parse_authorization(values[0])
        amz_date, moment = self._check_date(request, auth)
        secret = self._keys.get(auth.access_key_id)
        if secret is None:
            raise _unrecognized(f"access key id {auth.access_key_id!r} is not one of this service")
        if request.header_values("x-amz-security-token"):
            raise _unrecognized(
                "session tokens are not accepted: sign with an access key of [cloud.auth] keys"
            )
        self._check_scope(auth)
        missing = [h for h in auth.signed_headers if not request.header_values(h)]
        if missing:
            raise _invalid(f"Signed header {missing[0]!r} is not in the request.")
        return Authorized(
            access_key_id=auth.access_key_id,
            signature=auth.signature,
            expires_at=moment + MAX_SKEW,
            parsed=auth,
            secret=secret,
            amz_date=amz_date,
        )

    def check_signature(self, request: SignedRequest, authorized: Authorized) -> None:
        """Check the signature over the whole request, body included.

        Raises:
            ApiError: 403 InvalidSignatureException: it does not match (another secret key, or
                a signed byte changed), or X-Amz-Content-SHA256 is not the body's hash.
        """
        auth = authorized.parsed
        self._check_content_sha256(request, auth)
        expected = _expected_signature(request, auth, authorized.secret, authorized.amz_date)
        if not hmac.compare_digest(expected.encode(), auth.signature.encode()):
            raise _invalid(MISMATCH_MESSAGE)

    def _check_date(self, request: SignedRequest, auth: _Authorization) -> tuple[str, datetime]:
        dates = request.header_values("x-amz-date")
        if not dates:
            raise _incomplete(
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' "
                "header (this service reads X-Amz-Date)."
            )
        amz_date = dates[-1].strip()
        moment = _parse_amz_date(amz_date)
        if "x-amz-date" not in auth.signed_headers:
            raise _invalid("X-Amz-Date must be among the SignedHeaders.")
        now = self._clock()
        if moment < now - MAX_SKEW:
            raise _invalid(
                f"Signature expired: {amz_date} is now earlier than "
                f"{_fmt(now - MAX_SKEW)} ({_fmt(now)} - 5 min.)"
            )
        if moment > now + MAX_SKEW:
            raise _invalid(
                f"Signature not yet current: {amz_date} is still later than "
                f"{_fmt(now + MAX_SKEW)} ({_fmt(now)} + 5 min.)"
            )
        if auth.date != amz_date[:8]:
            raise _invalid(
                f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of "
                f"date from HTTP: '{auth.date}' != '{amz_date[:8]}', from 'X-Amz-Date'."
            )
        return amz_date, moment

    def _check_scope(self, auth: _Authorization) -> None:
        if auth.service != self._service:
            raise _invalid(f"Credential should be scoped to correct service: '{self._service}'.")
        if auth.region != self._region:
            raise _invalid(
                f"Credential should be scoped to a valid region, not '{auth.region}' "
                f"(this service's region is '{self._region}')."
            )

    @staticmethod
    def _check_content_sha256(request: SignedRequest, auth: _Authorization) -> None:
        # botocore's canonical request trusts an X-Amz-Content-SHA256 header in place of the
        # body's hash (S3 streams bodies that way); here the body is in hand, so the header
        # must be its true hash, or a changed body would pass with the original header.
        if "x-amz-content-sha256" not in auth.signed_headers:
            return
        claimed = request.header_values("x-amz-content-sha256")[-1].strip()
        if claimed != hashlib.sha256(request.body).hexdigest():
            raise _invalid(
                "The provided 'x-amz-content-sha256' header does not match what was computed."
            )


def _parse_authorization(value: str) -> _Authorization:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _incomplete(f"Unsupported Authorization Type: only {ALGORITHM} is accepted.")
    parts: dict[str, str] = {}
    for piece in rest.split(","):
        key, sep, part = piece.strip().partition("=")
        if sep:
            parts[key] = part
    for required in ("Credential", "SignedHeaders", "Signature"):
        if not parts.get(required):
            raise _incomplete(f"Authorization header requires '{required}' parameter.")
    scope = parts["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope):  # noqa: PLR2004
        raise _incomplete(
            "Credential must have the form ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request."
        )
    signed = tuple(parts["SignedHeaders"].split(";"))
    if "host" not in signed:
        raise _incomplete("The host header must be among the SignedHeaders.")
    if _SIGNATURE.fullmatch(parts["Signature"]) is None:
        raise _incomplete("Signature must be 64 lower-case hexadecimal characters.")
    return _Authorization(
        access_key_id=scope[0],
        date=scope[1],
        region=scope[2],
        service=scope[3],
        signed_headers=signed,
        signature=parts["Signature"],
    )


def _expected_signature(
    request: SignedRequest, auth: _Authorization, secret: str, amz_date: str
) -> str:
    """The signature the client would have computed with this secret key, by botocore."""
    url = f"https://signed.invalid{request.path}"
    if request.query:
        url += f"?{request.query}"
    rebuilt = AWSRequest(method=request.method, url=url, data=request.body)
    for name in auth.signed_headers:
        for value in request.header_values(name):
            # HTTPHeaders appends: repeated headers stay repeated, as the client signed them.
            rebuilt.headers[name] = value
    signer = _Recomputer(Credentials(auth.access_key_id, secret), auth.service, auth.region)
    rebuilt.context["timestamp"] = amz_date
    headers = signer.headers_to_sign(rebuilt)
    if signer.signed_headers(headers) != ";".join(auth.signed_headers):
        # Not in canonical order (sorted, lower case): no conforming signer sends that.
        raise _invalid(MISMATCH_MESSAGE)
    canonical = signer.canonical_request(rebuilt)
    signature: str = signer.signature(signer.string_to_sign(rebuilt, canonical), rebuilt)
    return signature


def _parse_amz_date(text: str) -> datetime:
    problem = _incomplete(f"X-Amz-Date {text!r} is not YYYYMMDDTHHMMSSZ.")
    if _AMZ_DATE.fullmatch(text) is None:
        raise problem
    try:
        return datetime.strptime(text, AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise problem from None


def _fmt(moment: datetime) -> str:
    return moment.strftime(AMZ_DATE_FORMAT)


def load_secret_keys(keys: Iterable[AccessKey], *, config_path: str) -> dict[str, str]:
    """Read each key's secret access key file: one line, and mode 0600 like every key file.

    Returns:
        Secret access keys by access key id. Never logged, never shown.

    Raises:
        InsecurePermissionsError: A file is readable or writable by other users.
        ConfigError: A file is missing, unreadable, empty or not one line of text.
    """
    secrets: dict[str, str] = {}
    for key in keys:
        where = f"cloud.auth.keys ({key.access_key_id})"
        try:
            data = read_private_file(key.secret_access_key_file, max_size=_MAX_SECRET_FILE_BYTES)
        except FileNotFoundError:
            raise ConfigError(
                config_path, f"{key.secret_access_key_file} does not exist", key=where
            ) from None
        except OSError as exc:
            raise ConfigError(
                config_path,
                f"{key.secret_access_key_file} can't be read: {exc.strerror or exc}",
                key=where,
            ) from None
        try:
            secret = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            secret = ""
        if not secret or any(ch.isspace() for ch in secret):
            # Say nothing about the content: it is a secret, even when it is a wrong one.
            raise ConfigError(
                config_path,
                f"{key.secret_access_key_file} must hold the secret access key on one line",
                key=where,
            )
        secrets[key.access_key_id] = secret
    return secrets
