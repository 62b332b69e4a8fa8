"""The keep manager's handling of a Keep's processes (the Keep and its sim
PSP, from stockade.host.loader): signal, wait without a thread, reap."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess

from stockade.host.loader import KeepHandle


def signame(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def send_signal(handle: KeepHandle, sig: int) -> None:
    """Signal the Keep and its PSP, those of them still running."""
    for proc in (handle.keep, handle.psp):
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)


def reap_rest(handle: KeepHandle, grace: float) -> None:
    """After the Keep process ended: reap the PSP, remove the scratch dir."""
    if handle.psp is not None:
        try:
            handle.psp.wait(grace)
        except subprocess.TimeoutExpired:
            handle.psp.kill()
            handle.psp.wait()
    if handle.scratch is not None:
        shutil.rmtree(handle.scratch, ignore_errors=True)


async def wait_process(handle: KeepHandle) -> int:
    """Exit status of the Keep process (negative: killed by that signal),
    waiting on a pidfd so that no thread is held per Keep."""
    proc = handle.keep
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (OSError, AttributeError):
        pidfd = -1
    if pidfd >= 0:
        ended = asyncio.Event()
        loop.add_reader(pidfd, ended.set)
        try:
            if proc.poll() is None:
                await ended.wait()
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
    while (status := proc.poll()) is None:  # no pidfd, or a zombie not yet reapable
        await asyncio.sleep(0.05)
    return status
