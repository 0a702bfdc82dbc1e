# SPDX-License-Identifier: Apache-2.0
"""`edge migrate-core`: turn a Greengrass V1 core's `config.json` into an edge `core.toml`.

A V1 core is described by `/greengrass/config/config.json`: its thing, the AWS IoT endpoint it
connects to with its X.509 certificate, and the key it decrypted secrets with
(`crypto.principals.SecretsManager`). Everything an edge core needs to take over from it is
there, except what edge adds (the control plane's public key, where to keep state). The
conversion points at the existing certificate and key files and never copies a key: the device
keeps one copy of each, with the modes it had, which are checked and reported.

What V1 configured that edge has no equivalent for (cgroups, the OTA agent's respawn, the
Greengrass cloud endpoint) is listed with the reason, never dropped silently.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from edge.config import DEFAULT_MQTTS_PORT, MAX_THING_NAME_LENGTH, load_config
from edge.errors import MigrationError
from edge.fsutil import PRIVATE_FILE_MODE
from edge.mqtt.token_key import provider_problem

#: Where V1's `coreThing` paths are relative to: `{greengrass root}/certs`.
_CERTS_DIR = "certs"
#: The AWS IoT endpoint's MQTT port; V1 also offered 443 with ALPN `x-amzn-mqtt-ca`.
_ALPN_PORT = 443
#: V1's default MQTT keepalive (`coreThing.keepAlive`), and the range edge accepts.
_KEEPALIVE_RANGE = (5, 3600)
_GROUP_OTHER_BITS = 0o077

#: V1 settings edge has no equivalent for, and why; printed when a config sets them.
_NOT_MAPPED: Mapping[str, str] = {
    "coreThing.ggHost": "edge takes deployments from its own control plane over MQTT, not "
    "from the Greengrass cloud service",
    "coreThing.ggHttpPort": "edge takes deployments over MQTT, not from the Greengrass service",
    "coreThing.iotHttpPort": "edge needs no HTTPS connection to AWS IoT",
    "coreThing.networkProxy": "edge's MQTT client connects directly; no proxy is supported",
    "runtime.cgroup": "edge runs workers as processes without cgroups; a function's MemorySize "
    "is enforced by watching its resident memory",
    "runtime.maxWorkItemCount": "edge queues invocations per function without a global cap",
    "runtime.maxConcurrentLimit": "edge starts workers on demand without a global cap",
    "runtime.lruSize": "edge keeps no pool of idle on-demand workers to size",
    "runtime.mountAllBlockDevices": "edge has no local device resources",
    "runtime.postStartHealthCheckTimeout": "edge has no OTA agent to report health to",
    "runtime.allowFunctionsToRunAsRoot": "edge runs a function as root only with an explicit "
    "RunAs Uid 0, as V1 did with this set; there is no global switch",
    "runtime.systemComponentAuthTimeout": "edge has no system components to authenticate",
    "managedRespawn": "edge has no OTA agent; run `edge run` under systemd with Restart=always",
    "writeDirectory": "edge keeps its state in [core] state_dir and code_dir "
    "(edge migrate-core --state-dir)",
    "system": "edge has no local shadow service to tune",
    "deployment": "edge's deployments come from its own control plane",
    "crypto.PKCS11.OpenSSLEngine": "edge talks to the token through its PKCS#11 library "
    "(P11Provider), and TLS through OpenSSL's pkcs11-provider, which replaces the engine",
}


@dataclass(frozen=True, slots=True)
class CoreConversion:
    """What a V1 config became: the TOML text and what the operator should know."""

    toml: str
    thing_name: str
    region: str
    #: Settings that were not carried over, each with the reason.
    not_mapped: tuple[str, ...]
    #: Things to fix before `edge run` starts (loose key modes, a missing trusted key).
    warnings: tuple[str, ...]
    #: The token's user PIN from `crypto.PKCS11.slotUserPin`, written to its own 0600 file.
    pin: str | None = field(default=None, repr=False)


def _section(document: Mapping[str, Any], name: str, where: str) -> Mapping[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, Mapping):
        raise MigrationError(where, f"{name} must be a JSON object")
    return value


def _text(section: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = section.get(key)
    if value is None or value == "":
        if required:
            raise MigrationError(where, f"{key} is required")
        return ""
    if not isinstance(value, str):
        raise MigrationError(where, f"{key} must be a string")
    return value


def parse_thing_arn(arn: str, where: str) -> tuple[str, str]:
    """(region, thing name) of `arn:aws:iot:{region}:{account}:thing/{name}`."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[2] != "iot" or not parts[5].startswith("thing/"):  # noqa: PLR2004
        raise MigrationError(
            where,
            f"coreThing.thingArn must look like arn:aws:iot:REGION:ACCOUNT:thing/NAME, not {arn!r}",
        )
    region, name = parts[3], parts[5].removeprefix("thing/")
    if not region or not name or len(name) > MAX_THING_NAME_LENGTH or any(c in name for c in "/+#"):
        raise MigrationError(where, f"coreThing.thingArn names no usable region and thing: {arn!r}")
    return region, name


