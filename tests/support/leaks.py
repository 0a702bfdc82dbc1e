"""The whole-session leak check: every secret value the tests create, searched for everywhere.

Every byte the core, its workers and the CLI wrote (logs, stdout, stderr, and
any other file, including the state directory) across the test session is searched for every
secret value the tests created; the session fails if one is found.

How it works:

- `LEAKS.add_secret(value, secret_id)` registers a value. `tests/conftest.py` does it for every
  `SecretString`/`SecretBinary` sent to Secrets Manager through boto3 in the test process (an
  event hook on the default session, so `Env.create_secret`, `put_secret_value` and tests'
  own `sm` calls are all covered); `Env` and the fake Twilio register theirs by name too.
  Each value is searched in the forms a careless program would write it: its UTF-8 bytes, its
  JSON escape, base64 (standard and URL-safe) and hex; for a binary value also the raw bytes.
- `LEAKS.add_root(directory)` registers a directory whose files are all scanned at the end:
  the session's pytest `basetemp` holds every core's log and state dir, every CLI's files,
  Mosquitto's persistence and moto's log. The encrypted store is scanned too: it is
  ciphertext, so a hit there would be a real plaintext leak.
- `LEAKS.add_output(source, text)` records output that never reaches a file: the captured
  stdout/stderr of `edge_cli` runs and pytest's captured output of every test (which holds the
  logs of cores run in-process). It is appended to one capture file under the first root.
- `LEAKS.scan()` runs once, at session end: one `grep -F` (Aho-Corasick-like, all patterns in
  one pass per file) over every file, about 1 s per 40 MB with 2,000 values. A hit names the
  file (or the captured source) and the secret's id, never the value.

Values shorter than `MIN_PATTERN_BYTES` are not searched (they would match by chance); the
summary line says how many were skipped, so a test using such values knows it isn't covered.
"""

from __future__ import annotations

import base64
import bisect
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge.redaction import is_framing

#: Shorter values are not searched: "x" or "v1" would match any log by chance.
MIN_PATTERN_BYTES = 8
#: Files handed to one grep process (keeps argv far below ARG_MAX).
_FILES_PER_GREP = 400
CAPTURE_FILE_NAME = "leak-check-captured-output.log"


