"""edge.hardening: the core's memory is closed to its own user, and no core dump is written."""

from __future__ import annotations

import subprocess
import sys


def test_the_core_process_becomes_non_dumpable() -> None:
    """After forbid_memory_access, the kernel reports the process as not dumpable."""
    code = (
        "from edge.hardening import forbid_memory_access, is_dumpable\n"
        "before = is_dumpable()\n"
        "assert forbid_memory_access()\n"
        "print(before, is_dumpable())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


def test_a_program_it_starts_is_dumpable_again() -> None:
    """Workers are new programs: the setting doesn't follow them through execve."""
    code = (
        "import subprocess, sys\n"
        "from edge.hardening import forbid_memory_access\n"
        "forbid_memory_access()\n"
        "child = 'from edge.hardening import is_dumpable; print(is_dumpable())'\n"
        "print(subprocess.run([sys.executable, '-c', child], capture_output=True, text=True,"
        " check=True).stdout.strip())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
