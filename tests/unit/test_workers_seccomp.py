"""The worker's seccomp filter: what it denies, what V1 code still does, on a real kernel.

A filtered process can't be set free, so never filter pytest's: a child Python runs the same
attempts twice, once as it is and once after `install_filter()`, and reports each errno (0
for success). As root, each denial is shown to be the filter's doing: without it, the same
call succeeds. The child works in a private mount namespace of its own, so its mounts never
reach this machine. The aarch64 program, which can't run here, is run through a classic-BPF
interpreter against the kernel's numbers.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge.child import seccomp

ROOT = Path(__file__).resolve().parents[2]
TABLES = {"x86_64": seccomp.X86_64, "aarch64": seccomp.AARCH64}
MACHINE = os.uname().machine
#: The legacy path calls aarch64 never had; their *at forms are in its table.
ABSENT_ON_AARCH64 = {"chmod", "open", "creat", "mknod"}

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="root shows each denied call succeeding without the filter"
)
needs_seccomp = pytest.mark.skipif(
    not seccomp.seccomp_available(), reason=f"no seccomp filter mode for {MACHINE} here"
)

CHILD = r"""
import ctypes, json, os, shutil, stat, subprocess, sys, threading
from edge.child import seccomp

mode, work = sys.argv[1], sys.argv[2]
table = {"x86_64": seccomp.X86_64, "aarch64": seccomp.AARCH64}[os.uname().machine]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
AT_FDCWD, CLONE_NEWNS, CLONE_NEWUTS, MS_REC, MS_PRIVATE = -100, 0x20000, 0x4000000, 0x4000, 1 << 18
os.chdir(work)

def check(result):
    if result < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return result

def sys_call(name, *args):
    args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return check(libc.syscall(ctypes.c_long(table[name]), *args))

# Set-up that needs the powers the filter takes away: a private mount namespace (so nothing
# mounted here reaches the machine), a mount to try to unmount, a process to try to trace.
check(libc.unshare(CLONE_NEWNS))
check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None))
for name in ("mounted", "mountpoint", "tree/sub"):
    os.makedirs(name)
check(libc.mount(b"none", b"mounted", b"tmpfs", 0, None))
for name in ("own", "tree/a", "tree/sub/b"):
    with open(name, "w") as f:
        f.write(name)
os.chmod("tree/a", 0o755)
sleeper = subprocess.Popen(["sleep", "60"])
dir_fd = os.open(".", os.O_RDONLY)

if mode == "filtered":
    seccomp.install_filter()

def clone_newns():
    pid = sys_call("clone", CLONE_NEWNS | 17, 0, 0, 0, 0)  # 17: SIGCHLD
    if pid == 0:
        os._exit(0)
    return os.waitpid(pid, 0)[1]

def ptrace_attach():
    check(libc.ptrace(ctypes.c_long(16), ctypes.c_long(sleeper.pid), None, None))
    return 0

def bpf_map():
    attr = struct_pack(2, 4, 4, 1)  # BPF_MAP_TYPE_ARRAY, key 4, value 4, 1 entry
    return os.close(sys_call("bpf", 0, ctypes.addressof(attr), ctypes.sizeof(attr)))

def struct_pack(*words):
    return (ctypes.c_uint32 * 18)(*words)

def in_thread(action):
    seen = []
    thread = threading.Thread(target=lambda: seen.append(attempt(action)))
    thread.start()
    thread.join()
    return seen[0]

GRANDCHILD = "try:\n os.chmod('own', 0o4755); print(0)\nexcept OSError as e:\n print(e.errno)"

def grandchild_chmod():
    command = [sys.executable, "-S", "-c", "import os\n" + GRANDCHILD]
    return int(subprocess.run(command, capture_output=True, text=True, check=True).stdout)

def int80_getpid():
    import mmap
    code = bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3])  # mov eax, 20 (getpid); int 0x80; ret
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    result = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))()
    return "pid" if result == os.getpid() else result

def copies():
    shutil.copy("own", "copy")
    shutil.copy2("tree/a", "copy2")
    shutil.copytree("tree", "tree2")
    return oct(os.stat("copy2").st_mode & 0o7777), sorted(os.listdir("tree2/sub"))

def attempt(action):
    try:
        result = action()
    except OSError as exc:
        return exc.errno
    return 0 if result is None else result

