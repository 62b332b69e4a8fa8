"""A warm pool of VM Keeps: started before a client asks, not yet attested.

Under TCG a VM Keep takes seconds to boot (KVM: well under one), while a
process Keep from the fork server is attested in tens of milliseconds. The
keep manager hides the boot: it keeps ``size`` VM Keeps started ahead of
demand (each boots while it waits: kernel up, Keep runtime loaded, then
waiting for its first hello with no time limit: stockade.keep.session
``hello_timeout``) and hands one out on each create; a new one starts in
the background at once. A Keep handed out before it finished booting
simply answers later.

Nothing in a pooled Keep belongs to anybody yet: it has no workload, no
secret and no key that a client has seen; its evidence is requested with
the client's own nonce only after it is handed out, so a pooled Keep is as
fresh to its client as a new one. Pooled Keeps that died (QEMU killed,
the guest powered off) are dropped and replaced, never handed out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from stockade.host.loader import VM_BACKENDS, KeepHandle, start_keep
from stockade.host.vm import VmSpawner

log = logging.getLogger("stockade.host.vmpool")

#: Prefix of pooled Keeps' temporary ids (their log files until handed out).
POOL_ID_PREFIX = "pool"


class VmPool:
    def __init__(self, spawner: VmSpawner, state_dir: Path, size: int = 1) -> None:
        if size < 0:
            raise ValueError("pool size must be 0 or more")
        self.spawner = spawner
        self.state_dir = state_dir
        self.size = size
        self._ready: deque[KeepHandle] = deque()
        self._starting = 0
        self._lock = threading.Lock()
        self._closed = False
        #: Counters for metrics and tests: handed out from the pool / started cold.
        self.hits = 0
        self.misses = 0

    def fill(self) -> None:
        """Start Keeps in the background until ``size`` are ready or starting."""
        with self._lock:
            if self._closed:
                return
            need = self.size - len(self._ready) - self._starting
            self._starting += max(need, 0)
        for _ in range(max(need, 0)):
            threading.Thread(target=self._start_one, daemon=True, name="vm-pool").start()

    def _start_one(self) -> None:
        handle: KeepHandle | None = None
        try:
            handle = start_keep(
                "vm", self.state_dir, keep_id=POOL_ID_PREFIX + secrets.token_hex(6), spawner=self.spawner
            )
        except Exception:
            log.exception("warm pool: a VM Keep failed to start")
        with self._lock:
            self._starting -= 1
            if handle is not None and not self._closed:
                self._ready.append(handle)
                handle = None
        if handle is not None:  # closed meanwhile
            handle.keep.kill()
            handle.close(grace=0)

    def take(self, keep_id: str) -> KeepHandle | None:
        """A live pooled Keep, renamed ``keep_id``; None when none is ready.
        Starts a replacement either way."""
        taken: KeepHandle | None = None
        dead: list[KeepHandle] = []
        with self._lock:
            while self._ready:
                handle = self._ready.popleft()
                if handle.keep.poll() is None:
                    taken = handle
                    break
                dead.append(handle)
            if taken is not None:
                self.hits += 1
            else:
                self.misses += 1
        for handle in dead:
            log.warning(
                "warm pool: dropped a dead VM Keep (%s, exit %s)", handle.keep_id, handle.keep.returncode
            )
            handle.close(grace=0)
        self.fill()
        if taken is None:
            return None
        new_log = taken.log_path.with_name(f"keep-{keep_id}.log")
        with contextlib.suppress(OSError):  # then it keeps its pool name
            os.replace(taken.log_path, new_log)  # QEMU writes through its open descriptor
            taken.log_path = new_log
        taken.keep_id = keep_id
        return taken

    def close(self) -> None:
        """Kill every pooled Keep (at manager shutdown)."""
        with self._lock:
            self._closed = True
            ready, self._ready = list(self._ready), deque()
        for handle in ready:
            handle.keep.kill()
            handle.close(grace=1)

    def ready(self) -> int:
        with self._lock:
            return len(self._ready)


def vm_starter(
    spawner: VmSpawner, pool: VmPool | None, fallback: Callable[..., KeepHandle] = start_keep
) -> Callable[..., KeepHandle]:
    """A manager ``starter``: VM Keeps from the pool (or started cold when
    it is empty), other backends from ``fallback``."""

    def start(backend: str, state_dir: Path, keep_id: str | None = None, **kwargs: object) -> KeepHandle:
        if backend not in VM_BACKENDS:
            return fallback(backend, state_dir, keep_id=keep_id, **kwargs)
        if backend != "vm":  # snp, tdx: booted per deploy, never pooled
            return start_keep(backend, state_dir, keep_id=keep_id, spawner=spawner)
        if pool is not None and keep_id is not None:
            handle = pool.take(keep_id)
            if handle is not None:
                log.info("Keep %s: a warm VM Keep from the pool (booted, not yet attested)", keep_id)
                return handle
            log.info("Keep %s: no warm VM Keep ready; booting one", keep_id)
        return start_keep("vm", state_dir, keep_id=keep_id, spawner=spawner)

    return start
