# SPDX-License-Identifier: Apache-2.0
"""A seccomp filter for workers: no setuid bits, no mounts, no tracing, no new namespaces.

Runs inside the worker, after its namespace and Landlock set-up (the filter denies `unshare`
and `mount`, which that set-up needs), so it imports nothing from the core side and no
dataclasses: V1's 16 MB MemorySize must still fit.

Landlock governs opening, creating and removing files, not their modes. A function running as
the core's user owns the core's files, and a root worker without capabilities still owns
root's: without this filter it could loosen `core.key` and, worse, `chmod 4755` a root-owned
binary for every local user. The filter is argument-aware: `chmod 0644` is V1's everyday fare
and passes; a mode with the setuid or setgid bit (06000) gets EPERM, whichever call sets it
(the chmod family, or open/creat/mknod creating a file with that mode). Also EPERM, whatever
the arguments: mounting (old and new API), tracing another process or reaching into its
memory, kexec, bpf, the kernel keyrings, io_uring, and entering or making namespaces. Creating a
character or block device gets EPERM too; FIFOs and regular files don't.

Denied calls fail with EPERM and never kill: the function sees an ordinary OSError, as it would
from a file it doesn't own, and the worker lives on to report it. `clone3` and `openat2` take
their flags in a struct in memory, which a seccomp filter can't read, so they get ENOSYS:
glibc (threads, posix_spawn) then falls back to `clone`, whose flags the filter does check,
as Docker's default profile does. Any other syscall ABI than the process's own (i386's
`int 0x80` on x86_64, the x32 ABI, 32-bit ARM on aarch64) gets EPERM for every call, or the
32-bit numbers would step around the table.

Why a hand-written classic BPF program rather than libseccomp: PyPI has no well-kept Python
binding for it (the official one ships only with the C library's sources); loading the C
library and a binding would cost a worker's 16 MB budget more than these ~60 instructions;
and Debian 12's libseccomp (2.5.4) predates `fchmodat2` and `open_tree_attr`, which would have
to be added by number anyway.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys

#: <linux/audit.h>: EM_X86_64 and EM_AARCH64, each with __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
#: x86_64's x32 ABI marks its syscall numbers with this bit (<asm/unistd.h>).
X32_SYSCALL_BIT = 0x40000000

# Syscalls added since Linux 5.1 have one number on every architecture.
_COMMON = {
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "openat2": 437,
    "pidfd_getfd": 438,
    "mount_setattr": 442,
    "fchmodat2": 452,
    "open_tree_attr": 467,
}

#: <asm/unistd_64.h> on x86_64.
X86_64 = {
    "open": 2,
    "clone": 56,
    "creat": 85,
    "chmod": 90,
    "fchmod": 91,
    "ptrace": 101,
    "mknod": 133,
    "pivot_root": 155,
    "mount": 165,
    "umount2": 166,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "openat": 257,
    "mknodat": 259,
    "fchmodat": 268,
    "unshare": 272,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "seccomp": 317,
    "kexec_file_load": 320,
    "bpf": 321,
    **_COMMON,
}

#: <asm-generic/unistd.h>, which aarch64 uses. It never had the legacy path calls (chmod,
#: mknod, open, creat): only their *at forms, which the filter covers.
AARCH64 = {
    "mknodat": 33,
    "umount2": 39,
    "mount": 40,
    "pivot_root": 41,
    "fchmod": 52,
    "fchmodat": 53,
    "openat": 56,
    "unshare": 97,
    "kexec_load": 104,
    "ptrace": 117,
    "add_key": 217,
    "request_key": 218,
    "keyctl": 219,
    "clone": 220,
    "setns": 268,
    "process_vm_readv": 270,
    "process_vm_writev": 271,
    "seccomp": 277,
    "bpf": 280,
    "kexec_file_load": 294,
    **_COMMON,
}

#: EPERM whatever the arguments.
DENIED = (
    "mount",
    "umount2",
    "pivot_root",
    "open_tree",
    "open_tree_attr",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    # ptrace, and the calls that need ptrace's permission to reach into another process.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "keyctl",
    "add_key",
    "request_key",
    "unshare",
    "setns",
    # io_uring opens files (O_CREAT with any mode) where the filter can't see the arguments,
    # and has been a rich source of kernel bugs; a kernel with it turned off says EPERM too.
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)
#: ENOSYS: flags in memory the filter can't read; callers fall back to a call it can judge.
UNJUDGED = ("clone3", "openat2")
#: EPERM when the mode argument (its index here) has the setuid or setgid bit.
SETID_MODE_ARG = {
    "chmod": 1,
    "fchmod": 1,
    "fchmodat": 2,
    "fchmodat2": 2,
    "open": 2,
    "creat": 1,
    "openat": 3,
}
#: EPERM when the mode argument makes a character or block device, or has a setid bit.
DEVICE_MODE_ARG = {"mknod": 1, "mknodat": 2}
#: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET. CLONE_NEWTIME (0x80) is
#: only valid for clone3 and unshare: in clone's flags those bits carry the exit signal.
CLONE_NEW_ANY = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
)

_SETID = 0o6000
_S_IFMT = 0o170000
_S_IFCHR = 0o020000
_S_IFBLK = 0o060000
_EPERM = 1
_ENOSYS = 38

# Classic BPF opcodes (<linux/bpf_common.h>) and seccomp's (<linux/seccomp.h>).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JSET_K = 0x45
_AND_K = 0x54
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
# struct seccomp_data: int nr, u32 arch, u64 instruction_pointer, u64 args[6]. Only the
# little-endian arches are supported, so an argument's low 32-bit word is at its own offset;
# the kernel reads modes (umode_t) and clone's flags from that word only.
_OFFSET_NR = 0
_OFFSET_ARCH = 4
_OFFSET_ARGS = 16

_SECCOMP_SET_MODE_FILTER = 1
#: Filter every thread of the process, not just the caller, or fail.
_SECCOMP_FILTER_FLAG_TSYNC = 1
_PR_SET_NO_NEW_PRIVS = 38

_MACHINES = {"x86_64": (AUDIT_ARCH_X86_64, X86_64), "aarch64": (AUDIT_ARCH_AARCH64, AARCH64)}

#: One instruction: (opcode, jump-if-true, jump-if-false, k); a jump is a label or 0 (next).
#: A bare string in a program marks the place of that label.
_Insn = tuple[int, str | int, str | int, int]


class SeccompError(Exception):
    """The seccomp filter could not be installed."""


def _machine() -> tuple[int, dict[str, int]] | None:
    """This process's audit arch and syscall table, or None where the filter has no table."""
    # A 32-bit or big-endian interpreter on a 64-bit kernel makes other calls than the table's.
    if struct.calcsize("P") != 8 or sys.byteorder != "little":  # noqa: PLR2004 - 64-bit
        return None
    return _MACHINES.get(os.uname().machine)


