# SPDX-License-Identifier: Apache-2.0
"""The API's operations that edge stores and answers faithfully but doesn't act on.

Role associations, connectivity info, thing runtime configuration, group certificate
authorities and their expiry configuration, and software update jobs are AWS services around a
Greengrass core: edge's core takes its credentials, its broker and its TLS from its own config.
A V1 script still sets and reads them, so each is kept as AWS answers it (one JSON document per
kind and subject in the `documents` table) and returned as AWS returns it. docs/cloud.md says
what the core does with each: nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.cloud.db import Connection, Database
from edge.cloud.errors import NotFoundError
from edge.cloud.ids import new_id, thing_name_of, timestamp
from edge.cloud.serve.context import Context, Handler, Result
from edge.cloud.serve.errors import bad_request
from edge.cloud.serve.routes import service_model

_ROLE_ARN: Final = re.compile(
    r"arn:aws(?:-[a-z]+)*:iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}", re.ASCII
)
MAX_PORT: Final = 65535
#: A Greengrass core's certificate lives 7 to 30 days (AWS's bounds); 7 unless configured.
CERTIFICATE_EXPIRY_MS: Final = (7 * 86_400_000, 30 * 86_400_000)
#: A group CA's lifetime, as AWS issues it: five years.
CA_EXPIRY_MS: Final = 5 * 365 * 86_400_000
_GROUP_HINT: Final = "list-groups shows the groups"


# --- the store ----------------------------------------------------------------------------------


def _load(conn: Connection, kind: str, subject: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT document FROM documents WHERE kind = :kind AND subject = :subject",
        {"kind": kind, "subject": subject},
    ).fetchone()
    return None if row is None else dict(json.loads(row["document"]))


def _save(
    conn: Connection,
    kind: str,
    subject: str,
    document: dict[str, Any],
    *,
    group_id: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO documents (kind, subject, group_id, document, updated_at)"
        " VALUES (:kind, :subject, :group_id, :document, :updated_at) ON CONFLICT (kind, subject)"
        " DO UPDATE"
        " SET document = excluded.document, updated_at = excluded.updated_at",
        {
            "kind": kind,
            "subject": subject,
            "group_id": group_id,
            "document": json.dumps(document, sort_keys=True),
            "updated_at": timestamp(),
        },
    )


def _drop(conn: Connection, kind: str, subject: str) -> None:
    conn.execute(
        "DELETE FROM documents WHERE kind = :kind AND subject = :subject",
        {"kind": kind, "subject": subject},
    )


def _check_group(conn: Connection, group_id: str) -> None:
    if conn.execute("SELECT 1 FROM groups WHERE id = :id", {"id": group_id}).fetchone() is None:
        raise NotFoundError("group", group_id, _GROUP_HINT)


def _role_arn(member: str, value: str) -> str:
    if _ROLE_ARN.fullmatch(value) is None:
        raise bad_request(
            f"{member}: {value!r} is not an IAM role ARN (arn:aws:iam::123456789012:role/Name)"
        )
    return value


def _enum(operation: str, params: dict[str, Any]) -> None:
    """Refuse a value outside its member's enum (botocore's validator doesn't check enums)."""
    shape = service_model().operation_model(operation).input_shape
    stack: list[tuple[Any, Any, str]] = [(shape, params, "")]
    while stack:
        node, value, where = stack.pop()
        if node.type_name == "structure" and isinstance(value, dict):
            for name, member in node.members.items():
                if name in value:
                    stack.append((member, value[name], f"{where}.{name}" if where else name))
        elif node.type_name == "list" and isinstance(value, list):
            stack.extend((node.member, item, f"{where}[{i}]") for i, item in enumerate(value))
        elif getattr(node, "enum", None) and value not in node.enum:
            raise bad_request(f"{where}: must be one of {', '.join(node.enum)}, not {value!r}")


# --- roles ----------------------------------------------------------------------------------------


# AWS keys a role association by group id without looking the group up (any id is taken), so
# the association is not tied to a stored group either.


def _associate_role(db: Database, group_id: str, role_arn: str) -> Result:
    at = timestamp()
    with db.write() as conn:
        _save(conn, "group-role", group_id, {"RoleArn": role_arn, "AssociatedAt": at})
    return {"AssociatedAt": at}


