"""What the README and docs/ document works: commands run, links resolve, Docker is sound.

The README is the front page; the manual is in docs/. The commands the README and
docs/operations.md (every `edge` command, with an example) show are run where they need nothing
else running; every command `edge --help` lists is documented there; every link between the
pages lands on a file and a heading that exist. No Docker engine runs here, so the Docker files
are checked without one: the compose file's structure (services, images, builds, volumes,
dependencies, the configs it mounts, parsed by edge's own config loaders), and the image's
entrypoint and healthcheck commands, run as they are written against a temporary config.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.cloud.config import load_cloud_config
from edge.config import load_config
from edge.fixtures.services import AWS_TEST_ENV, free_port, wait_for_port
from edge.model.connectors import builtin_connectors

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
OPERATIONS = REPO / "docs" / "operations.md"
DOCKER = REPO / "docker"
BIN = Path(sys.executable).parent

#: The pages whose commands are run: the front page, then the page with every `edge` command.
COMMAND_PAGES = (README, OPERATIONS)
#: Every page whose links are checked.
PAGES = (
    README,
    *sorted((REPO / "docs").glob("*.md")),
    REPO / "bench" / "README.md",
    REPO / "connectors" / "README.md",
)

# --- the documented commands ----------------------------------------------------------------

#: Documented commands that need no broker, no AWS and no Docker: these the test runs.
OFFLINE = re.compile(
    r"^(cp \S+\.example\.toml \S+\.toml"
    r"|edge (--log-format \S+ |--log-level \S+ )*(--help|init|secrets list|cloud --help)\b"
    r"|edge cloud --config \S+ (init|list-\S+)\b)"
)
#: Every one of these must be among them (the issue's minimum, and the demo's help).
REQUIRED = (
    "edge --help",
    "edge cloud --help",
    "edge init --config core.toml",
    "edge secrets list --config core.toml",
)


def documented_commands(page: Path) -> list[str]:
    """Every command line of a page's ```sh blocks, comments and `$ ` prompts removed."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", page.read_text(), re.DOTALL):
        for raw in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", raw).strip().removeprefix("$ ")
            line = line.removeprefix(".venv/bin/")
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def test_readme_opens_with_the_two_commands() -> None:
    """The first code block is `make demo` and `make test`."""
    first = documented_commands(README)[:2]
    assert first == ["make demo", "make test"]


def test_documented_offline_commands_run_as_written(tmp_path: Path) -> None:
    """Each documented command that needs nothing running works, in order, in a fresh dir."""
    commands = [c for page in COMMAND_PAGES for c in documented_commands(page) if OFFLINE.match(c)]
    for required in REQUIRED:
        assert any(c.startswith(required) for c in commands), f"the docs lack `{required}`"
    for name in ("config.example.toml", "cloud.example.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        **AWS_TEST_ENV,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
    }
    for command in commands:
        result = subprocess.run(
            shlex.split(command),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"`{command}`:\n{result.stdout}{result.stderr}"
        assert "Traceback" not in result.stderr, command
    assert (tmp_path / "state" / "core.key").stat().st_mode & 0o777 == 0o600


def _subcommands(*args: str) -> list[str]:
    """The subcommands `edge ARGS --help` lists."""
    result = subprocess.run(
        [str(BIN / "edge"), *args, "--help"], capture_output=True, text=True, check=True
    )
    listing = result.stdout.split("positional arguments:", 1)[1].split("options:", 1)[0]
    return re.findall(r"^ {4}(\S+)", listing, re.MULTILINE)


def test_every_edge_command_is_documented_with_an_example() -> None:
    """Each command `edge --help` lists has an example and a row in docs/operations.md."""
    commands = [
        f"secrets {sub}" if command == "secrets" else command
        for command in _subcommands()
        for sub in (_subcommands("secrets") if command == "secrets" else [""])
    ]
    assert {"init", "run", "invoke", "secrets list", "demo", "cloud"} <= set(commands)
    examples = documented_commands(OPERATIONS)
    table = OPERATIONS.read_text().split("## Commands\n", 1)[1].split("\n## ", 1)[0]
    for command in commands:
        shown = re.compile(rf"^edge (--\S+ \S+ )*{command}\b")
        assert any(shown.match(example) for example in examples), f"no example of edge {command}"
        assert f"| `edge {command} " in table, f"edge {command} has no row in the Commands table"
    front = README.read_text()
    for page in ("docs/operations.md", "docs/cloud.md"):
        assert f"]({page}" in front, f"the README doesn't link {page}"


def test_every_built_in_connector_is_documented_for_users() -> None:
    """docs/functions.md gives each connector's parameters, versions and topics."""
    page = (REPO / "docs" / "functions.md").read_text()
    section = page.split("\n## The built-in connectors\n", 1)[1].split("\n## ", 1)[0]
    for name, connector in builtin_connectors().items():
        manifest = connector.manifest
        assert f"(`{name}`, version" in section, f"{name} has no section"
        part = section.split(f"(`{name}`, version", 1)[1].split("\n### ", 1)[0]
        for parameter in manifest.parameters:
            names = [parameter.name] + (
                [f"{parameter.name}-ResourceId"] if parameter.secret else []
            )
            for shown in names:
                assert f"| `{shown}` |" in part, f"{name}: no row for {shown}"
        for topic in (*manifest.input_topics, *manifest.output_topics):
            assert f"`{topic}`" in part, f"{name}: {topic} not documented"


# --- links between the pages ----------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text without its fenced code blocks (a `# comment` there is not a heading)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(page.read_text()), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def test_links_between_the_pages_resolve() -> None:
    """Every relative link of the README, docs/ and the benches' README lands on a heading."""
    broken = []
    for page in PAGES:
        for target in LINK.findall(_prose(page.read_text())):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}: {target}"
            if not linked.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{where} (no such heading)")
    assert not broken, "\n".join(broken)