@dataclass(frozen=True, slots=True)
class Hit:
    """A registered value found in output: where, and which secret (never the value)."""

    source: str
    secret_id: str


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What a scan looked at and found."""

    hits: tuple[Hit, ...]
    files: int
    bytes_scanned: int
    patterns: int
    short_values: int


def value_forms(value: str | bytes) -> set[bytes]:
    """Every byte string under which `value` could show up in a log or a file."""
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    if len(raw) < MIN_PATTERN_BYTES:
        return set()  # its encodings would be short (and common) too
    forms = {raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw), raw.hex().encode()}
    # Without padding too: a value embedded in a longer base64 text carries none.
    forms |= {f.rstrip(b"=") for f in list(forms)}
    if isinstance(value, str):
        forms.add(json.dumps(value)[1:-1].encode())
        forms.add(json.dumps(value, ensure_ascii=False)[1:-1].encode("utf-8", "surrogatepass"))
    # grep reads one pattern per line: a multi-line value is searched by its lines, but not
    # by its framing (a PEM's BEGIN/END line, the same in every PEM of its kind and in the
    # core's own key file), which the core's masking leaves readable.
    lines = {line for form in forms for line in form.split(b"\n")}
    return {
        line
        for line in lines
        if len(line) >= MIN_PATTERN_BYTES
        and not is_framing(line.decode("utf-8", "replace").strip())
    }


@dataclass
class LeakRegistry:
    """The registered secret values, the places to search, and the search itself."""

    _patterns: dict[bytes, str] = field(default_factory=dict)
    _short: set[str] = field(default_factory=set)
    _roots: list[Path] = field(default_factory=list)
    _exempt: dict[Path, str] = field(default_factory=dict)
    _captures: list[tuple[int, str]] = field(default_factory=list)
    _pending: list[tuple[str, bytes]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_secret(self, value: str | bytes, secret_id: str) -> None:
        """Register a secret value; it must appear in no scanned file or captured output."""
        forms = value_forms(value)
        with self._lock:
            if not forms:
                self._short.add(secret_id)
            for form in forms:
                self._patterns.setdefault(form, secret_id)

    def add_root(self, directory: Path) -> None:
        """Scan every file below `directory` at the end."""
        with self._lock:
            self._roots.append(Path(directory))

    def exempt(self, path: Path, reason: str) -> None:
        """Leave one file out of the scan (say why: it must be a file the test wrote itself)."""
        with self._lock:
            self._exempt[Path(path).resolve()] = reason

    def add_output(self, source: str, text: str | bytes) -> None:
        """Record output that is not in a file (captured stdout/stderr), labelled `source`."""
        data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        if not data:
            return
        with self._lock:
            if not self._roots:
                self._pending.append((source, data))
                return
            self._append_capture(source, data)

    @property
    def capture_file(self) -> Path | None:
        """Where captured output is kept (under the first root), once there is a root."""
        return self._roots[0] / CAPTURE_FILE_NAME if self._roots else None

    def _append_capture(self, source: str, data: bytes) -> None:
        path = self.capture_file
        assert path is not None
        with path.open("ab") as f:
            offset = f.tell()
            # A header of its own line, so a value can't straddle two sources' bytes.
            f.write(b"\n")
            self._captures.append((offset, source))
            f.write(data)
            f.write(b"\n")

    def scan(self) -> ScanResult:
        """Search every file below the roots (and the captured output) for every value."""
        with self._lock:
            if self._pending and not self._roots:
                # Output but no directory yet (a session whose tests made no temp dir).
                self._roots.append(Path(tempfile.mkdtemp(prefix="edge-leak-check-")))
            for source, data in self._pending:
                self._append_capture(source, data)
            self._pending.clear()
            patterns = dict(self._patterns)
            files = self._files()
        size = sum(f.stat().st_size for f in files)
        found: list[tuple[Path, int, bytes]] = []
        if patterns and files:
            found = _grep(sorted(patterns), files)
        hits: dict[tuple[str, str], None] = {}
        capture = self.capture_file
        for path, offset, match in found:
            hits[self._where(path, offset, capture), patterns.get(match, "?")] = None
        return ScanResult(
            hits=tuple(Hit(source, secret_id) for source, secret_id in hits),
            files=len(files),
            bytes_scanned=size,
            patterns=len(patterns),
            short_values=len(self._short),
        )

    def _files(self) -> list[Path]:
        out: list[Path] = []
        for root in self._roots:
            for dirpath, _dirs, names in os.walk(root):
                for name in names:
                    path = Path(dirpath, name)
                    # Regular files only: not sockets, FIFOs or symlinks (they point elsewhere).
                    regular = path.is_file() and not path.is_symlink()
                    if regular and path.resolve() not in self._exempt:
                        out.append(path)
        return out

    def _where(self, path: Path, offset: int, capture: Path | None) -> str:
        if capture is None or path != capture or not self._captures:
            return str(path)
        index = bisect.bisect_right([o for o, _ in self._captures], offset) - 1
        return f"captured output of {self._captures[max(index, 0)][1]}"

    def report(self, result: ScanResult) -> list[str]:
        """Lines that say where which secret leaked: file and secret id, never the value."""
        return [f"{hit.source}: value of secret {hit.secret_id!r}" for hit in result.hits]


def _grep(patterns: list[bytes], files: list[Path]) -> list[tuple[Path, int, bytes]]:
    """(file, byte offset, matched pattern) of every occurrence, by `grep -F` or in Python."""
    grep = shutil.which("grep")
    if grep is None:  # correct but slow: one bytes.find per pattern and file
        return [
            (path, data.find(p), p)
            for path in files
            for data in [path.read_bytes()]
            for p in patterns
            if p in data
        ]
    # The pattern list holds every value in clear: a private temp file outside the roots,
    # removed at once.
    fd, pattern_file = tempfile.mkstemp(prefix="edge-leak-patterns-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\n".join(patterns) + b"\n")
        found: list[tuple[Path, int, bytes]] = []
        for start in range(0, len(files), _FILES_PER_GREP):
            chunk = [os.fspath(p) for p in files[start : start + _FILES_PER_GREP]]
            # -F fixed strings, -a binary as text, -o each match, -b its offset, -H the file,
            # --null a NUL after the file name (names may hold ':'); LC_ALL=C: bytes.
            proc = subprocess.run(
                [grep, "-F", "-a", "-o", "-b", "-H", "--null", "-f", pattern_file, "--", *chunk],
                capture_output=True,
                env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "")},
                check=False,
            )
            # 0: found, 1: nothing found, 2: trouble. A file a test removed meanwhile is fine.
            trouble = [
                line
                for line in proc.stderr.decode(errors="replace").splitlines()
                if not line.endswith("No such file or directory")
            ]
            if proc.returncode > 1 and trouble:
                raise RuntimeError(f"grep failed: {trouble[:5]}")
            for line in proc.stdout.split(b"\n"):
                if not line:
                    continue
                name, _, rest = line.partition(b"\0")
                offset, _, match = rest.partition(b":")
                found.append((Path(os.fsdecode(name)), int(offset), match))
        return found
    finally:
        Path(pattern_file).unlink()


class LeakCheckPlugin:
    """Pytest wiring: record every test's captured output; scan everything at session end.

    The scan's verdict sets the session's exit status: a leak fails the run even when every
    test passed, and the report names file and secret id, never the value.
    """

    def __init__(self, registry: LeakRegistry) -> None:
        self.registry = registry
        self.result: ScanResult | None = None
        #: Under xdist, in the controller: each finished worker's {"summary", "lines"}.
        self.from_workers: list[dict[str, Any]] | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Record a test's captured stdout, stderr and log (all phases are in teardown's)."""
        if report.when != "teardown":
            return
        for title, content in report.sections:
            if title.startswith("Captured"):
                self.registry.add_output(f"{report.nodeid} ({title})", content)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Scan; on a hit, say where and fail the session.

        Under pytest-xdist each worker scans what its own tests created and sends its verdict
        to the controller (`workeroutput`), which reports them all and fails the run.
        """
        config = session.config
        workeroutput = getattr(config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: the controller reports
            try:
                summary, lines = self._scan()
            except Exception as exc:  # noqa: BLE001 - the controller must hear of it, and fail
                summary, lines = "leak check failed", [f"the leak check failed: {exc!r}"]
            workeroutput["leak_check"] = {"summary": summary, "lines": lines}
            return
        if self.from_workers is not None:  # the xdist controller
            summaries = [w["summary"] for w in self.from_workers]
            lines = [line for w in self.from_workers for line in w["lines"]]
            summary = "; ".join(summaries) or "leak check: no worker reported"
        else:
            summary, lines = self._scan()
        reporter: Any = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            if lines:
                reporter.write_sep("=", "SECRET VALUES LEAKED", red=True, bold=True)
                for line in lines:
                    reporter.write_line(line, red=True)
            reporter.write_sep("-", summary)
        if lines:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_testnodedown(self, node: Any) -> None:
        """Under xdist, in the controller: collect a finished worker's verdict."""
        verdict = getattr(node, "workeroutput", {}).get("leak_check")
        if self.from_workers is None:
            self.from_workers = []
        if verdict is None:
            # A worker that died before its scan can't vouch for its files: fail loudly.
            verdict = {
                "summary": "a worker sent no leak check",
                "lines": ["no leak check from a worker"],
            }
        self.from_workers.append(verdict)

    def _scan(self) -> tuple[str, list[str]]:
        started = time.monotonic()
        self.result = result = self.registry.scan()
        elapsed = time.monotonic() - started
        summary = (
            f"leak check: {result.patterns} value forms in {result.files} files "
            f"({result.bytes_scanned / 1e6:.1f} MB) in {elapsed:.1f} s"
        )
        if result.short_values:
            summary += (
                f"; {result.short_values} values under {MIN_PATTERN_BYTES} bytes not searched"
            )
        return summary, self.registry.report(result)


#: The session's registry (tests/conftest.py wires it to pytest).
LEAKS = LeakRegistry()
