"""Thin bpf(2) and mount(2) wrappers via ctypes.

bcc compiles and loads programs but attaches cgroup programs with the legacy BPF_PROG_ATTACH and
has no link, pin or query API. The agent needs links (pinned in bpffs, so a SIGKILLed agent's
attachments can be found and reclaimed on restart) and attachment queries (for status and tests),
so those few commands are issued here directly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass

from cilia.bpf.errors import BpfError

_SYS_BPF = 321  # x86_64; aarch64 uses 280
if os.uname().machine in ("aarch64", "arm64"):
    _SYS_BPF = 280

# enum bpf_cmd
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_LINK_CREATE = 28
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_DETACH = 34

# enum bpf_attach_type (the ones cilia uses)
ATTACH_SOCK_OPS = 3
ATTACH_SK_MSG_VERDICT = 7
ATTACH_INET4_CONNECT = 10
ATTACH_INET6_CONNECT = 11
ATTACH_GETSOCKOPT = 21

ATTACH_TYPE_NAMES = {
    ATTACH_SOCK_OPS: "sock_ops",
    ATTACH_SK_MSG_VERDICT: "sk_msg_verdict",
    ATTACH_INET4_CONNECT: "connect4",
    ATTACH_INET6_CONNECT: "connect6",
    ATTACH_GETSOCKOPT: "getsockopt",
}
CGROUP_ATTACH_TYPES = (ATTACH_INET4_CONNECT, ATTACH_INET6_CONNECT, ATTACH_SOCK_OPS, ATTACH_GETSOCKOPT)

_ATTR_SIZE = 144
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    ret = _libc.syscall(_SYS_BPF, cmd, attr, _ATTR_SIZE)
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(f"{what}: {os.strerror(err)}", errno_=err)
    return int(ret)


def _attr(fmt: str, *values: int) -> ctypes.Array[ctypes.c_char]:
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """Attach a program to a cgroup as a bpf_link; returns the link fd."""
    return _bpf(BPF_LINK_CREATE, _attr("=IIII", prog_fd, target_fd, attach_type, 0), "link create")


def link_detach(link_fd: int) -> None:
    _bpf(BPF_LINK_DETACH, _attr("=I", link_fd), "link detach")


def prog_attach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    """Legacy attach (used for sk_msg on a sockhash, which has no link type on older kernels)."""
    _bpf(BPF_PROG_ATTACH, _attr("=IIII", target_fd, prog_fd, attach_type, 0), "prog attach")


def prog_detach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    _bpf(BPF_PROG_DETACH, _attr("=IIII", target_fd, prog_fd, attach_type, 0), "prog detach")


def obj_pin(fd: int, path: str) -> None:
    p = ctypes.create_string_buffer(os.fsencode(path))
    _bpf(BPF_OBJ_PIN, _attr("=QI", ctypes.addressof(p), fd), f"pin {path}")


def obj_get(path: str) -> int:
    p = ctypes.create_string_buffer(os.fsencode(path))
    return _bpf(BPF_OBJ_GET, _attr("=QII", ctypes.addressof(p), 0, 0), f"open pin {path}")


def prog_get_fd_by_id(prog_id: int) -> int:
    return _bpf(BPF_PROG_GET_FD_BY_ID, _attr("=I", prog_id), f"prog id {prog_id}")


def _info(fd: int, size: int) -> bytes:
    info = ctypes.create_string_buffer(size)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, _attr("=IIQ", fd, size, ctypes.addressof(info)), "object info")
    return info.raw


@dataclass(frozen=True)
class ProgInfo:
    id: int
    type: int
    name: str


@dataclass(frozen=True)
class LinkInfo:
    id: int
    prog_id: int
    cgroup_id: int
    attach_type: int


def prog_info(fd: int) -> ProgInfo:
    raw = _info(fd, 232)
    ptype, pid = struct.unpack_from("=II", raw, 0)
    name = raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    return ProgInfo(id=pid, type=ptype, name=name)


def link_info(fd: int) -> LinkInfo:
    raw = _info(fd, 64)
    _ltype, lid, prog_id = struct.unpack_from("=III", raw, 0)
    cgroup_id, attach_type = struct.unpack_from("=QI", raw, 16)
    return LinkInfo(id=lid, prog_id=prog_id, cgroup_id=cgroup_id, attach_type=attach_type)


def map_id(fd: int) -> int:
    return int(struct.unpack_from("=I", _info(fd, 96), 4)[0])


def prog_query(target_fd: int, attach_type: int) -> list[int]:
    """Program ids attached (effective or not) directly to a cgroup for one attach type."""
    ids = (ctypes.c_uint32 * 64)()
    attr = _attr("=IIIIQI", target_fd, attach_type, 0, 0, ctypes.addressof(ids), 64)
    _bpf(BPF_PROG_QUERY, attr, "prog query")
    count = struct.unpack_from("=I", attr, 24)[0]
    return [int(ids[i]) for i in range(min(count, 64))]


def cgroup_programs(cgroup_dir: str) -> dict[str, list[ProgInfo]]:
    """Programs attached directly to a cgroup, by attach type name (empty types left out)."""
    fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        out: dict[str, list[ProgInfo]] = {}
        for attach_type in CGROUP_ATTACH_TYPES:
            infos = []
            for pid in prog_query(fd, attach_type):
                try:
                    pfd = prog_get_fd_by_id(pid)
                except BpfError as exc:
                    if exc.errno == errno.ENOENT:
                        continue
                    raise
                try:
                    infos.append(prog_info(pfd))
                finally:
                    os.close(pfd)
            if infos:
                out[ATTACH_TYPE_NAMES[attach_type]] = infos
        return out
    finally:
        os.close(fd)


def cgroup_id(path: str) -> int:
    """A cgroup2 directory's id: what bpf_get_current_cgroup_id() returns for its members."""
    return os.stat(path).st_ino


def mounts(fstype: str) -> list[str]:
    """Mount points of a filesystem type, in /proc/mounts order."""
    out = []
    with open("/proc/mounts", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == fstype:
                out.append(parts[1].replace("\\040", " "))
    return out


def mount(fstype: str, target: str) -> None:
    os.makedirs(target, exist_ok=True)
    if _libc.mount(fstype.encode(), os.fsencode(target), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        raise BpfError(f"mount {fstype} on {target}: {os.strerror(err)}", errno_=err)


def umount(target: str) -> None:
    if _libc.umount2(os.fsencode(target), 0) != 0:
        err = ctypes.get_errno()
        raise BpfError(f"umount {target}: {os.strerror(err)}", errno_=err)