def test_docs_describe_the_project_as_it_is() -> None:
    """No diary in the pages: no sessions, no issue numbers, no "went from X to Y"."""
    diary = re.compile(
        r"\b(this|last|previous|first|second|third) session\b|\bissue \d|\bwent from\b",
        re.IGNORECASE,
    )
    found = [
        f"{page.relative_to(REPO)}: {match[0]}"
        for page in PAGES
        for match in diary.finditer(page.read_text())
    ]
    assert not found, "\n".join(found)


# --- docker/compose.yaml --------------------------------------------------------------------

EDGE_SERVICES = ("cloud-init", "cloud-serve-1", "cloud-serve-2", "core-1", "core-2", "cloud-deploy")
REPLICAS = ("cloud-serve-1", "cloud-serve-2")
CORES = ("core-1", "core-2")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return doc


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's volumes as {target: source}."""
    out = {}
    for entry in service.get("volumes", []):
        source, target, *_ = entry.split(":")
        out[target] = source
    return out


def test_compose_has_a_broker_an_emulator_a_control_plane_and_two_cores(
    compose: dict[str, Any],
) -> None:
    """The services, their images (third-party ones pinned) and the edge image's build."""
    services = compose["services"]
    assert set(services) == {"mosquitto", "moto", "postgres", *EDGE_SERVICES}
    for name in ("mosquitto", "moto", "postgres"):
        image = services[name]["image"]
        assert re.fullmatch(r"[\w./-]+:\d+(\.\d+)+", image), f"{name}: pin {image}"
    for name in EDGE_SERVICES:
        service = services[name]
        assert service["image"] == "edge:dev"
        build = service["build"]
        assert (DOCKER / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).is_file()
    for name in CORES:
        assert services[name]["init"] is True
        assert services[name]["restart"] == "unless-stopped"


def test_compose_volumes_and_bind_mounts_exist(compose: dict[str, Any]) -> None:
    """Every bind-mounted file is in docker/, every named volume is declared and used."""
    declared = set(compose["volumes"])
    used = set()
    for name, service in compose["services"].items():
        for target, source in mounts(service).items():
            assert target.startswith("/"), (name, target)
            if source.startswith("./"):
                assert (DOCKER / source).is_file(), (name, source)
            else:
                assert source in declared, (name, source)
                used.add(source)
    assert used == declared


