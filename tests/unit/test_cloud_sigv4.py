"""The SigV4 verifier of `edge cloud serve`: requests signed by real SDK signers, then altered."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from edge.cloud.config import AccessKey
from edge.cloud.serve.auth import SignedRequest, Verifier, load_secret_keys
from edge.cloud.serve.errors import ApiError
from edge.errors import ConfigError, InsecurePermissionsError

KEY_ID = "EDGETESTKEY000000001"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
HOST = "127.0.0.1:8443"
PATH = "/greengrass/definition/resources/0c4e4d9e-4f0c-4d1d-9a5e-2b7f1c3d5e6f/versions"
BODY = b'{"Resources": [{"Id": "r", "Name": "r"}]}'


def sign(
    *,
    method: str = "POST",
    path: str = PATH,
    query: str = "",
    body: bytes = BODY,
    key_id: str = KEY_ID,
    secret: str = SECRET,
    region: str = REGION,
    service: str = "greengrass",
    at: datetime = NOW,
    token: str | None = None,
    extra_headers: dict[str, str] | None = None,
    signer: type = SigV4Auth,
    credentials: type = Credentials,
) -> SignedRequest:
    """A request signed as botocore's client signs it, at time `at`, as the server receives it."""
    url = f"http://{HOST}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(
        method=method,
        url=url,
        data=body,
        headers={"Content-Type": "application/json", **(extra_headers or {})},
    )
    auth = signer(credentials(key_id, secret, token), service, region)
    # SigV4Auth reads the time through botocore.auth.get_current_datetime; sign "at" that time
    # by doing what add_auth does with the time fixed.
    request.context["timestamp"] = at.strftime("%Y%m%dT%H%M%SZ")
    auth._modify_request_before_signing(request)
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    auth._inject_signature_to_request(request, signature)
    headers = [("Host", HOST), *request.headers.items()]
    return SignedRequest(method=method, path=path, query=query, headers=tuple(headers), body=body)


def verifier(now: datetime = NOW) -> Verifier:
    return Verifier(keys={KEY_ID: SECRET}, region=REGION, clock=lambda: now)


def refused(request: SignedRequest, now: datetime = NOW) -> ApiError:
    with pytest.raises(ApiError) as caught:
        verifier(now).verify(request)
    return caught.value


def with_headers(request: SignedRequest, **changes: str) -> SignedRequest:
    """The request with some headers replaced (names in lower case, '_' for '-')."""
    names = {k.replace("_", "-"): v for k, v in changes.items()}
    headers = tuple(
        (k, names.get(k.lower(), v)) for k, v in request.headers if k.lower() not in names
    ) + tuple((k, v) for k, v in names.items())
    return SignedRequest(request.method, request.path, request.query, headers, request.body)


def test_a_request_signed_by_botocore_is_accepted_and_names_its_key() -> None:
    """A POST with a JSON body and a GET with a query string, as boto3 sends them, pass."""
    assert verifier().verify(sign()) == KEY_ID
    get = sign(method="GET", path="/greengrass/groups", query="MaxResults=2&NextToken=MQ%3D%3D")
    assert verifier().verify(get) == KEY_ID


def test_a_request_signed_by_the_aws_clis_own_botocore_is_accepted() -> None:
    """The awscli package signs with its vendored botocore; its requests verify too."""
    from awscli.botocore import auth, credentials  # noqa: PLC0415 - this test's alone

    request = sign(signer=auth.SigV4Auth, credentials=credentials.Credentials)
    assert verifier().verify(request) == KEY_ID


def test_unsigned_requests_are_refused_as_aws_refuses_them() -> None:
    """No Authorization header: 403 MissingAuthenticationTokenException."""
    request = SignedRequest("GET", "/greengrass/groups", "", (("Host", HOST),), b"")
    error = refused(request)
    assert (error.status, error.code) == (403, "MissingAuthenticationTokenException")


