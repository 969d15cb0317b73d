"""A network namespace of the test's own, joined to the host by a veth pair in 198.18.0.0/15 (the
benchmarking range): addresses for backends that the API server accepts in EndpointSlices (it refuses
loopback ones) and that no real network uses. Traffic to them never leaves the machine."""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def _free_subnet() -> int:
    """A third octet N such that 198.18.N.0/24 is on no interface yet (several test runs may share a host)."""
    used = _ip("-4", "-o", "addr", "show").stdout
    start = os.getpid() % 200 + 20
    for i in range(250):
        n = (start + i) % 250 + 1
        if f" 198.18.{n}." not in used:
            return n
    raise RuntimeError("no free 198.18.N.0/24 subnet")


class NetNamespace:
    """`ip netns` namespace NAME with a veth pair: host side 198.18.N.1/24, namespace side .2 and more."""

    def __init__(self, tag: str) -> None:
        self.name = f"cilia-{tag}-{os.getpid()}"
        self.host_if = f"cv{os.getpid() % 100000}{tag[:4]}h"[:15]
        self.ns_if = self.host_if[:-1] + "n"
        self.subnet = _free_subnet()
        self.addresses: list[str] = []
        self._procs: list[subprocess.Popen[str]] = []

    def address(self, host: int) -> str:
        return f"198.18.{self.subnet}.{host}"

    def create(self, hosts: int = 3) -> NetNamespace:
        """The namespace with `hosts` addresses (198.18.N.2 ...) on its side of the pair."""
        try:
            _ip("netns", "add", self.name)
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.name)
            _ip("addr", "add", f"{self.address(1)}/24", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            for i in range(hosts):
                addr = self.address(2 + i)
                _ip("-n", self.name, "addr", "add", f"{addr}/24", "dev", self.ns_if)
                self.addresses.append(addr)
            _ip("-n", self.name, "link", "set", self.ns_if, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def echo_backends(self, *specs: tuple[str, str, int], timeout: float = 20.0) -> subprocess.Popen[str]:
        """Start echo backends (name, address, port) inside the namespace (support.backends); stopped by close()."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, sys.executable, "-m", "support.backends",
                                 *[f"{n}={a}:{p}" for n, a, p in specs]],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=str(TESTS))
        self._procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            raise RuntimeError(f"echo backends in {self.name} did not start within {timeout} s: {line!r}")
        return proc

    def close(self) -> None:
        for proc in self._procs:
            with contextlib.suppress(OSError, ValueError):
                if proc.stdin is not None:
                    proc.stdin.close()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._procs.clear()
        _ip("link", "del", self.host_if, check=False)
        _ip("netns", "del", self.name, check=False)


@contextlib.contextmanager
def netns(tag: str, hosts: int = 3) -> Iterator[NetNamespace]:
    ns = NetNamespace(tag).create(hosts)
    try:
        yield ns
    finally:
        ns.close()