def _file_uri(value: str, key: str, where: str) -> Path:
    """A `file:///path` (or plain absolute path) from `crypto`; pkcs11: is handled by callers."""
    if value.startswith("file:"):
        parts = urlsplit(value)
        if parts.netloc not in {"", "localhost"}:
            raise MigrationError(where, f"{key} must be a local file:/// URI, not {value!r}")
        return Path(unquote(parts.path))
    if value.startswith("/"):
        return Path(value)
    raise MigrationError(where, f"{key} must be a file:/// URI or a pkcs11: URI, not {value!r}")


@dataclass
class _Converter:
    """Collects the TOML tables and the notes while walking one V1 document."""

    where: str
    certs: Path
    tables: dict[str, dict[str, object]] = field(default_factory=dict)
    not_mapped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pin: str | None = None

    def put(self, table: str, key: str, value: object) -> None:
        self.tables.setdefault(table, {})[key] = value

    def key_file(self, path: Path, what: str) -> None:
        """Check a private key file exists with a mode only its owner can reach."""
        try:
            info = path.stat()
        except OSError as exc:
            self.warnings.append(f"{what} {path} can't be read here: {exc.strerror}")
            return
        if not stat.S_ISREG(info.st_mode):
            self.warnings.append(f"{what} {path} is not a regular file")
        elif info.st_mode & _GROUP_OTHER_BITS:
            mode = stat.S_IMODE(info.st_mode)
            self.warnings.append(
                f"{what} {path} has mode {mode:04o}; `edge run` refuses a key others can reach: "
                f"run `chmod 600 {path}`"
            )

    def tls(self, core_thing: Mapping[str, Any], crypto: Mapping[str, Any]) -> None:
        principals = _section(crypto, "principals", self.where)
        iot = _section(principals, "IoTCertificate", self.where)
        ca_uri = _text(crypto, "caPath", self.where)
        ca = (
            _file_uri(ca_uri, "crypto.caPath", self.where)
            if ca_uri
            else self.certs / _text(core_thing, "caPath", self.where, required=True)
        )
        cert_uri = _text(iot, "certificatePath", self.where)
        key_uri = _text(iot, "privateKeyPath", self.where)
        cert = (
            _file_uri(cert_uri, "IoTCertificate.certificatePath", self.where)
            if cert_uri
            else self.certs / _text(core_thing, "certPath", self.where, required=True)
        )
        for path, what in ((ca, "the CA file"), (cert, "the certificate")):
            if not path.is_file():
                self.warnings.append(f"{what} {path} does not exist here")
        self.put("mqtt", "ca_file", str(ca))
        self.put("mqtt", "cert_file", str(cert))
        if key_uri.startswith("pkcs11:"):
            # OpenSSL's pkcs11-provider signs the TLS handshake inside the token.
            self.put("mqtt", "key_file", self.token_key(key_uri, crypto))
            problem = provider_problem()
            if problem is not None:
                self.warnings.append(f"the MQTT key is in a PKCS#11 token: {problem}")
            return
        key = (
            _file_uri(key_uri, "IoTCertificate.privateKeyPath", self.where)
            if key_uri
            else self.certs / _text(core_thing, "keyPath", self.where, required=True)
        )
        self.key_file(key, "the MQTT key")
        self.put("mqtt", "key_file", str(key))

    def core_key(self, crypto: Mapping[str, Any]) -> None:
        """`[core] private_key`: the key V1 decrypted secrets with, RSA or in a token."""
        principals = _section(crypto, "principals", self.where)
        secrets_manager = _section(principals, "SecretsManager", self.where)
        uri = _text(secrets_manager, "privateKeyPath", self.where)
        if not uri:
            # V1 without the principal used the core's own key for secrets as well.
            uri = str(self.tables["mqtt"]["key_file"])
        if not uri.startswith("pkcs11:"):
            path = _file_uri(uri, "SecretsManager.privateKeyPath", self.where)
            self.key_file(path, "the core key")
            self.put("core", "private_key", str(path))
            return
        self.put("core", "private_key", self.token_key(uri, crypto))

    def token_key(self, uri: str, crypto: Mapping[str, Any]) -> str:
        """Edge's URI for a V1 `pkcs11:` key: its token, and its PIN in a 0600 file of its own.

        Sets `[core] pkcs11_module` from `crypto.PKCS11.P11Provider`, which V1 used for every
        key in the token.
        """
        pkcs11 = _section(crypto, "PKCS11", self.where)
        module = _text(pkcs11, "P11Provider", self.where)
        if not module:
            raise MigrationError(self.where, "a pkcs11: key needs crypto.PKCS11.P11Provider")
        self.put("core", "pkcs11_module", module)
        label = _text(pkcs11, "slotLabel", self.where)
        path_part, _, query = uri.removeprefix("pkcs11:").partition("?")
        attributes = [a for a in path_part.split(";") if a and not a.startswith("type=")]
        if label and not any(a.startswith("token=") for a in attributes):
            attributes.insert(0, f"token={label}")
        query_items = [q for q in query.split("&") if q and not q.startswith("pin-")]
        self.pin = _text(pkcs11, "slotUserPin", self.where) or None
        if self.pin is not None:
            query_items.append("pin-source=file:core.pin")
        query = "?" + "&".join(query_items) if query_items else ""
        return "pkcs11:" + ";".join(attributes) + query