@pytest.mark.parametrize(
    ("change", "what"),
    [
        (lambda r: SignedRequest(r.method, r.path, r.query, r.headers, r.body + b" "), "body"),
        (
            lambda r: SignedRequest(
                r.method, r.path, r.query, r.headers, r.body.replace(b'"r"', b'"x"', 1)
            ),
            "body byte",
        ),
        (lambda r: SignedRequest("PUT", r.path, r.query, r.headers, r.body), "method"),
        (
            lambda r: SignedRequest(r.method, r.path + "x", r.query, r.headers, r.body),
            "path",
        ),
        (
            lambda r: SignedRequest(r.method, r.path, "MaxResults=1", r.headers, r.body),
            "query added",
        ),
        (lambda r: with_headers(r, host="evil.example:8443"), "host header"),
        (lambda r: with_headers(r, content_type="text/plain"), "signed content-type"),
    ],
)
def test_a_changed_request_no_longer_verifies(change, what) -> None:
    """Every signed part counts: a changed body, method, path, query or signed header fails."""
    error = refused(change(sign()))
    assert (error.status, error.code) == (403, "InvalidSignatureException"), what
    assert "does not match" in error.message


def test_a_tampered_query_string_fails() -> None:
    """Changing a query parameter's value after signing is caught."""
    request = sign(method="GET", path="/greengrass/groups", query="MaxResults=2", body=b"")
    tampered = SignedRequest("GET", request.path, "MaxResults=200", request.headers, b"")
    assert refused(tampered).code == "InvalidSignatureException"


def test_unsigned_headers_may_change() -> None:
    """Headers the client did not sign (User-Agent, say) don't affect the signature."""
    request = with_headers(sign(), user_agent="something/else")
    assert verifier().verify(request) == KEY_ID


def test_the_wrong_secret_key_and_an_unknown_key_id_are_refused() -> None:
    """Another secret: InvalidSignatureException; a key id we don't know: Unrecognized."""
    assert refused(sign(secret="not-the-secret")).code == "InvalidSignatureException"
    error = refused(sign(key_id="AKIAUNKNOWNKEY000000"))
    assert (error.status, error.code) == (403, "UnrecognizedClientException")
    assert SECRET not in error.message


def test_session_tokens_are_refused() -> None:
    """Temporary credentials can't be checked here: a signed session token is refused."""
    error = refused(sign(token="FwoGZXIvYXdzEXAMPLE"))
    assert error.code == "UnrecognizedClientException"
    assert "session tokens" in error.message


@pytest.mark.parametrize(
    ("age", "accepted"),
    [
        (timedelta(minutes=4, seconds=59), True),
        (timedelta(minutes=-4, seconds=-59), True),
        (timedelta(minutes=5, seconds=1), False),
        (timedelta(hours=2), False),
        (timedelta(minutes=-5, seconds=-1), False),
    ],
)
def test_requests_older_or_newer_than_five_minutes_are_refused(age, accepted) -> None:
    """AWS's 5-minute window: past it, 403 InvalidSignatureException "Signature expired"."""
    request = sign(at=NOW - age)
    if accepted:
        assert verifier().verify(request) == KEY_ID
        return
    error = refused(request)
    assert (error.status, error.code) == (403, "InvalidSignatureException")
    expected = "Signature expired" if age > timedelta(0) else "Signature not yet current"
    assert error.message.startswith(expected)


def test_an_expired_request_is_refused_even_if_replayed_unchanged() -> None:
    """A captured request verifies now and is refused ten minutes later: replay is bounded."""
    request = sign()
    assert verifier().verify(request) == KEY_ID
    assert "Signature expired" in refused(request, now=NOW + timedelta(minutes=10)).message


def test_the_scope_must_be_this_service_and_region() -> None:
    """A signature for another region or service is refused even with the right key."""
    error = refused(sign(region="eu-west-1"))
    assert error.code == "InvalidSignatureException"
    assert "region" in error.message
    assert "service" in refused(sign(service="s3")).message


