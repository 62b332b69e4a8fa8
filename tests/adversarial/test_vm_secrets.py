"""Secrets and stdin of a VM Keep never rest on host storage (issue 15).

As tests/adversarial/test_secrets_off_host.py for a process Keep, with
``--backend vm``: the secret and the stdin travel inside the attested TLS
channel through QEMU's virtio-serial port into the guest, whose files live
in the guest's RAM. While the workload runs, and after the client is killed
(its QEMU dies with it: setpriv --pdeathsig), no canary is in /dev/shm,
/tmp, the state directory, the Keep's log (the VM's serial console), or
any process's command line or environment. A vm Keep gives NO hardware
protection: the host can read the guest's memory (QEMU's), which this
sweep does not search; it shows that nothing is *written* where the host
keeps things.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adversarial.canary import Canaries
from conftest import need_vm
from stockade.procfs import read_stat

pytestmark = [pytest.mark.slow, pytest.mark.vm]


def _alive(pid: int) -> bool:
    fields = read_stat(pid)
    return fields is not None and fields[0] != "Z"


def _qemu_children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        out += [k for k in kids if Path(f"/proc/{k}/comm").read_text().startswith("qemu-system")]
    return out


def test_vm_keep_leaves_no_secret_or_stdin_on_the_host(
    state_dir: Path, keep_image: Path, wasm, tmp_path: Path, canaries: Canaries
) -> None:
    need_vm()
    inputs = tmp_path / "inputs"  # the client's own copies: excluded from the search
    inputs.mkdir()
    canaries.client_file(inputs / "token", "secret")
    canaries.client_file(inputs / "stdin", "stdin")
    client = subprocess.Popen(
        [
            *(sys.executable, "-m", "stockade", "run", "--backend", "vm", "--image", str(keep_image)),
            *("--allow-sim", "-q", "--timeout", "120", "--secret", f"token=@{inputs / 'token'}"),
            *("--stdin", str(inputs / "stdin"), str(wasm("sleep"))),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "STOCKADE_STATE_DIR": str(state_dir)},
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == b"sleeping\n"  # in the VM, holding both canaries
        (qemu,) = _qemu_children(client.pid)
        for root in (Path("/dev/shm"), Path("/tmp"), state_dir):
            canaries.scan_tree(root)
        canaries.scan_proc()
        assert [str(f) for f in canaries.findings] == []
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        deadline = time.monotonic() + 10
        while _alive(qemu) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(qemu), "QEMU outlived its killed client"
        for root in (Path("/dev/shm"), Path("/tmp"), state_dir):
            canaries.scan_tree(root)
        canaries.scan_proc()
        assert [str(f) for f in canaries.findings] == []
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