IO_URING_PARAMS = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
actions = {
    "chmod 4755": lambda: os.chmod("own", 0o4755),
    "chmod 2755": lambda: os.chmod("own", 0o2755),
    "fchmod 4755": lambda: os.fchmod(os.open("own", os.O_RDONLY), 0o4755),
    "fchmodat 2755": lambda: os.chmod("own", 0o2755, dir_fd=dir_fd),
    "fchmodat2 4755": lambda: sys_call("fchmodat2", AT_FDCWD, b"own", 0o4755, 0),
    "thread chmod 4755": lambda: in_thread(lambda: os.chmod("own", 0o6755)),
    "grandchild chmod 4755": grandchild_chmod,
    "open O_CREAT 4755": lambda: os.close(os.open("created", os.O_CREAT | os.O_WRONLY, 0o4755)),
    "mknod regular 2755": lambda: os.mknod("made", stat.S_IFREG | 0o2755),
    "mode after": lambda: oct(os.stat("own").st_mode & 0o7777),
    "chmod 0644": lambda: os.chmod("own", 0o644),
    "fchmod 0755": lambda: os.fchmod(os.open("own", os.O_RDONLY), 0o755),
    "fchmodat 0700": lambda: os.chmod("own", 0o700, dir_fd=dir_fd),
    "fchmodat2 0644": lambda: sys_call("fchmodat2", AT_FDCWD, b"own", 0o644, 0),
    "chown own": lambda: os.chown("own", os.getuid(), os.getgid()),
    "open O_CREAT 0600": lambda: os.close(os.open("private", os.O_CREAT | os.O_WRONLY, 0o600)),
    "copies": copies,
    "mkfifo": lambda: os.mkfifo("fifo"),
    "mknod char 1,3": lambda: os.mknod("null", stat.S_IFCHR | 0o600, os.makedev(1, 3)),
    "mknod block 7,0": lambda: os.mknod("loop", stat.S_IFBLK | 0o600, os.makedev(7, 0)),
    "mount tmpfs": lambda: check(libc.mount(b"none", b"mountpoint", b"tmpfs", 0, None)),
    "umount2": lambda: check(libc.umount2(b"mounted", 0)),
    "setns uts": lambda: check(libc.setns(os.open("/proc/self/ns/uts", os.O_RDONLY), CLONE_NEWUTS)),
    "ptrace attach": ptrace_attach,
    "process_vm_readv": lambda: sys_call("process_vm_readv", os.getpid(), 0, 0, 0, 0, 0),
    "keyctl": lambda: sys_call("keyctl", 0, -2, 1) and None,  # the process keyring's id
    "add_key": lambda: sys_call("add_key", b"user", b"edge-test", b"x", 1, -2) and None,
    "bpf map": bpf_map,
    "io_uring_setup": lambda: os.close(sys_call("io_uring_setup", 1, IO_URING_PARAMS)),
    "clone3": lambda: sys_call("clone3", 0, 0),
    "openat2": lambda: sys_call("openat2", AT_FDCWD, 0, 0, 0),
    "clone CLONE_NEWNS": clone_newns,
    "unshare CLONE_NEWNS": lambda: check(libc.unshare(CLONE_NEWNS)),
    "subprocess true": lambda: subprocess.run(["true"], check=True) and None,
    "thread": lambda: in_thread(lambda: None),
}
if os.uname().machine == "x86_64":
    actions["x32 getpid"] = lambda: check(libc.syscall(ctypes.c_long(0x40000000 | 39))) and None
    actions["int 0x80 getpid"] = int80_getpid