@pytest.mark.parametrize(
    "authorization",
    [
        "AWS4-HMAC-SHA512 Credential=x/20261128/us-east-1/greengrass/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
        (
            f"AWS4-HMAC-SHA256 Credential={KEY_ID}/20261128/us-east-1/greengrass/aws4_request, "
            "SignedHeaders=host;x-amz-date"
        ),
        f"AWS4-HMAC-SHA256 Credential={KEY_ID}/20261128/us-east-1/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
        f"AWS4-HMAC-SHA256 Credential={KEY_ID}/20261128/us-east-1/greengrass/aws4_request, "
        "SignedHeaders=x-amz-date, Signature=" + "0" * 64,
        "Basic dXNlcjpwYXNz",
    ],
)
def test_malformed_authorization_headers_are_incomplete_signatures(authorization) -> None:
    """A header that isn't a whole SigV4 Authorization: 400 IncompleteSignatureException."""
    request = with_headers(sign(), authorization=authorization)
    error = refused(request)
    assert (error.status, error.code) == (400, "IncompleteSignatureException")


def test_a_content_sha256_header_must_be_the_bodys_hash() -> None:
    """A signed X-Amz-Content-SHA256 is checked against the body actually received."""
    digest = hashlib.sha256(BODY).hexdigest()
    request = sign(extra_headers={"X-Amz-Content-SHA256": digest})
    assert verifier().verify(request) == KEY_ID
    changed = SignedRequest(
        request.method, request.path, request.query, request.headers, b'{"Resources": []}'
    )
    assert refused(changed).code == "InvalidSignatureException"


def test_the_date_header_and_the_scope_date_must_agree() -> None:
    """X-Amz-Date is required and signed, and its day is the Credential scope's day."""
    request = sign()
    without = SignedRequest(
        request.method,
        request.path,
        request.query,
        tuple((k, v) for k, v in request.headers if k.lower() != "x-amz-date"),
        request.body,
    )
    assert refused(without).code == "IncompleteSignatureException"
    later_day = with_headers(request, x_amz_date="20261129T000100Z")
    assert refused(later_day, now=datetime(2026, 11, 29, 0, 1, tzinfo=UTC)).code == (
        "InvalidSignatureException"
    )


def test_secret_key_files_must_be_private_and_hold_one_line(tmp_path: Path) -> None:
    """0600, one line; errors name the file and never show what is in it."""
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    key = AccessKey(KEY_ID, path)
    assert load_secret_keys([key], config_path="cloud.toml") == {KEY_ID: SECRET}

    path.chmod(0o644)
    with pytest.raises(InsecurePermissionsError, match="chmod 0600"):
        load_secret_keys([key], config_path="cloud.toml")

    path.write_text(f"{SECRET} and more\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="one line") as caught:
        load_secret_keys([key], config_path="cloud.toml")
    assert SECRET not in str(caught.value)

    with pytest.raises(ConfigError, match="does not exist"):
        load_secret_keys([AccessKey(KEY_ID, tmp_path / "missing")], config_path="cloud.toml")


def test_the_key_date_and_scope_are_judged_from_the_head_alone() -> None:
    """`authorize` needs no body: an unknown key, an old date or another region fail there.

    A request that passes it is then checked over its body; the expiry it reports is the end
    of the signature's window, and the signature is what identifies the request for replays.
    """
    request = sign()
    head = SignedRequest(request.method, request.path, request.query, request.headers, b"")
    authorized = verifier().authorize(head)
    assert authorized.expires_at == NOW + timedelta(minutes=5)
    assert authorized.signature in dict(request.headers)["Authorization"]
    assert SECRET not in repr(authorized)
    verifier().check_signature(request, authorized)
    with pytest.raises(ApiError, match="does not match"):
        verifier().check_signature(head, authorized)
    for bad, code in (
        (sign(key_id="AKIASTRANGER00000001"), "UnrecognizedClientException"),
        (sign(at=NOW - timedelta(minutes=6)), "InvalidSignatureException"),
        (sign(region="eu-west-1"), "InvalidSignatureException"),
    ):
        bare = SignedRequest(bad.method, bad.path, bad.query, bad.headers, b"")
        with pytest.raises(ApiError) as caught:
            verifier().authorize(bare)
        assert caught.value.code == code
