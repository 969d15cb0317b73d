"""cilia in Kubernetes mode against the in-process fake API server (tests/kubefake).

`KubeControlPlane` runs a ControlPlane with `--kubernetes` options on the current event loop (async tests).
`KubeWorld` runs the fake API server and any number of such control planes on an event loop in a thread
of its own, for synchronous tests that drive real Envoy processes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from cilia.app import ControlPlane, Debounce, ServeOptions
from cilia.k8s.kubemode import KubeOptions
from cilia.k8s.kubesource import WatchOptions
from cilia.k8s.leader import LeaseConfig
from cilia.k8s.statuswriter import WriteLimits
from kubefake import FakeApiServer

FAST_WATCH = WatchOptions(backoff_initial_s=0.05, backoff_max_s=0.5, crd_retry_s=0.2, initial_sync_timeout_s=5.0)
FAST_STATUS = WriteLimits(min_interval_s=0.05, rate_per_s=200.0, burst=50, poll_s=0.05)
FAST_LEASE = LeaseConfig(name="cilia-leader", namespace="default", lease_duration_s=0.8, renew_deadline_s=0.5,
                         retry_period_s=0.1)


def kube_options(api: FakeApiServer, *, identity: str = "", leader_election: bool = True,
                 lease: LeaseConfig = FAST_LEASE, status: WriteLimits = FAST_STATUS,
                 watch: WatchOptions = FAST_WATCH) -> KubeOptions:
    if identity:
        lease = LeaseConfig(lease.name, lease.namespace, identity, lease.lease_duration_s, lease.renew_deadline_s,
                            lease.retry_period_s)
    return KubeOptions(kubeconfig=api.kubeconfig_path(), watch=watch, status=status, lease=lease,
                       leader_election=leader_election)


class KubeControlPlane:
    """A kube-mode ControlPlane as a task of the running loop. `await start()`, `await stop()`."""

    def __init__(self, api: FakeApiServer, *, debounce: Debounce | None = None, **kube: Any) -> None:
        self.opts = ServeOptions(xds_address="127.0.0.1:0", admin_address="127.0.0.1:0",
                                 debounce=debounce or Debounce(0.02, 0.2), kubernetes=kube_options(api, **kube))
        self.cp = ControlPlane(self.opts)
        self.task: asyncio.Task[None] | None = None

    async def start(self, within: float = 10.0) -> KubeControlPlane:
        ready = asyncio.Event()
        self.task = asyncio.create_task(self.cp.run(ready))
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({self.task, waiter}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if self.task in done:
                self.task.result()  # raises the start-up error
            raise TimeoutError("kube-mode control plane did not start")
        return self

    @property
    def kube(self) -> Any:
        return self.cp.kube

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.cp.stop()
            await asyncio.wait_for(self.task, 10)

    async def crash(self) -> None:
        """Stop without releasing the Lease, as a killed process would."""
        if self.kube is not None and self.kube.elector is not None:
            async def no_release() -> None:
                return None

            self.kube.elector.release = no_release
        await self.stop()


async def wait_until(pred: Callable[[], bool], within: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within} s: {what}")
        await asyncio.sleep(0.01)


class KubeWorld:
    """The fake API server (and kube-mode control planes) on an event loop in a background thread."""

    def __init__(self, *, absent_groups: Iterable[str] = (), bookmark_interval: float = 0.2) -> None:
        self._absent = tuple(absent_groups)
        self._bookmark_interval = bookmark_interval
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="kubeworld", daemon=True)
        self.api: FakeApiServer | None = None
        self.planes: list[KubeControlPlane] = []

    def start(self) -> KubeWorld:
        self._thread.start()
        self.api = self.run(self._start_api())
        return self

    async def _start_api(self) -> FakeApiServer:
        return await FakeApiServer(absent_groups=self._absent, bookmark_interval=self._bookmark_interval).start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a plain function on the loop (the fake and the control planes are not thread-safe)."""
        async def wrapper() -> Any:
            return fn(*args, **kwargs)

        return self.run(wrapper())

    def control_plane(self, **kube: Any) -> KubeControlPlane:
        assert self.api is not None
        api = self.api

        async def make() -> KubeControlPlane:
            return await KubeControlPlane(api, **kube).start()

        plane: KubeControlPlane = self.run(make())
        self.planes.append(plane)
        return plane

    def stop(self) -> None:
        try:
            for plane in self.planes:
                self.run(plane.stop())
            if self.api is not None:
                self.run(self.api.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()