def _mode_check(label: str, arg: int, *, device: bool) -> list[_Insn | str]:
    """EPERM if the mode at `arg` has a setid bit (or, for a device check, is a device)."""
    load: _Insn = (_LD_W_ABS, 0, 0, _OFFSET_ARGS + 8 * arg)
    if not device:
        return [label, load, (_JSET_K, "eperm", "allow", _SETID)]
    return [
        label,
        load,
        (_JSET_K, "eperm", 0, _SETID),
        (_AND_K, 0, 0, _S_IFMT),
        (_JEQ_K, "eperm", 0, _S_IFCHR),
        (_JEQ_K, "eperm", "allow", _S_IFBLK),
    ]


def program(arch: int, table: dict[str, int]) -> list[tuple[int, int, int, int]]:
    """The filter for one architecture, as (code, jt, jf, k) sock_filter instructions.

    Calls that are allowed whatever their arguments are judged on the arch and the number
    alone, so the kernel (5.11+) caches their verdict and skips the filter for them.
    """
    head: list[_Insn | str] = [
        (_LD_W_ABS, 0, 0, _OFFSET_ARCH),
        (_JEQ_K, 0, "eperm", arch),
        (_LD_W_ABS, 0, 0, _OFFSET_NR),
    ]
    if arch == AUDIT_ARCH_X86_64:
        head.append((_JSET_K, "eperm", 0, X32_SYSCALL_BIT))
    head += [(_JEQ_K, "eperm", 0, table[name]) for name in DENIED if name in table]
    head += [(_JEQ_K, "enosys", 0, table[name]) for name in UNJUDGED if name in table]
    tail: list[_Insn | str] = []
    # One check per argument position, shared by the calls whose mode sits there.
    for kind, args in (("setid", SETID_MODE_ARG), ("device", DEVICE_MODE_ARG)):
        present = {name: arg for name, arg in args.items() if name in table}
        head += [(_JEQ_K, f"{kind}{arg}", 0, table[name]) for name, arg in present.items()]
        for arg in sorted(set(present.values())):
            tail += _mode_check(f"{kind}{arg}", arg, device=kind == "device")
    head += [(_JEQ_K, "clone", 0, table["clone"]), (_RET_K, 0, 0, _RET_ALLOW)]
    tail += ["clone", (_LD_W_ABS, 0, 0, _OFFSET_ARGS), (_JSET_K, "eperm", "allow", CLONE_NEW_ANY)]
    tail += ["allow", (_RET_K, 0, 0, _RET_ALLOW)]
    tail += ["eperm", (_RET_K, 0, 0, _RET_ERRNO | _EPERM)]
    tail += ["enosys", (_RET_K, 0, 0, _RET_ERRNO | _ENOSYS)]
    return _assemble([*head, *tail])