def test_compose_starts_things_in_order(compose: dict[str, Any]) -> None:
    """Cores wait for the signing key; the deploy job waits for both cores to be healthy."""
    services = compose["services"]
    for name, service in services.items():
        for target, spec in service.get("depends_on", {}).items():
            assert target in services, (name, target)
            assert spec["condition"] in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }
    for core in CORES:
        depends = services[core]["depends_on"]
        assert depends["cloud-init"]["condition"] == "service_completed_successfully"
        assert {"mosquitto", "moto"} <= set(depends)
    deploy = services["cloud-deploy"]["depends_on"]
    assert {core: deploy[core]["condition"] for core in CORES} == dict.fromkeys(
        CORES, "service_healthy"
    )
    assert services["cloud-deploy"]["restart"] == "no"


def test_compose_configs_agree_with_the_image_and_each_other(compose: dict[str, Any]) -> None:
    """Configs parse with edge's loaders and point where the volumes, scripts and image say."""
    services = compose["services"]
    dockerfile = (DOCKER / "Dockerfile").read_text()
    health = json.loads(re.search(r"^\s+CMD (\[.*\])$", dockerfile, re.MULTILINE)[1])  # type: ignore[index]
    cloud_init = services["cloud-init"]
    cloud_mounts = mounts(cloud_init)
    cloud = load_cloud_config(DOCKER / cloud_mounts["/etc/edge/cloud.toml"])
    data_dir = next(t for t, s in cloud_mounts.items() if s == "cloud-data")
    assert cloud.cloud.signing_key.parent == Path(data_dir)
    assert cloud.cloud.database == "postgresql://edge@postgres:5432/edge"
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "edge"
    assert cloud_init["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Replicas: one config, database and signing key; their API keys' secret from cloud-init.
    # Replicas share one client id prefix safely (random suffixes) and the status reports.
    assert cloud.mqtt.client_id is None
    assert cloud.pacing.shared_group == "edge-cloud"
    (key,) = cloud.cloud.serve.keys
    assert key.secret_access_key_file.parent == Path(data_dir)
    ports = set()
    for name in REPLICAS:
        replica = services[name]
        assert mounts(replica) == {"/etc/edge/cloud.toml": "./cloud.toml", data_dir: "cloud-data"}
        assert replica["entrypoint"][-1] == "serve"
        assert replica["depends_on"]["cloud-init"]["condition"] == "service_completed_successfully"
        (mapping,) = replica["ports"]
        ports.add(mapping.split(":")[0])
        assert mapping.endswith(f":{cloud.cloud.serve.port}")
    assert len(ports) == len(REPLICAS)
    assert (cloud.mqtt.host, cloud.aws.endpoint_url) == ("mosquitto", "http://moto:5000")
    trust_dir = next(t for t, s in cloud_mounts.items() if s == "trust")
    copy_key = " ".join(cloud_init["entrypoint"])
    assert f"cp {cloud.cloud.signing_key}.pub {trust_dir}/" in copy_key
    assert f"> {key.secret_access_key_file})" in copy_key
    assert mounts(services["cloud-deploy"])[data_dir] == "cloud-data"
    deploy_script = (DOCKER / "deploy.sh").read_text()
    things = []
    for name in CORES:
        core_mounts = mounts(services[name])
        assert core_mounts[trust_dir] == "trust"
        assert services[name]["volumes"][-1].endswith(":ro")
        config = load_config(DOCKER / core_mounts["/etc/edge/core.toml"])
        assert core_mounts["/var/lib/edge"] == f"{name}-state"
        assert config.core.state_dir == Path("/var/lib/edge/state")
        assert health[-1].endswith(f"'{config.core.state_dir}/ipc/core.sock')")
        assert config.core.code_dir.parent == Path("/var/lib/edge")
        assert config.deployments.trusted_keys == (Path(trust_dir) / "signing-key.pem.pub",)
        assert (config.mqtt.host, config.aws.endpoint_url) == ("mosquitto", "http://moto:5000")
        things.append(config.core.thing_name)
    assert things == list(CORES)
    assert f"for thing in {' '.join(things)}; do" in deploy_script


def test_docker_files_are_sound() -> None:
    """A slim Python 3.11 base, a non-root user, a state volume, a healthcheck; valid scripts."""
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE) == ["python:3.11-slim"] * 2
    (user,) = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert user not in {"root", "0"}
    assert 'VOLUME ["/var/lib/edge"]' in dockerfile
    assert re.search(r"^HEALTHCHECK .*\\\n\s+CMD \[", dockerfile, re.MULTILINE)
    assert "COPY docker/entrypoint.sh /usr/local/bin/edge-entrypoint" in dockerfile
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    for needed in ("!pyproject.toml", "!README.md", "!edge/", "!docker/entrypoint.sh"):
        assert needed in ignore
    for script in ("entrypoint.sh", "deploy.sh"):
        check = subprocess.run(["sh", "-n", str(DOCKER / script)], check=False)
        assert check.returncode == 0, script


