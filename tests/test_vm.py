"""VM Keeps end to end under QEMU (TCG on these machines): issue 15.

``stockade run --backend vm`` boots the Keep image and prints the
workload's output after verifying the evidence the sim PSP signed over the
image's launch measurement; a deploy through ``stockade host serve
--backend vm`` takes a warm VM Keep from the pool; SIGKILL of QEMU is the
Keep-died error (115) and a clean registry record; a killed client takes
its VM along. The secrets sweep with a VM Keep is in
tests/adversarial/test_vm_secrets.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import EXAMPLES
from manager_support import Server, deploy, running_server
from stockade.image.manifest import load
from stockade.procfs import read_stat

pytestmark = [pytest.mark.slow, pytest.mark.vm]

HELLO = EXAMPLES / "hello" / "hello.wasm"


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    fields = read_stat(pid)
    return fields is not None and fields[0] != "Z"


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_run_vm_prints_the_output_after_verifying_the_image_measurement(stockade, keep_image: Path) -> None:
    proc = stockade(
        "run", "--backend", "vm", "--image", str(keep_image), "--allow-sim", str(HELLO), "Bob", timeout=180
    )
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert proc.stdout.decode() == "Hello, Bob!\narguments: 1\n"
    assert "NO HARDWARE PROTECTION" in err
    image = load(keep_image)
    assert f"measurement  {image.manifest.measurements['vm']}" in err
    assert "measurement pinned to this Keep image" in err
    assert "VM Keep under TCG" in err or "VM Keep under KVM" in err
    assert "Traceback" not in err


def test_run_vm_refuses_an_image_changed_after_its_build(stockade, keep_image: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "img"
    shutil.copytree(keep_image, copy)
    (copy / "cmdline").write_text("console=ttyS0 rdinit=/bin/sh")
    proc = stockade("run", "--backend", "vm", "--image", str(copy), "--allow-sim", str(HELLO))
    assert proc.returncode == 121, proc.stderr
    assert b"does not match the image manifest" in proc.stderr and b"Traceback" not in proc.stderr


def _start_sleeper(state_dir: Path, keep_image: Path, wasm) -> subprocess.Popen[bytes]:
    client = subprocess.Popen(
        [
            *(sys.executable, "-m", "stockade", "run", "--backend", "vm", "--image", str(keep_image)),
            *("--allow-sim", "-q", "--timeout", "120", str(wasm("sleep"))),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "STOCKADE_STATE_DIR": str(state_dir)},
    )
    assert client.stdout is not None
    assert client.stdout.readline() == b"sleeping\n"  # booted, attested, running
    return client


def _qemu_of(client: subprocess.Popen[bytes]) -> int:
    (qemu,) = [c for c in _children(client.pid) if _comm(c).startswith("qemu-system")]
    return qemu


def test_sigkill_of_qemu_is_keep_died(state_dir: Path, keep_image: Path, wasm) -> None:
    client = _start_sleeper(state_dir, keep_image, wasm)
    try:
        qemu = _qemu_of(client)
        os.kill(qemu, signal.SIGKILL)
        _, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 115, err.decode()
    assert b"Keep died" in err and b"Keep log:" in err and b"Traceback" not in err


def test_a_killed_client_takes_its_vm_along(state_dir: Path, keep_image: Path, wasm) -> None:
    client = _start_sleeper(state_dir, keep_image, wasm)
    qemu = _qemu_of(client)
    client.kill()
    client.wait()
    assert _wait_gone(qemu, 10), "QEMU outlived its client (setpriv --pdeathsig)"


@pytest.fixture(scope="module")
def vm_server(
    state_dir: Path, tmp_path_factory: pytest.TempPathFactory, keep_image: Path
) -> Iterator[Server]:
    with running_server(
        state_dir,
        tmp_path_factory,
        serve_args=("--backend", "vm", "--backend", "sim", "--image", str(keep_image), "--vm-pool", "1"),
    ) as server:
        yield server


def _wait_for(path: Path, text: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return True
        time.sleep(0.1)
    return False


def test_deploy_through_the_manager_takes_a_warm_vm_keep(vm_server: Server, keep_image: Path) -> None:
    # The pool's VM Keep is booted when its Keep runtime logged its disk.
    logs = vm_server.state / "logs"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not any(
        "workload disk" in p.read_text(errors="replace") for p in logs.glob("keep-pool*.log")
    ):
        time.sleep(0.2)
    proc = deploy(
        vm_server,
        "--backend",
        "vm",
        "--image",
        str(keep_image),
        "--allow-sim",
        str(HELLO),
        "Ann",
        timeout=180,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert proc.stdout.decode().startswith("Hello, Ann!")
    assert f"measurement  {load(keep_image).manifest.measurements['vm']}" in err
    assert _wait_for(vm_server.log, "a warm VM Keep from the pool", 5), vm_server.log.read_text()[-2000:]
    import httpx

    metrics = httpx.get(f"{vm_server.url}/metrics").text
    assert 'stockade_vm_pool_takes_total{result="hit"} 1.0' in metrics, metrics
    assert "stockade_vm_pool_ready" in metrics


def test_a_backend_the_manager_does_not_run_is_refused(vm_server: Server) -> None:
    import httpx

    from manager_support import problem_of

    resp = httpx.post(
        f"{vm_server.url}/v1/keeps",
        headers=vm_server_headers(vm_server),
        content=_cbor({"backend": "sim-tdx"}),
    )
    assert resp.status_code == 422
    assert "vm" in str(problem_of(resp))


def vm_server_headers(server: Server) -> dict[str, str]:
    return {"authorization": f"Bearer {server.token}", "content-type": "application/cbor"}


def _cbor(obj: object) -> bytes:
    import cbor2

    return cbor2.dumps(obj)


def test_sigkill_of_a_managed_vm_is_keep_died_and_a_failed_record(
    vm_server: Server, keep_image: Path, wasm
) -> None:
    from stockade.client.remote import ManagerClient

    with ManagerClient(vm_server.url, vm_server.token) as client:
        before = {k["id"] for k in client.list()}
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "stockade", "deploy", "--host", vm_server.url),
                *("--token-file", str(vm_server.token_file), "--backend", "vm", "--image", str(keep_image)),
                *("--sim-root", str(vm_server.state / "sim" / "chip" / "ark.der")),
                *("--allow-sim", "-q", "--timeout", "120", str(wasm("sleep"))),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"sleeping\n"
            (keep,) = [k for k in client.list() if k["id"] not in before]
            assert keep["state"] == "running" and keep["backend"] == "vm"
            assert _comm(keep["pid"]).startswith("qemu-system")
            os.kill(keep["pid"], signal.SIGKILL)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 115, err.decode()
        assert b"Keep died" in err and b"Traceback" not in err
        deadline = time.monotonic() + 15
        while (rec := client.get(keep["id"]))["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rec["state"] == "failed"
        assert rec["exit_status"] == -signal.SIGKILL
        assert "SIGKILL" in rec["detail"]


def test_a_policy_pinning_another_image_refuses_the_keep(stockade, keep_image: Path, tmp_path: Path) -> None:
    """The client sees the measurement of what QEMU booted: a policy written
    for an image whose command line differs by one byte refuses this one."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(keep_image, other)
    cmdline = (other / "cmdline").read_text().replace("loglevel=4", "loglevel=5")
    import json

    doc = json.loads((other / "manifest.json").read_text())
    doc["cmdline"] = cmdline
    (other / "manifest.json").write_text(json.dumps(doc))
    (other / "cmdline").write_text(cmdline)
    policy = tmp_path / "policy.toml"
    proc = stockade("policy", "reference", "--platform", "vm", "--image", str(other), "-o", str(policy))
    assert proc.returncode == 0, proc.stderr
    mine = stockade("policy", "reference", "--platform", "vm", "--image", str(keep_image), "--json")
    assert json.loads(mine.stdout)["measurement"] not in policy.read_text()
    proc = stockade(
        "run",
        "--backend",
        "vm",
        "--image",
        str(keep_image),
        "--policy",
        str(policy),
        "--allow-sim",
        str(HELLO),
    )
    assert proc.returncode == 112, proc.stderr.decode()
    assert b"sim.measurements" in proc.stderr and proc.stdout == b""


def test_limits_beyond_the_guest_ram_are_refused(stockade, keep_image: Path) -> None:
    """Memory and disk both live in the guest's RAM: limits that cannot fit
    are refused before the workload starts (117), not left to the guest's
    OOM killer."""
    proc = stockade(
        "run",
        "--backend",
        "vm",
        "--image",
        str(keep_image),
        "--allow-sim",
        "-q",
        "--memory",
        "900M",
        str(HELLO),
    )
    assert proc.returncode == 117, proc.stderr.decode()
    assert b"exceed what this VM Keep's RAM holds" in proc.stderr and proc.stdout == b""