def _associated_role(db: Database, group_id: str) -> Result:
    with db.read() as conn:
        role = _load(conn, "group-role", group_id)
    if role is None:
        raise bad_request(
            f"You need to attach an IAM role to this deployment group: group {group_id!r} has "
            f"none (AssociateRoleToGroup attaches one)"
        )
    return role


def _disassociate_role(db: Database, group_id: str) -> Result:
    with db.write() as conn:
        _drop(conn, "group-role", group_id)
    return {"DisassociatedAt": timestamp()}


def _associate_service_role(db: Database, role_arn: str) -> Result:
    at = timestamp()
    with db.write() as conn:
        _save(conn, "service-role", "", {"RoleArn": role_arn, "AssociatedAt": at})
    return {"AssociatedAt": at}


def _service_role(db: Database) -> Result:
    with db.read() as conn:
        role = _load(conn, "service-role", "")
    if role is None:
        raise bad_request(
            "the account has no Greengrass service role; AssociateServiceRoleToAccount "
            "associates one"
        )
    return role


def _disassociate_service_role(db: Database) -> Result:
    with db.write() as conn:
        _drop(conn, "service-role", "")
    return {"DisassociatedAt": timestamp()}


# --- things ---------------------------------------------------------------------------------------


def _check_connectivity(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for index, entry in enumerate(entries):
        where = f"ConnectivityInfo[{index}]"
        if not entry.get("HostAddress"):
            raise bad_request(f"{where}.HostAddress: is required (a host name or IP address)")
        port = entry.get("PortNumber")
        if port is not None and not 1 <= port <= MAX_PORT:
            raise bad_request(f"{where}.PortNumber: must be 1-{MAX_PORT}, not {port}")
    return entries


def _update_connectivity(db: Database, thing: str, entries: list[dict[str, Any]]) -> Result:
    version = new_id()
    with db.write() as conn:
        _save(conn, "connectivity", thing, {"ConnectivityInfo": entries, "Version": version})
    return {"Version": version}


def _connectivity(db: Database, thing: str) -> Result:
    with db.read() as conn:
        stored = _load(conn, "connectivity", thing)
    # A thing whose connectivity info was never set has none, as in AWS.
    return {} if stored is None else {"ConnectivityInfo": stored["ConnectivityInfo"]}


def _update_runtime(db: Database, thing: str, telemetry: dict[str, Any]) -> Result:
    with db.write() as conn:
        _save(conn, "runtime", thing, {"Telemetry": telemetry["Telemetry"]})
    return {}


def _runtime(db: Database, thing: str) -> Result:
    with db.read() as conn:
        stored = _load(conn, "runtime", thing)
    if stored is None:
        return {"RuntimeConfiguration": {}}
    # OutOfSync, truthfully: edge's core never takes the setting (AWS says InSync once the
    # core has synchronised it).
    telemetry = {"Telemetry": stored["Telemetry"], "ConfigurationSyncStatus": "OutOfSync"}
    return {"RuntimeConfiguration": {"TelemetryConfiguration": telemetry}}


# --- group certificate authorities ---------------------------------------------------------------


def _new_ca_certificate(group_id: str) -> str:
    """A self-signed CA certificate for a group (PEM); its key is not kept, nothing signs."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Greengrass Group {group_id} CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(milliseconds=CA_EXPIRY_MS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _create_ca(db: Database, ca_arn_of: Callable[[str, str], str], group_id: str) -> Result:
    pem = _new_ca_certificate(group_id)
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    ca_id = hashlib.sha256(der).hexdigest()
    arn = ca_arn_of(group_id, ca_id)
    document = {
        "GroupCertificateAuthorityArn": arn,
        "GroupCertificateAuthorityId": ca_id,
        "PemEncodedCertificate": pem,
    }
    with db.write() as conn:
        _check_group(conn, group_id)
        _save(conn, "group-ca", ca_id, document, group_id=group_id)
    return {"GroupCertificateAuthorityArn": arn}


def _list_cas(db: Database, group_id: str) -> Result:
    with db.read() as conn:
        _check_group(conn, group_id)
        rows = conn.execute(
            "SELECT document FROM documents WHERE kind = 'group-ca' AND group_id = :group_id"
            " ORDER BY updated_at, subject",
            {"group_id": group_id},
        ).fetchall()
    cas = [json.loads(row["document"]) for row in rows]
    keep = ("GroupCertificateAuthorityArn", "GroupCertificateAuthorityId")
    return {"GroupCertificateAuthorities": [{k: ca[k] for k in keep} for ca in cas]}


def _get_ca(db: Database, group_id: str, ca_id: str) -> Result:
    with db.read() as conn:
        _check_group(conn, group_id)
        row = conn.execute(
            "SELECT document FROM documents WHERE kind = 'group-ca' AND subject = :subject"
            " AND group_id = :group_id",
            {"subject": ca_id, "group_id": group_id},
        ).fetchone()
    if row is None:
        raise NotFoundError(
            "group certificate authority", ca_id, "ListGroupCertificateAuthorities shows them"
        )
    return dict(json.loads(row["document"]))


def _certificate_configuration(conn: Connection, group_id: str) -> Result:
    stored = _load(conn, "certificate-configuration", group_id) or {}
    return {
        "CertificateAuthorityExpiryInMilliseconds": str(CA_EXPIRY_MS),
        "CertificateExpiryInMilliseconds": stored.get(
            "CertificateExpiryInMilliseconds", str(CERTIFICATE_EXPIRY_MS[0])
        ),
        "GroupId": group_id,
    }


def _get_certificate_configuration(db: Database, group_id: str) -> Result:
    with db.read() as conn:
        _check_group(conn, group_id)
        return _certificate_configuration(conn, group_id)


def _update_certificate_configuration(db: Database, group_id: str, expiry: str | None) -> Result:
    low, high = CERTIFICATE_EXPIRY_MS
    if expiry is not None and not (expiry.isdigit() and low <= int(expiry) <= high):
        raise bad_request(
            f"CertificateExpiryInMilliseconds: must be a whole number of milliseconds from "
            f"{low} (7 days) to {high} (30 days), not {expiry!r}"
        )
    with db.write() as conn:
        _check_group(conn, group_id)
        if expiry is not None:
            document = {"CertificateExpiryInMilliseconds": str(int(expiry))}
            _save(conn, "certificate-configuration", group_id, document, group_id=group_id)
        return _certificate_configuration(conn, group_id)


# --- software update jobs -------------------------------------------------------------------------


def _create_update_job(db: Database, region: str, account: str, p: dict[str, Any]) -> Result:
    _role_arn("S3UrlSignerRole", p["S3UrlSignerRole"])
    if not p["UpdateTargets"]:
        raise bad_request("UpdateTargets: name at least one core's thing ARN")
    for index, target in enumerate(p["UpdateTargets"]):
        if thing_name_of(target) is None:
            raise bad_request(
                f"UpdateTargets[{index}]: {target!r} is not an AWS IoT thing ARN "
                f"(arn:aws:iot:REGION:ACCOUNT:thing/NAME)"
            )
    job_id = new_id()
    # No PlatformSoftwareVersion: nothing is installed, so no version is named.
    answer = {"IotJobArn": f"arn:aws:iot:{region}:{account}:job/{job_id}", "IotJobId": job_id}
    request = {k: v for k, v in p.items() if k != "AmznClientToken"}
    with db.write() as conn:
        _save(conn, "software-update-job", job_id, {"Request": request, **answer})
    return answer


# --- the handlers ---------------------------------------------------------------------------------


async def _associate_role_to_group(ctx: Context, p: dict[str, Any]) -> Result:
    role = _role_arn("RoleArn", p["RoleArn"])
    return await ctx.db.call(lambda db: _associate_role(db, p["GroupId"], role))


async def _get_associated_role(ctx: Context, p: dict[str, Any]) -> Result:
    return await ctx.db.call(lambda db: _associated_role(db, p["GroupId"]))


async def _disassociate_role_from_group(ctx: Context, p: dict[str, Any]) -> Result:
    return await ctx.db.call(lambda db: _disassociate_role(db, p["GroupId"]))


async def _associate_service_role_to_account(ctx: Context, p: dict[str, Any]) -> Result:
    role = _role_arn("RoleArn", p["RoleArn"])
    return await ctx.db.call(lambda db: _associate_service_role(db, role))


async def _get_service_role_for_account(ctx: Context, _p: dict[str, Any]) -> Result:
    return await ctx.db.call(_service_role)


async def _disassociate_service_role_from_account(ctx: Context, _p: dict[str, Any]) -> Result:
    return await ctx.db.call(_disassociate_service_role)


async def _update_connectivity_info(ctx: Context, p: dict[str, Any]) -> Result:
    entries = _check_connectivity(p.get("ConnectivityInfo", []))
    return await ctx.db.call(lambda db: _update_connectivity(db, p["ThingName"], entries))


async def _get_connectivity_info(ctx: Context, p: dict[str, Any]) -> Result:
    return await ctx.db.call(lambda db: _connectivity(db, p["ThingName"]))


async def _update_thing_runtime_configuration(ctx: Context, p: dict[str, Any]) -> Result:
    _enum("UpdateThingRuntimeConfiguration", p)
    if "TelemetryConfiguration" not in p:
        raise bad_request('TelemetryConfiguration: is required ({"Telemetry": "On"|"Off"})')
    telemetry = p["TelemetryConfiguration"]
    return await ctx.db.call(lambda db: _update_runtime(db, p["ThingName"], telemetry))


async def _get_thing_runtime_configuration(ctx: Context, p: dict[str, Any]) -> Result:
    return await ctx.db.call(lambda db: _runtime(db, p["ThingName"]))


async def _create_group_certificate_authority(ctx: Context, p: dict[str, Any]) -> Result:
    def arn(group_id: str, ca_id: str) -> str:
        return f"{ctx.arns.group(group_id)}/certificateauthorities/{ca_id}"

    return await ctx.db.call(lambda db: _create_ca(db, arn, p["GroupId"]))


async def _list_group_certificate_authorities(ctx: Context, p: dict[str, Any]) -> Result:
    return await ctx.db.call(lambda db: _list_cas(db, p["GroupId"]))


async def _get_group_certificate_authority(ctx: Context, p: dict[str, Any]) -> Result:
    return await ctx.db.call(lambda db: _get_ca(db, p["GroupId"], p["CertificateAuthorityId"]))


async def _get_group_certificate_configuration(ctx: Context, p: dict[str, Any]) -> Result:
    return await ctx.db.call(lambda db: _get_certificate_configuration(db, p["GroupId"]))


async def _update_group_certificate_configuration(ctx: Context, p: dict[str, Any]) -> Result:
    expiry = p.get("CertificateExpiryInMilliseconds")
    return await ctx.db.call(lambda db: _update_certificate_configuration(db, p["GroupId"], expiry))


async def _create_software_update_job(ctx: Context, p: dict[str, Any]) -> Result:
    _enum("CreateSoftwareUpdateJob", p)
    region, account = ctx.arns.region, ctx.arns.account_id
    return await ctx.db.call(lambda db: _create_update_job(db, region, account, p))


def handlers() -> dict[str, Handler]:
    """The stored operations, by botocore operation name."""
    return {
        "AssociateRoleToGroup": _associate_role_to_group,
        "GetAssociatedRole": _get_associated_role,
        "DisassociateRoleFromGroup": _disassociate_role_from_group,
        "AssociateServiceRoleToAccount": _associate_service_role_to_account,
        "GetServiceRoleForAccount": _get_service_role_for_account,
        "DisassociateServiceRoleFromAccount": _disassociate_service_role_from_account,
        "UpdateConnectivityInfo": _update_connectivity_info,
        "GetConnectivityInfo": _get_connectivity_info,
        "UpdateThingRuntimeConfiguration": _update_thing_runtime_configuration,
        "GetThingRuntimeConfiguration": _get_thing_runtime_configuration,
        "CreateGroupCertificateAuthority": _create_group_certificate_authority,
        "ListGroupCertificateAuthorities": _list_group_certificate_authorities,
        "GetGroupCertificateAuthority": _get_group_certificate_authority,
        "GetGroupCertificateConfiguration": _get_group_certificate_configuration,
        "UpdateGroupCertificateConfiguration": _update_group_certificate_configuration,
        "CreateSoftwareUpdateJob": _create_software_update_job,
    }
