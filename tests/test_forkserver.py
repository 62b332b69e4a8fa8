"""The Keep fork server (stockade.keep.zygote + stockade.host.forkserver)
and the per-Keep cgroup helper (stockade.host.cgroups), without a manager."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade.host import cgroups as cg
from stockade.host.forkserver import ForkServer, ForkServerError, ForkSpawner, ZygoteChild
from stockade.host.loader import KeepHandle, ResourceLimits, start_keep
from stockade.measure.launch import keep_measurement

pytestmark = pytest.mark.slow


@pytest.fixture
def spawner(tmp_path: Path) -> Iterator[ForkSpawner]:
    sp = ForkSpawner(tmp_path / "logs")
    try:
        yield sp
    finally:
        sp.close()


def _peer_cert(handle: KeepHandle) -> bytes:
    """Send a hello and finish the TLS handshake; the Keep's certificate."""
    from stockade.client.deploy import send_hello

    send_hello(handle.conn)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    handle.conn.settimeout(30)
    tls = ctx.wrap_socket(handle.conn, server_hostname=None)
    cert = tls.getpeercert(binary_form=True)
    assert cert
    tls.close()
    return cert


def _socket_fds(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


def test_forked_keeps_make_their_own_keys_after_the_fork(state_dir: Path, spawner: ForkSpawner) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    handles = [start_keep("sim", state_dir, spawner=spawner) for _ in range(3)]
    try:
        zygote = spawner._servers["keep"].zygote_pid
        for h in handles:
            assert isinstance(h.keep, ZygoteChild) and isinstance(h.psp, ZygoteChild)
            stat = Path(f"/proc/{h.keep.pid}/stat").read_text().rsplit(")", 1)[1].split()
            assert int(stat[1]) == zygote
            # Only its own two sockets: nothing of other Keeps or of the zygote.
            assert _socket_fds(h.keep.pid) == 2
            assert h.measurement == keep_measurement()
        keys = set()
        for h in handles:
            cert = x509.load_der_x509_certificate(_peer_cert(h))
            keys.add(
                cert.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        assert len(keys) == len(handles), "two forked Keeps share a TLS key"
        # The client hung up after the handshake: each Keep ends on its own.
        assert [h.keep.wait(30) for h in handles] == [0] * len(handles)
        assert [h.psp.wait(30) for h in handles if h.psp is not None] == [0] * len(handles)
    finally:
        for h in handles:
            h.keep.kill()
            h.close()


def test_exit_status_signals_and_timeouts(state_dir: Path, spawner: ForkSpawner) -> None:
    h = start_keep("sim", state_dir, spawner=spawner)
    try:
        assert h.keep.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            h.keep.wait(0.2)
        assert h.wait(0.1) is None
        h.keep.send_signal(signal.SIGTERM)
        assert h.keep.wait(30) == -signal.SIGTERM
        assert h.keep.returncode == -signal.SIGTERM
        h.keep.kill()  # already reaped: a no-op, never another process
    finally:
        h.close()
    assert h.psp is not None and h.psp.poll() is not None  # close() reaped it too


def test_killing_the_zygote_kills_its_keeps_and_a_new_one_starts(
    state_dir: Path, spawner: ForkSpawner
) -> None:
    first = start_keep("sim", state_dir, spawner=spawner)
    old = spawner._servers["keep"].zygote_pid
    os.kill(old, signal.SIGKILL)
    try:
        assert first.keep.wait(30) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while Path(f"/proc/{first.keep.pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # reaped by init after PR_SET_PDEATHSIG
        stat = Path(f"/proc/{first.keep.pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    finally:
        first.close()
    second = start_keep("sim", state_dir, spawner=spawner)
    try:
        assert spawner._servers["keep"].zygote_pid != old
        assert second.keep.poll() is None
    finally:
        second.keep.kill()
        second.close()


@pytest.mark.parametrize(
    ("params", "nfds", "detail"),
    [
        ({"backend": "sim"}, 2, "3 fds"),
        ({"backend": "kvm"}, 3, "unsupported backend"),
        ({"backend": "sim", "rlimits": {"as": 1}}, 3, "rlimits must be a map"),
        ({"backend": "sim", "rlimits": {"nofile": -1}}, 3, "non-negative"),
        ({"backend": "sim", "cgroup": 7}, 3, "cgroup must be a path"),
        ({"backend": "sim", "scratch": 1}, 3, "scratch must be a path"),
        ({"backend": "sim", "compile_cache": 1}, 3, "compile_cache must be a path"),
    ],
)
def test_bad_spawn_requests_are_refused(
    tmp_path: Path, params: dict[str, object], nfds: int, detail: str
) -> None:
    server = ForkServer("keep", tmp_path / "z.log")
    try:
        fds = [os.open(os.devnull, os.O_RDWR) for _ in range(nfds)]
        try:
            with pytest.raises(ForkServerError, match=detail):
                server.spawn(params, fds)
        finally:
            for fd in fds:
                os.close(fd)
        assert server.alive  # still serving
    finally:
        server.close()
    assert server.proc.returncode == 0


def test_the_zygote_refuses_to_fork_with_threads() -> None:
    from stockade.keep.zygote import Zygote

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        zygote = Zygote("keep", theirs)
        fds = [os.open(os.devnull, os.O_RDWR) for _ in range(3)]
        zygote.spawn({"id": 1, "params": {"backend": "sim"}}, fds)
        reply = json.loads(ours.recv(4096))
        assert reply == {
            "op": "error",
            "id": 1,
            "detail": "the fork server is not single-threaded; refusing to fork",
        }
        assert zygote.children == set()
    finally:
        stop.set()
        worker.join()
        ours.close()
        theirs.close()


def test_child_joins_the_cgroup_the_host_prepared(state_dir: Path, tmp_path: Path) -> None:
    base = tmp_path / "cg"
    (base / "keeps").mkdir(parents=True)
    groups = cg.Cgroups(base)
    limits = ResourceLimits(memory_max=256 << 20, pids_max=32)
    sp = ForkSpawner(tmp_path / "logs", limits, groups)
    try:
        h = start_keep("sim", state_dir, keep_id="cgtest", spawner=sp)
        try:
            group = base / "keeps" / "keep-cgtest"
            assert (group / "memory.max").read_text() == f"{256 << 20}\n"
            assert (group / "pids.max").read_text() == "32\n"
            # Written by the child itself; on this fake tree the file exists
            # (created by the open) a moment before its bytes are in.
            procs = group / "cgroup.procs"
            deadline = time.monotonic() + 10
            while not (procs.exists() and procs.read_text()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert procs.read_text() == "0\n"
        finally:
            h.keep.kill()
            h.close()
    finally:
        sp.close()


# -- cgroup detection, on fake trees ------------------------------------------------


def test_own_cgroup_parses_the_unified_line() -> None:
    assert cg.own_cgroup("0::/system.slice/stockade.service\n") == "/system.slice/stockade.service"
    assert cg.own_cgroup("4:memory:/x\n1:cpu:/\n") is None
    assert cg.own_cgroup("12:pids:/a\n0::/\n") == "/"


def _tree(tmp_path: Path, controllers: str = "cpu memory pids") -> Path:
    root = tmp_path / "cgroup"
    svc = root / "svc"
    svc.mkdir(parents=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (svc / "cgroup.controllers").write_text(controllers + "\n")
    (svc / "cgroup.procs").write_text("")
    return root


def test_detect_refuses_v1_and_undelegated_trees(tmp_path: Path) -> None:
    with pytest.raises(cg.CgroupUnavailable, match="no cgroup v2 unified hierarchy"):
        cg.detect(tmp_path, "0::/\n")
    root = _tree(tmp_path, "cpu memory")
    with pytest.raises(cg.CgroupUnavailable, match="pids not delegated"):
        cg.detect(root, "0::/svc\n")
    with pytest.raises(cg.CgroupUnavailable, match="not on the cgroup v2"):
        cg.detect(root, "4:memory:/svc\n")
    with pytest.raises(cg.CgroupUnavailable, match="cannot read"):
        cg.detect(root, "0::/missing\n")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_detect_refuses_a_read_only_tree(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "svc").chmod(0o555)
    try:
        with pytest.raises(cg.CgroupUnavailable, match="not writable"):
            cg.detect(root, "0::/svc\n")
    finally:
        (root / "svc").chmod(0o755)


def test_setup_and_create_on_a_delegated_tree(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    base = cg.detect(root, "0::/svc\n")
    groups = cg.setup(base, pid=4242)
    assert (base / "manager" / "cgroup.procs").read_text() == "4242\n"
    assert (base / "cgroup.subtree_control").read_text() == "+memory +pids\n"
    assert (base / "keeps" / "cgroup.subtree_control").read_text() == "+memory +pids\n"
    path = groups.create("abc123", 1 << 30, 64)
    assert (path / "memory.max").read_text() == f"{1 << 30}\n"
    assert (path / "memory.swap.max").read_text() == "0\n"
    assert (path / "pids.max").read_text() == "64\n"
    with pytest.raises(ValueError, match="bad Keep id"):
        groups.create("../x", None, None)


def test_setup_failure_says_why(tmp_path: Path) -> None:
    with pytest.raises(cg.CgroupUnavailable, match="cannot prepare the delegated cgroup"):
        cg.setup(tmp_path / "nonexistent" / "deeper")


def test_this_machine_reports_its_cgroup_state() -> None:
    """Real detection never raises anything but CgroupUnavailable."""
    try:
        base = cg.detect()
    except cg.CgroupUnavailable as exc:
        assert str(exc)
    else:
        assert base.is_dir()