def _assemble(source: list[_Insn | str]) -> list[tuple[int, int, int, int]]:
    """Resolve labels into classic BPF's forward jump offsets (0-255 instructions ahead)."""
    places: dict[str, int] = {}
    index = 0
    for item in source:
        if isinstance(item, str):
            places[item] = index
        else:
            index += 1
    out: list[tuple[int, int, int, int]] = []
    for item in source:
        if isinstance(item, str):
            continue
        code, jt, jf, k = item
        here = len(out) + 1
        jumps = [places[j] - here if isinstance(j, str) else j for j in (jt, jf)]
        if not all(0 <= j <= 255 for j in jumps):  # noqa: PLR2004 - u8 offsets
            raise SeccompError(f"filter jump out of range at instruction {len(out)}")
        out.append((code, jumps[0], jumps[1], k))
    return out


def seccomp_available() -> bool:
    """Whether this kernel and machine can take the filter (SECCOMP_MODE_FILTER, known arch)."""
    machine = _machine()
    if machine is None:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    # The documented probe: a filter mode the kernel knows fails on the NULL program (EFAULT);
    # one it doesn't, or a seccomp() the container forbids, fails otherwise.
    result = libc.syscall(machine[1]["seccomp"], _SECCOMP_SET_MODE_FILTER, 0, None)
    return bool(result == -1 and ctypes.get_errno() == errno.EFAULT)


def install_filter() -> None:
    """Filter this process, every thread of it and every child it will have, for good.

    Sets no_new_privs first (the kernel's condition for an unprivileged filter, and no exec
    can gain privileges around it anyway).

    Raises:
        SeccompError: the machine has no syscall table here, or the kernel refused the filter.
    """
    machine = _machine()
    if machine is None:
        raise SeccompError(
            f"no seccomp syscall table for {os.uname().machine} with a "
            f"{struct.calcsize('P') * 8}-bit {sys.byteorder}-endian Python "
            "(supported: x86_64, aarch64)"
        )
    arch, table = machine
    load(program(arch, table), table["seccomp"])


def load(insns: list[tuple[int, int, int, int]], seccomp_nr: int) -> None:
    """Set no_new_privs and install a classic-BPF seccomp program on every thread, for good.

    Raises:
        SeccompError: the kernel refused no_new_privs or the program.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    code = b"".join(struct.pack("=HBBI", *insn) for insn in insns)
    buffer = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog: unsigned short len, then (aligned) struct sock_filter *filter.
    fprog = ctypes.create_string_buffer(struct.pack("@HP", len(insns), ctypes.addressof(buffer)))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SeccompError(f"no_new_privs: {os.strerror(ctypes.get_errno())}")
    result = libc.syscall(seccomp_nr, _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_TSYNC, fprog)
    if result > 0:
        raise SeccompError(f"seccomp: thread {result} could not take the filter")
    if result != 0:
        raise SeccompError(f"seccomp: {os.strerror(ctypes.get_errno())}")