def convert_v1_config(
    document: Mapping[str, Any],
    *,
    where: str,
    greengrass_root: Path,
    state_dir: str | None = None,
    trusted_keys: Sequence[Path] = (),
    iot_credentials: tuple[str, str] | None = None,
) -> CoreConversion:
    """Map a parsed V1 `config.json` onto an edge core config.

    Args:
        document: The parsed config.json.
        where: The file's name, for messages.
        greengrass_root: V1's install root; `coreThing` paths are relative to its `certs/`.
        state_dir: `[core] state_dir` to write; None leaves edge's default.
        trusted_keys: Public keys of the control plane for `[deployments] trusted_keys`.
        iot_credentials: (credentials provider endpoint, role alias): AWS credentials from the
            thing's certificate, as V1 had them; None leaves botocore's chain.

    Returns:
        The conversion; nothing is written.

    Raises:
        MigrationError: A required V1 setting is missing or malformed.
    """
    core_thing = _section(document, "coreThing", where)
    crypto = _section(document, "crypto", where)
    region, thing = parse_thing_arn(_text(core_thing, "thingArn", where, required=True), where)
    host = _text(core_thing, "iotHost", where, required=True)
    port = core_thing.get("iotMqttPort", DEFAULT_MQTTS_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:  # noqa: PLR2004
        raise MigrationError(where, f"coreThing.iotMqttPort must be a port number, not {port!r}")
    c = _Converter(where=where, certs=greengrass_root / _CERTS_DIR)
    c.put("core", "thing_name", thing)
    if state_dir is not None:
        c.put("core", "state_dir", state_dir)
    c.put("mqtt", "url", f"mqtts://{host}:{port}")
    # AWS IoT policies written for V1 cores usually allow only the thing's name as client id.
    c.put("mqtt", "client_id", thing)
    keepalive = core_thing.get("keepAlive")
    if isinstance(keepalive, int) and not isinstance(keepalive, bool):
        low, high = _KEEPALIVE_RANGE
        c.put("mqtt", "keepalive_seconds", min(max(keepalive, low), high))
    c.tls(core_thing, crypto)
    c.core_key(crypto)
    c.put("aws", "region", region)
    if iot_credentials is not None:
        c.put("aws", "credentials", "iot")
        c.put("aws", "iot_credentials_endpoint", iot_credentials[0])
        c.put("aws", "role_alias", iot_credentials[1])
    else:
        c.warnings.append(
            "no --role-alias: AWS credentials come from botocore's chain (environment, "
            "~/.aws); pass --role-alias and --iot-credentials-endpoint to exchange the thing's "
            "certificate for short-lived credentials, as V1 did"
        )
    c.put("deployments", "trusted_keys", [str(k) for k in trusted_keys])
    if port == _ALPN_PORT:
        c.warnings.append(
            "coreThing.iotMqttPort is 443, which AWS IoT serves MQTT on only with the ALPN "
            "protocol x-amzn-mqtt-ca; edge's client doesn't send it: open port 8883 instead"
        )
    if not trusted_keys:
        c.warnings.append(
            "no --trusted-key: the core refuses every deployment until [deployments] "
            "trusted_keys lists the control plane's public key ({signing_key}.pub)"
        )
    c.not_mapped.extend(_unmapped(document))
    return CoreConversion(
        toml=render_toml(c.tables),
        thing_name=thing,
        region=region,
        not_mapped=tuple(c.not_mapped),
        warnings=tuple(c.warnings),
        pin=c.pin,
    )


def _unmapped(document: Mapping[str, Any]) -> list[str]:
    """`name: reason` for each V1 setting present that edge doesn't carry over."""
    out = []
    for dotted, reason in _NOT_MAPPED.items():
        value: Any = document
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is not None:
            out.append(f"{dotted}: {reason}")
    return out


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # JSON's string escapes are all valid in a TOML basic string.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def render_toml(tables: Mapping[str, Mapping[str, object]]) -> str:
    """The tables as TOML, in the order given, with a header saying where they came from."""
    lines = ["# Written by `edge migrate-core` from a Greengrass V1 config.json.", ""]
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
        lines.append("")
    return "\n".join(lines)


def migrate_core(
    *,
    greengrass_config: Path,
    output: Path,
    greengrass_root: Path | None = None,
    state_dir: str | None = None,
    trusted_keys: Sequence[Path] = (),
    iot_credentials: tuple[str, str] | None = None,
    force: bool = False,
) -> CoreConversion:
    """Read a V1 config.json, write the core.toml (0600) and check that edge can load it.

    Raises:
        MigrationError: The V1 config can't be read or converted, or `output` exists and
            `force` is false. Nothing is written then.
    """
    where = str(greengrass_config)
    try:
        document = json.loads(greengrass_config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MigrationError(where, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MigrationError(where, f"can't be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise MigrationError(where, f"is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise MigrationError(where, "must hold a JSON object")
    # config.json lives in {root}/config/, its certificates in {root}/certs/.
    root = greengrass_root or greengrass_config.resolve().parent.parent
    conversion = convert_v1_config(
        document,
        where=where,
        greengrass_root=root,
        state_dir=state_dir,
        trusted_keys=[k.resolve() for k in trusted_keys],
        iot_credentials=iot_credentials,
    )
    if output.exists() and not force:
        raise MigrationError(str(output), "exists already; pass --force to replace it")
    pin_file = output.parent / "core.pin"
    if conversion.pin is not None:
        _write_private(pin_file, conversion.pin + "\n")
    _write_private(output, conversion.toml)
    load_config(output)  # what was written must be a config `edge run` accepts
    return conversion


def _write_private(path: Path, text: str) -> None:
    """Write text to path, 0600 whatever the umask, replacing what was there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), PRIVATE_FILE_MODE)
        handle.write(text)
