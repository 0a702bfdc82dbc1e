"""Function packages for tests: V1 handlers zipped with the unmodified greengrasssdk."""

from __future__ import annotations

import hashlib
import importlib.util
import zipfile
from pathlib import Path

FUNCTIONS_DIR = Path(__file__).resolve().parents[1] / "integration" / "functions"


def build_package(path: Path, modules: tuple[str, ...] = ("app.py",)) -> tuple[Path, str]:
    """Zip handler modules (app.py by default) with the unmodified greengrasssdk from PyPI.

    Returns (zip, sha256). `modules` are file names in tests/integration/functions/.
    """
    spec = importlib.util.find_spec("greengrasssdk")
    assert spec is not None
    assert spec.submodule_search_locations
    sdk_dir = Path(next(iter(spec.submodule_search_locations)))
    with zipfile.ZipFile(path, "w") as archive:
        for module in modules:
            archive.write(FUNCTIONS_DIR / module, module)
        for file in sorted(sdk_dir.rglob("*.py")):
            archive.write(file, f"greengrasssdk/{file.relative_to(sdk_dir).as_posix()}")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()
