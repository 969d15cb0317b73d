"""The loaded redirect programs and their maps: the only module that imports bcc.

`Datapath` compiles `redirect.c`, loads every program, pins its maps and the cgroup links it
creates under one bpffs directory, and brings maps and attachments in line with a RedirectPlan.
Pinned links keep a SIGKILLed agent's redirects working; `reclaim()` removes them on the next
start, and `close()` detaches everything on a clean exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any

from cilia.bpf import sys as bsys
from cilia.bpf.errors import BpfError
from cilia.bpf.policy import Endpoint, RedirectPlan

log = logging.getLogger(__name__)

PROGRAMS = ("cilia_connect4", "cilia_connect6", "cilia_sockops", "cilia_getsockopt", "cilia_sk_msg")
MAPS = (
    "cilia_svc",
    "cilia_egress",
    "cilia_pods",
    "cilia_proxies",
    "cilia_inbound",
    "cilia_cookie",
    "cilia_origdst",
    "cilia_cfg",
    "cilia_stats",
    "cilia_pairs",
)
STAT_NAMES = (
    "redirected",
    "inbound_redirected",
    "origdst_hit",
    "origdst_miss",
    "sockmap_add",
    "msg_redirect",
    "egress_redirected",
)
CFG_SOCKMAP = 0
CFG_INBOUND_MARK = 1

# role -> (program, attach type) pairs attached to a cgroup of that role.
_ROLE_ATTACH = {
    "pod": (
        ("cilia_connect4", bsys.ATTACH_INET4_CONNECT),
        ("cilia_connect6", bsys.ATTACH_INET6_CONNECT),
        ("cilia_sockops", bsys.ATTACH_SOCK_OPS),
    ),
    "proxy": (
        ("cilia_connect4", bsys.ATTACH_INET4_CONNECT),
        ("cilia_connect6", bsys.ATTACH_INET6_CONNECT),
        ("cilia_sockops", bsys.ATTACH_SOCK_OPS),
        ("cilia_getsockopt", bsys.ATTACH_GETSOCKOPT),
    ),
    "observer": (
        ("cilia_sockops", bsys.ATTACH_SOCK_OPS),
        ("cilia_getsockopt", bsys.ATTACH_GETSOCKOPT),
    ),
}

# bcc compiles with clang and keeps process-global state; serialise loads.
_LOAD_LOCK = threading.Lock()


@dataclass(frozen=True)
class ReclaimResult:
    links: int
    pins: int


def reclaim(pin_dir: str) -> ReclaimResult:
    """Detach and unpin what an earlier agent left in `pin_dir` (e.g. after SIGKILL)."""
    links = pins = 0
    if not os.path.isdir(pin_dir):
        return ReclaimResult(0, 0)
    for name in sorted(os.listdir(pin_dir)):
        path = os.path.join(pin_dir, name)
        if name.startswith("link_"):
            try:
                fd = bsys.obj_get(path)
            except BpfError as exc:
                log.warning("reclaim: cannot open %s: %s", path, exc)
            else:
                try:
                    bsys.link_detach(fd)
                    links += 1
                except BpfError as exc:
                    log.warning("reclaim: cannot detach %s: %s", path, exc)
                finally:
                    os.close(fd)
        os.unlink(path)
        pins += 1
    with contextlib.suppress(OSError):
        os.rmdir(pin_dir)
    return ReclaimResult(links, pins)


def _ip_bytes(ip: str) -> bytes:
    return socket.inet_aton(ip)


def _egress_key(cgroup_id: int, cidr: str) -> bytes:
    """An LPM trie key: prefix length (64 cgroup id bits + the CIDR's), cgroup id as two u32, address."""
    ip, _, plen = cidr.partition("/")
    return struct.pack("=III", 64 + int(plen), cgroup_id & 0xFFFFFFFF, cgroup_id >> 32) + _ip_bytes(ip)


def _target(ep: Endpoint) -> bytes:
    return _ip_bytes(ep.ip) + struct.pack("!H", ep.port) + b"\0\0"


class Datapath:
    """Loaded programs + maps; attachments keyed by (cgroup dir, role)."""

    def __init__(self, pin_dir: str, sockmap: bool = False) -> None:
        import bcc  # the project's only bcc import

        self._bcc = bcc
        self.pin_dir = pin_dir
        src = resources.files("cilia.bpf").joinpath("redirect.c").read_text(encoding="utf-8")
        with _LOAD_LOCK:
            self._b = bcc.BPF(text=src.encode())
            pt, at = bcc.BPFProgType, bcc.BPFAttachType
            self._progs: dict[str, Any] = {
                "cilia_connect4": self._b.load_func(
                    b"cilia_connect4", pt.CGROUP_SOCK_ADDR, attach_type=at.CGROUP_INET4_CONNECT
                ),
                "cilia_connect6": self._b.load_func(
                    b"cilia_connect6", pt.CGROUP_SOCK_ADDR, attach_type=at.CGROUP_INET6_CONNECT
                ),
                "cilia_sockops": self._b.load_func(b"cilia_sockops", pt.SOCK_OPS),
                "cilia_getsockopt": self._b.load_func(
                    b"cilia_getsockopt", pt.CGROUP_SOCKOPT, attach_type=at.CGROUP_GETSOCKOPT
                ),
                "cilia_sk_msg": self._b.load_func(b"cilia_sk_msg", pt.SK_MSG),
            }
        self.prog_ids = {name: bsys.prog_info(fn.fd).id for name, fn in self._progs.items()}
        self._pairs_fd = int(bcc.libbcc.lib.bpf_table_fd(self._b.module, b"cilia_pairs"))
        os.makedirs(pin_dir, exist_ok=True)
        for name in MAPS:
            bsys.obj_pin(self._map_fd(name), os.path.join(pin_dir, f"map_{name}"))
        self._links: dict[tuple[str, str], list[tuple[int, str]]] = {}
        self._sockmap = False
        self._plan = RedirectPlan()
        self.set_sockmap(sockmap)

    # ---- maps -------------------------------------------------------------------------------

    def _map_fd(self, name: str) -> int:
        if name == "cilia_pairs":
            return self._pairs_fd
        return int(self._b[name.encode()].map_fd)

    def _table(self, name: str) -> Any:
        return self._b[name.encode()]

    def _put(self, name: str, key: bytes, value: bytes) -> None:
        t = self._table(name)
        t[t.Key.from_buffer_copy(key)] = t.Leaf.from_buffer_copy(value)

    def _delete(self, name: str, key: bytes) -> None:
        t = self._table(name)
        with contextlib.suppress(KeyError):
            del t[t.Key.from_buffer_copy(key)]

    def _sync_map(self, name: str, want: dict[bytes, bytes]) -> None:
        t = self._table(name)
        have = {bytes(k): bytes(v) for k, v in t.items()}
        for key, value in want.items():
            if have.get(key) != value:
                self._put(name, key, value)
        for key in have.keys() - want.keys():
            self._delete(name, key)

    def set_sockmap(self, on: bool) -> None:
        """Switch sockhash splicing of proxied local socket pairs on or off (live)."""
        if on == self._sockmap:
            self._put("cilia_cfg", struct.pack("=I", CFG_SOCKMAP), struct.pack("=I", int(on)))
            return
        prog_fd = self._progs["cilia_sk_msg"].fd
        if on:
            bsys.prog_attach(prog_fd, self._pairs_fd, bsys.ATTACH_SK_MSG_VERDICT)
        else:
            bsys.prog_detach(prog_fd, self._pairs_fd, bsys.ATTACH_SK_MSG_VERDICT)
        self._put("cilia_cfg", struct.pack("=I", CFG_SOCKMAP), struct.pack("=I", int(on)))
        self._sockmap = on

    @property
    def sockmap(self) -> bool:
        return self._sockmap

    # ---- attachments ------------------------------------------------------------------------

    def _attach(self, cgroup: str, role: str) -> None:
        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        made: list[tuple[int, str]] = []
        try:
            cgid = bsys.cgroup_id(cgroup)
            for prog, attach_type in _ROLE_ATTACH[role]:
                link = bsys.link_create(self._progs[prog].fd, fd, attach_type)
                pin = os.path.join(self.pin_dir, f"link_{cgid}_{bsys.ATTACH_TYPE_NAMES[attach_type]}_{role}")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(pin)
                made.append((link, pin))
                bsys.obj_pin(link, pin)
        except BaseException:
            for link, pin in made:
                self._drop_link(link, pin)
            raise
        finally:
            os.close(fd)
        self._links[(cgroup, role)] = made

    def _drop_link(self, link: int, pin: str) -> None:
        try:
            bsys.link_detach(link)
        except BpfError as exc:
            log.warning("detach %s: %s", pin, exc)
        os.close(link)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pin)

    def _detach(self, key: tuple[str, str]) -> None:
        for link, pin in self._links.pop(key, []):
            self._drop_link(link, pin)

    def attachments(self) -> dict[str, str]:
        """cgroup directory -> role for every cgroup holding our programs."""
        return {cg: role for cg, role in self._links}

    # ---- plan -------------------------------------------------------------------------------

    def apply(self, plan: RedirectPlan) -> list[str]:
        """Bring maps and attachments in line with `plan`; returns errors (cgroups it could not attach)."""
        errors: list[str] = []
        want = {(cg, role) for cg, role in plan.cgroups().items()}
        for key in list(self._links):
            if key not in want:
                self._detach(key)
        listener = dict(plan.listener_ports)
        self._sync_map("cilia_svc", {_target(ep): struct.pack("!H", listener.get(ep, 0)) + b"\0\0"
                                     for ep in plan.services})
        self._sync_map(
            "cilia_pods",
            {
                struct.pack("=Q", p.cgroup_id): _target(p.proxy) + struct.pack("=II", p.mode, 0)
                for p in plan.pods
            },
        )
        self._sync_map("cilia_egress", {_egress_key(p.cgroup_id, cidr): struct.pack("=I", 1)
                                        for p in plan.pods for cidr in p.egress})
        self._sync_map(
            "cilia_proxies", {struct.pack("=Q", p.cgroup_id): struct.pack("=I", 1) for p in plan.proxies}
        )
        self._sync_map(
            "cilia_inbound",
            {
                _ip_bytes(i.pod_ip) + struct.pack("!H", i.port) + b"\0\0": _target(i.to)
                + struct.pack("=Q", i.owner_cgroup_id)
                for i in plan.inbound
            },
        )
        self._put("cilia_cfg", struct.pack("=I", CFG_INBOUND_MARK), struct.pack("=I", plan.inbound_mark))
        for key in sorted(want - set(self._links)):
            try:
                self._attach(*key)
            except (BpfError, OSError) as exc:
                errors.append(f"attach {key[1]} cgroup {key[0]}: {exc}")
        self._plan = plan
        return errors

    # ---- status -----------------------------------------------------------------------------

    def map_counts(self) -> dict[str, int]:
        out = {}
        for name in (
            "cilia_svc",
            "cilia_egress",
            "cilia_pods",
            "cilia_proxies",
            "cilia_inbound",
            "cilia_cookie",
            "cilia_origdst",
        ):
            out[name] = sum(1 for _ in self._table(name).keys())
        return out

    def stats(self) -> dict[str, int]:
        t = self._table("cilia_stats")
        return {name: int(t.sum(t.Key(i)).value) for i, name in enumerate(STAT_NAMES)}

    def programs_attached(self) -> int:
        return sum(len(v) for v in self._links.values()) + (1 if self._sockmap else 0)

    def close(self) -> None:
        """Detach everything, remove the pins, free the programs."""
        for key in list(self._links):
            self._detach(key)
        if self._sockmap:
            with contextlib.suppress(BpfError):
                self.set_sockmap(False)
        for name in MAPS:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.pin_dir, f"map_{name}"))
        with contextlib.suppress(OSError):
            os.rmdir(self.pin_dir)
        self._b.cleanup()