out = {name: attempt(action) for name, action in actions.items()}
os.kill(sleeper.pid, 9)  # not Popen.kill: a traced, stopped child reads as exited to it
os.waitpid(sleeper.pid, 0)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def seen(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every attempt's errno, from a child without the filter and from one with it."""
    results = {}
    for mode in ("plain", "filtered"):
        work = tmp_path_factory.mktemp(mode)
        done = subprocess.run(
            [sys.executable, "-S", "-c", CHILD, mode, str(work)],
            capture_output=True,
            text=True,
            env={"PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"]},
            check=False,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        results[mode] = json.loads(done.stdout)
    return results


def outcomes(seen: dict[str, dict[str, Any]], *names: str) -> dict[str, tuple[Any, Any]]:
    return {name: (seen["plain"][name], seen["filtered"][name]) for name in names}


@needs_root
@needs_seccomp
def test_setuid_and_setgid_bits_are_refused_by_every_call_that_sets_a_mode(seen) -> None:
    """chmod, fchmod, fchmodat, fchmodat2, an O_CREAT open and mknod can't set 06000 bits.

    From the process, one of its threads or a child it starts; the file keeps its mode.
    """
    names = (
        "chmod 4755",
        "chmod 2755",
        "fchmod 4755",
        "fchmodat 2755",
        "thread chmod 4755",
        "grandchild chmod 4755",
        "open O_CREAT 4755",
        "mknod regular 2755",
    )
    assert outcomes(seen, *names) == dict.fromkeys(names, (0, errno.EPERM))
    assert outcomes(seen, "mode after") == {"mode after": ("0o4755", "0o644")}
    # fchmodat2 came with Linux 6.6; the filter refuses it by number on older kernels too.
    assert seen["filtered"]["fchmodat2 4755"] == errno.EPERM
    assert seen["plain"]["fchmodat2 4755"] in (0, errno.ENOSYS)


@needs_root
@needs_seccomp
def test_ordinary_modes_chown_and_copies_keep_working(seen) -> None:
    """What unmodified V1 code does: chmod 0644/0755/0700, chown, shutil.copy2/copytree, FIFOs."""
    names = (
        "chmod 0644",
        "fchmod 0755",
        "fchmodat 0700",
        "chown own",
        "open O_CREAT 0600",
        "mkfifo",
    )
    assert outcomes(seen, *names) == dict.fromkeys(names, (0, 0))
    plain, filtered = outcomes(seen, "fchmodat2 0644")["fchmodat2 0644"]
    assert filtered == plain in (0, errno.ENOSYS)  # ENOSYS: a kernel before 6.6
    copied = ["0o755", ["b"]]
    assert outcomes(seen, "copies") == {"copies": (copied, copied)}


@needs_root
@needs_seccomp
def test_mounts_namespaces_tracing_keys_bpf_io_uring_and_devices_are_refused(seen) -> None:
    """Each of these works for root without the filter and gets EPERM (not a kill) with it."""
    names = (
        "mount tmpfs",
        "umount2",
        "unshare CLONE_NEWNS",
        "setns uts",
        "clone CLONE_NEWNS",
        "ptrace attach",
        "process_vm_readv",
        "keyctl",
        "add_key",
        "bpf map",
        "io_uring_setup",
        "mknod char 1,3",
        "mknod block 7,0",
    )
    assert outcomes(seen, *names) == dict.fromkeys(names, (0, errno.EPERM))


@needs_root
@needs_seccomp
def test_threads_and_subprocesses_work_through_the_clone_fallback(seen) -> None:
    """clone3 and openat2 say ENOSYS, so glibc falls back to clone: threads and spawns work."""
    assert outcomes(seen, "subprocess true", "thread") == {
        "subprocess true": (0, 0),
        "thread": (0, 0),
    }
    plain, filtered = zip(*outcomes(seen, "clone3", "openat2").values(), strict=True)
    assert filtered == (errno.ENOSYS, errno.ENOSYS)
    assert errno.ENOSYS not in plain  # the kernel has both: the ENOSYS is the filter's


@needs_seccomp
@pytest.mark.skipif(MACHINE != "x86_64", reason="the i386 and x32 ABIs exist on x86_64 only")
def test_other_syscall_abis_get_eperm_for_every_call(seen) -> None:
    """A getpid through int 0x80 (i386) or the x32 ABI is refused: their numbers differ."""
    plain_x32, filtered_x32 = seen["plain"]["x32 getpid"], seen["filtered"]["x32 getpid"]
    assert filtered_x32 == errno.EPERM
    assert plain_x32 in (0, errno.ENOSYS)  # x32 is compiled out of most kernels
    if seen["plain"]["int 0x80 getpid"] != "pid":
        pytest.skip("this kernel runs no i386 code (ia32_emulation off)")
    assert seen["filtered"]["int 0x80 getpid"] == -errno.EPERM


UNSUPPORTED = """
import os, sys
from edge.child import seccomp
real = os.uname()
os.uname = lambda: os.uname_result((*real[:4], "riscv64"))
try:
    seccomp.install_filter()
except seccomp.SeccompError as exc:
    print(seccomp.seccomp_available(), exc, open("/proc/self/status").read().count("Seccomp:\\t0"))
"""


def test_an_unsupported_machine_gets_an_error_and_no_filter() -> None:
    """On a machine without a table, install_filter raises and leaves the process unfiltered."""
    done = subprocess.run(
        [sys.executable, "-S", "-c", UNSUPPORTED],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"]},
        check=True,
        timeout=60,
    )
    assert done.stdout.split(" ", 1)[0] == "False"
    assert "no seccomp syscall table for riscv64" in done.stdout
    assert "supported: x86_64, aarch64" in done.stdout
    assert done.stdout.rstrip().endswith(" 1")  # Seccomp: 0 in /proc: nothing installed


def header_numbers(path: Path) -> dict[str, int]:
    text = path.read_text() if path.exists() else ""
    found = re.finditer(r"#define __NR_(\w+)\s+(\d+)\s*$", text, re.MULTILINE)
    return {m[1]: int(m[2]) for m in found}


@pytest.mark.parametrize(
    ("machine", "header"),
    [
        ("x86_64", "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
        ("aarch64", "/usr/include/asm-generic/unistd.h"),
    ],
)
def test_syscall_tables_match_the_kernel_headers(machine: str, header: str) -> None:
    """Each arch's numbers are the kernel's; names the headers predate are newer than them."""
    table = TABLES[machine]
    judged = {*seccomp.DENIED, *seccomp.UNJUDGED, *seccomp.SETID_MODE_ARG}
    judged |= {*seccomp.DEVICE_MODE_ARG, "clone", "seccomp"}
    absent = ABSENT_ON_AARCH64 if machine == "aarch64" else set()
    assert set(table) == judged - absent
    assert len(set(table.values())) == len(table), "a number appears twice"
    known = header_numbers(Path(header))
    if not known:
        pytest.skip(f"{header} is not installed (linux-libc-dev) to check against")
    assert {name: table[name] for name in table if name in known} == {
        name: known[name] for name in table if name in known
    }
    newer = {name for name in table if name not in known}
    assert all(table[name] > max(known.values()) for name in newer)
    assert not absent & set(known), "a call documented as absent on aarch64 exists there"


def run_bpf(insns: list[tuple[int, int, int, int]], data: bytes) -> int:
    """A classic-BPF interpreter for the few opcodes the filter uses (seccomp's subset)."""
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x54:  # and #k
            acc &= k
        elif code in (0x15, 0x45):  # jeq #k / jset #k
            hit = acc == k if code == 0x15 else bool(acc & k)
            pc += jt if hit else jf
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def verdict(machine: str, arch: int, name: str | int, *args: int) -> str:
    table = TABLES[machine]
    arch_value = seccomp.AUDIT_ARCH_X86_64 if machine == "x86_64" else seccomp.AUDIT_ARCH_AARCH64
    nr = table[name] if isinstance(name, str) else name
    padded = [a & 0xFFFF_FFFF_FFFF_FFFF for a in [*args, 0, 0, 0, 0, 0, 0][:6]]
    data = struct.pack("<iIQ6Q", nr, arch, 0, *padded)
    ret = run_bpf(seccomp.program(arch_value, table), data)
    errnos = {0x50000 | errno.EPERM: "EPERM", 0x50000 | errno.ENOSYS: "ENOSYS"}
    return {0x7FFF0000: "allow"}.get(ret) or errnos[ret]


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_each_program_judges_numbers_and_arguments_as_documented(machine: str) -> None:
    """Run each arch's program on sample calls, the aarch64 one included, without its kernel."""
    arch = seccomp.AUDIT_ARCH_X86_64 if machine == "x86_64" else seccomp.AUDIT_ARCH_AARCH64
    high = 0xFFFF_FFFF_0000_0000  # the kernel ignores a mode's upper word, and so does the filter
    assert verdict(machine, arch, "fchmodat", -100, 0, 0o4755) == "EPERM"
    assert verdict(machine, arch, "fchmodat", -100, 0, high | 0o755) == "allow"
    assert verdict(machine, arch, "fchmodat2", -100, 0, 0o2000, 0) == "EPERM"
    assert verdict(machine, arch, "fchmod", 3, 0o644) == "allow"
    assert verdict(machine, arch, "openat", -100, 0, 0o101, 0o4700) == "EPERM"
    assert verdict(machine, arch, "openat", -100, 0, 0o101, 0o600) == "allow"
    assert verdict(machine, arch, "mknodat", -100, 0, 0o020600, 0x103) == "EPERM"
    assert verdict(machine, arch, "mknodat", -100, 0, 0o060600, 0x700) == "EPERM"
    assert verdict(machine, arch, "mknodat", -100, 0, 0o010600, 0) == "allow"  # FIFO
    assert verdict(machine, arch, "mknodat", -100, 0, 0o104755, 0) == "EPERM"  # setuid file
    assert verdict(machine, arch, "clone", 0x10000000 | 17) == "EPERM"  # CLONE_NEWUSER
    assert verdict(machine, arch, "clone", 0x003D0F00) == "allow"  # pthread_create's flags
    assert verdict(machine, arch, "clone3", 0, 88) == "ENOSYS"
    assert verdict(machine, arch, "ptrace", 16, 1) == "EPERM"
    assert verdict(machine, arch, "mount_setattr") == "EPERM"
    assert verdict(machine, arch, "open_tree_attr") == "EPERM"
    assert verdict(machine, arch, 0) == "allow"  # read (x86_64) / io_setup (aarch64)
    assert verdict(machine, 0x40000028, 15, 0, 0o4755) == "EPERM"  # 32-bit ARM's chmod
    assert verdict(machine, 0x40000003, 20) == "EPERM"  # i386's getpid
    if machine == "x86_64":
        assert verdict(machine, arch, 0x40000000 | 90, 0, 0o4755) == "EPERM"  # x32 chmod
        assert verdict(machine, arch, "chmod", 0, 0o6755) == "EPERM"
        assert verdict(machine, arch, "creat", 0, 0o4755) == "EPERM"
        assert verdict(machine, arch, "mknod", 0, 0o100644) == "allow"