# --- the image's entrypoint and healthcheck, outside Docker ---------------------------------


def _docker_command(instruction: str) -> list[str]:
    """The exec-form command of a Dockerfile instruction (ENTRYPOINT, or HEALTHCHECK's CMD)."""
    dockerfile = (DOCKER / "Dockerfile").read_text()
    pattern = r"^ENTRYPOINT (\[.*\])$" if instruction == "ENTRYPOINT" else r"^\s+CMD (\[.*\])$"
    match = re.search(pattern, dockerfile, re.MULTILINE)
    assert match is not None, instruction
    command: list[str] = json.loads(match[1])
    return command


def _event_seen(log: Path, name: str) -> bool:
    for line in log.read_text(errors="replace").splitlines():
        try:
            if json.loads(line).get("event") == name:
                return True
        except ValueError:
            continue
    return False


def test_image_entrypoint_and_healthcheck_run_a_core_outside_docker(tmp_path: Path) -> None:
    """The entrypoint inits and runs a core that connects and passes the healthcheck.

    core-1's config, with its paths moved under tmp_path (kept short: a Unix socket's path has
    at most 107 bytes). SIGTERM stops the core with status 0.
    """
    root = tmp_path / "r"
    trust = tmp_path / "trust"
    trust.mkdir(parents=True)
    (trust / "signing-key.pem.pub").write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    port = free_port()
    config_text = (
        (DOCKER / "core-1.toml")
        .read_text()
        .replace("/var/lib/edge", str(root))
        .replace("/etc/edge/trust", str(trust))
        .replace("mqtt://mosquitto:1883", f"mqtt://127.0.0.1:{port}")
        .replace("http://moto:5000", f"http://127.0.0.1:{free_port()}")
    )
    config = tmp_path / "core.toml"
    config.write_text(config_text)
    root.mkdir(mode=0o700)

    entrypoint = _docker_command("ENTRYPOINT")
    assert entrypoint == ["sh", "/usr/local/bin/edge-entrypoint"]
    entrypoint[-1] = str(DOCKER / "entrypoint.sh")  # where the image's COPY puts it
    health = [arg.replace("/var/lib/edge", str(root)) for arg in _docker_command("HEALTHCHECK")]
    env = {
        **os.environ,
        **AWS_TEST_ENV,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "EDGE_CONFIG": str(config),
    }

    def healthy() -> bool:
        return subprocess.run(health, env=env, capture_output=True, check=False).returncode == 0

    assert not healthy()
    log = tmp_path / "core.log"
    with (
        log.open("wb") as out,
        subprocess.Popen(
            [sys.executable, "-m", "edge.demo.broker", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as broker,
    ):
        core = subprocess.Popen(entrypoint, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port)
            deadline = time.monotonic() + 30
            while not (_event_seen(log, "mqtt.connected") and healthy()):
                assert core.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            state = root / "state"
            assert state.stat().st_mode & 0o777 == 0o700
            assert (state / "core.key").is_file()
            core.send_signal(signal.SIGTERM)
            assert core.wait(20) == 0, log.read_text()
        finally:
            if core.poll() is None:
                core.kill()
                core.wait()
            broker.terminate()
    assert _event_seen(log, "core.started")
    assert not healthy()
    # Nothing listens on the socket any more, even if a stale file were left behind.
    refused = (ConnectionRefusedError, FileNotFoundError)
    with pytest.raises(refused), socket.socket(socket.AF_UNIX) as probe:
        probe.connect(str(root / "state/ipc/core.sock"))
