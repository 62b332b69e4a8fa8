"""Keeps get certificates, end to end (issue 17 item 3): ``stockade run
--allow-sim --steward URL --steward-ca FILE`` against a real ``stockade
steward serve`` on loopback, started here.

- the certificate names the package digest, chains to the CA, and its
  inclusion proof verifies under the steward's log key;
- a steward that refuses (its policy excludes the package) fails the run
  with 112 and the workload does not run;
- a wrong --steward-ca fails (114, before anything of the workload is sent),
  an unreachable steward too;
- the Keep's service private key is in no host-visible place: the Keep's
  log, the run's output, the files of the state directory the run wrote,
  the Keep process's command line and environment (canary: every 32-byte
  window of them is tried as the P-256 scalar of the certified key).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.steward.request import fetch_log_key
from stockade.steward.verify import verify_workload_certificate
from stockade.testing.steward import Steward, free_port, steward_server
from stockade.translog import CertificateEntry, encode_entry
from stockade.translog.merkle import leaf_hash, verify_inclusion
from stockade.translog.treehead import verify_tree_head

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
#: The P-256 group order (SEC 2 v2, section 2.4.2): valid private scalars are 1..N-1.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@pytest.fixture(scope="module")
def steward(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Iterator[Steward]:
    with steward_server(tmp_path_factory.mktemp("steward"), state_dir) as s:
        yield s


def _run_args(steward: Steward, *args: str) -> list[str]:
    return ["run", "--allow-sim", "--steward", steward.url, "--steward-ca", str(steward.ca), *args]


def test_run_gets_a_certificate_in_the_log(steward: Steward, stockade: Callable[..., Any]) -> None:
    proc = stockade(*_run_args(steward, "--json", str(HELLO), "--", "Steward"))
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(proc.stdout)
    assert doc["stdout"] == "Hello, Steward!\narguments: 1\n"
    digest = bytes.fromhex(doc["workload"]["package_digest"])
    cert = x509.load_pem_x509_certificate(doc["certificate"].encode())
    ca = x509.load_pem_x509_certificate(steward.ca.read_bytes())
    now = dt.datetime.now(dt.UTC)
    # The certificate names the package the client verified, and chains to the CA.
    identity = verify_workload_certificate([cert], ca, now)
    assert identity.package_digest == digest
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"stockade://workload/sha256/{digest.hex()}"
    ]
    assert identity.platform == "sim"
    # Its inclusion proof leads to the root of a tree head signed by the log key the CA certified.
    inclusion = doc["inclusion"]
    import base64

    head = verify_tree_head(base64.b64decode(inclusion["tree_head"]), [fetch_log_key(steward.url, ca=ca)])
    assert (head.size, head.root.hex()) == (inclusion["tree_size"], inclusion["root"])
    leaf = leaf_hash(encode_entry(CertificateEntry(cert.public_bytes(serialization.Encoding.DER))))
    proof = [bytes.fromhex(h) for h in inclusion["proof"]]
    verify_inclusion(inclusion["index"], inclusion["tree_size"], leaf, proof, head.root)
    assert "keep_steward" in doc["timing_ms"]


def test_run_prints_one_certificate_line(steward: Steward, stockade: Callable[..., Any]) -> None:
    proc = stockade(*_run_args(steward, str(HELLO), "--", "Steward"))
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"Hello, Steward!\narguments: 1\n"
    lines = [line for line in proc.stderr.decode().splitlines() if "service certificate serial" in line]
    assert len(lines) == 1
    assert "stockade://workload/sha256/" in lines[0] and "steward log index" in lines[0]
    assert "steward      " in proc.stderr.decode()  # the summary names the steward


def test_the_manifest_names_the_steward(
    steward: Steward, tmp_path: Path, stockade: Callable[..., Any]
) -> None:
    """A package whose manifest has ``[steward] url``: the deployer gives
    only the CA; without it the run is refused before anything is sent."""
    import shutil

    src = tmp_path / "app"
    shutil.copytree(ROOT / "examples" / "hello", src)
    with (src / "Stockade.toml").open("a") as f:
        f.write(f'\n[steward]\nurl = "{steward.url}"\n')
    pkg = tmp_path / "app.stockade"
    built = stockade("package", "build", str(src), "-o", str(pkg))
    assert built.returncode == 0, built.stderr.decode()
    proc = stockade("run", "--allow-sim", "--steward-ca", str(steward.ca), str(pkg), "--", "Manifest")
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert proc.stdout == b"Hello, Alice!\narguments: 2\nGREETING: Hello from a package\n"
    assert f"steward      {steward.url} (from the package manifest)" in err
    assert sum("service certificate serial" in line for line in err.splitlines()) == 1
    refused = stockade("run", "--allow-sim", str(pkg))
    assert refused.returncode == 2
    assert "give its CA certificate with --steward-ca FILE" in refused.stderr.decode()
    assert b"Hello" not in refused.stdout


def test_deploy_host_gets_a_certificate(
    steward: Steward, state_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``deploy --host``: a Keep of a keep manager gets its certificate the
    same way (the manager's sim Keeps connect on the host's network)."""
    from manager_support import deploy, running_server

    with running_server(state_dir, tmp_path_factory) as server:
        proc = deploy(
            server,
            "--allow-sim",
            "--json",
            "--steward",
            steward.url,
            "--steward-ca",
            str(steward.ca),
            str(HELLO),
            "--",
            "Host",
        )
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(proc.stdout)
    assert doc["stdout"] == "Hello, Host!\narguments: 1\n"
    cert = x509.load_pem_x509_certificate(doc["certificate"].encode())
    ca = x509.load_pem_x509_certificate(steward.ca.read_bytes())
    identity = verify_workload_certificate([cert], ca, dt.datetime.now(dt.UTC))
    assert identity.package_digest.hex() == doc["workload"]["package_digest"]
    assert doc["inclusion"]["index"] < doc["inclusion"]["tree_size"]


def test_a_refusing_steward_fails_the_run_before_the_workload(
    tmp_path: Path, state_dir: Path, stockade: Callable[..., Any]
) -> None:
    from stockade.measure.launch import keep_measurement
    from stockade.policy.builtin import development_policy_toml

    policy = tmp_path / "steward-policy.toml"
    policy.write_text(
        development_policy_toml(keep_measurement()) + f'\n[workload]\ndigests = ["{"ab" * 32}"]\n'
    )
    with steward_server(tmp_path, state_dir, policy) as refusing:
        proc = stockade(*_run_args(refusing, str(HELLO), "--", "Steward"))
    err = proc.stderr.decode()
    assert proc.returncode == 112, err
    assert b"Hello" not in proc.stdout  # the workload did not run
    assert "refused" in err
    assert "service certificate serial" not in err


def test_a_wrong_steward_ca_fails(steward: Steward, tmp_path: Path, stockade: Callable[..., Any]) -> None:
    from stockade.steward.ca import create_ca

    other = create_ca(tmp_path / "other", "another steward")
    other.close()
    proc = stockade(
        "run",
        "--allow-sim",
        "--steward",
        steward.url,
        "--steward-ca",
        str(tmp_path / "other" / "ca.pem"),
        str(HELLO),
    )
    err = proc.stderr.decode()
    assert proc.returncode == 114, err
    assert "does not verify under the pinned steward CA" in err
    assert b"Hello" not in proc.stdout


def test_an_unreachable_steward_fails(steward: Steward, stockade: Callable[..., Any]) -> None:
    proc = stockade(
        "run",
        "--allow-sim",
        "--steward",
        f"https://127.0.0.1:{free_port()}",
        "--steward-ca",
        str(steward.ca),
        str(HELLO),
    )
    assert proc.returncode == 114, proc.stderr.decode()
    assert b"Hello" not in proc.stdout


def test_steward_with_a_vm_backend_is_refused_before_anything(
    steward: Steward, stockade: Callable[..., Any]
) -> None:
    proc = stockade(*_run_args(steward, "--backend", "vm", str(HELLO)))
    assert proc.returncode == 2
    assert "no network path to a steward" in proc.stderr.decode()


# -- canary: the service key never reaches the host -----------------------------------------------------


def _scalar_in(data: bytes, public: ec.EllipticCurvePublicKey) -> bool:
    """Whether any 32-byte window of ``data`` is the private scalar of
    ``public`` (big-endian, as DER and PEM encodings carry it)."""
    target = public.public_numbers()
    for i in range(len(data) - 31):
        d = int.from_bytes(data[i : i + 32], "big")
        if (
            0 < d < P256_N
            and ec.derive_private_key(d, ec.SECP256R1()).public_key().public_numbers() == target
        ):
            return True
    return False


def _keep_pid(parent: int) -> int | None:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
            if int(fields[1]) == parent and b"stockade.keep" in cmdline:
                return int(stat.parent.name)
    return None


def _files(directory: Path) -> dict[Path, tuple[int, int]]:
    return {
        p: (p.stat().st_mtime_ns, p.stat().st_size)
        for p in directory.rglob("*")
        if p.is_file() and "cache" not in p.relative_to(directory).parts
    }


def _nap(tmp: Path) -> Path:
    """tests/data/wasm/sleep.wat with a 2 s sleep: prints "sleeping", blocks
    2 s in the host (the Keep lives meanwhile), prints "awake", exits 0."""
    import wasmtime

    text = (ROOT / "tests" / "data" / "wasm" / "sleep.wat").read_text()
    assert "(i64.const 30000000000)" in text
    path = tmp / "nap.wasm"
    path.write_bytes(wasmtime.wat2wasm(text.replace("(i64.const 30000000000)", "(i64.const 2000000000)")))
    return path


def test_the_service_key_reaches_no_host_visible_place(
    steward: Steward, state_dir: Path, tmp_path: Path
) -> None:
    before = _files(state_dir)
    env = {**os.environ, "STOCKADE_STATE_DIR": str(state_dir), "XDG_CACHE_HOME": str(state_dir / "cache")}
    argv = [sys.executable, "-m", "stockade", *_run_args(steward, "--json", str(_nap(tmp_path)))]
    run = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc_bytes: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while not proc_bytes and run.poll() is None and time.monotonic() < deadline:
            pid = _keep_pid(run.pid)
            if pid is None:
                time.sleep(0.05)
                continue
            with contextlib.suppress(OSError):
                proc_bytes = [Path(f"/proc/{pid}/{name}").read_bytes() for name in ("cmdline", "environ")]
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=15)
    assert run.returncode == 0, err.decode()
    assert len(proc_bytes) == 2, "the Keep process was not seen"
    doc = json.loads(out)
    assert doc["stdout"] == "sleeping\nawake\n"
    public = x509.load_pem_x509_certificate(doc["certificate"].encode()).public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    written = {p for p, meta in _files(state_dir).items() if before.get(p) != meta}
    assert any(p.name.startswith("keep-") for p in written), written  # the Keep's host-side log
    places = {str(p): p.read_bytes() for p in written}
    places |= {"stdout": out, "stderr": err, "cmdline": proc_bytes[0], "environ": proc_bytes[1]}
    for where, data in places.items():
        assert b"PRIVATE KEY" not in data, where
        assert not _scalar_in(data, public), where
    # The canary can find a key: the same scan finds the scalar of a key it is shown.
    probe = ec.generate_private_key(ec.SECP256R1())
    scalar = probe.private_numbers().private_value.to_bytes(32, "big")
    assert _scalar_in(b"log line " + scalar + b" more", probe.public_key())


# -- the Keep's own steward connection (KeepServer.certify, in this process) --------------------------


def _workload_log() -> Any:
    from stockade.binding.eventlog import EventLog

    log = EventLog()
    for kind, name in (
        ("runtime", "stockade-keep test"),
        ("package", "app 1"),
        ("entry", "app.wasm"),
        ("config", "deploy"),
    ):
        log.measure(kind, name, bytes(32) if kind != "package" else b"\x11" * 32)
    return log


def _keep_server() -> Any:
    from stockade.keep.session import KeepServer

    a, b = socket.socketpair()
    b.close()

    def no_evidence(report_data: bytes) -> Any:
        raise AssertionError("the Keep asked for evidence before the steward was reached")

    attester = type("Attester", (), {"platform": "sim", "evidence": staticmethod(no_evidence)})()
    return KeepServer(a, attester=attester, engine=None, scratch=None, sandbox=None)  # type: ignore[arg-type]


def _ca_der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)


def test_the_keep_refuses_a_steward_outside_the_pinned_ca(steward: Steward, tmp_path: Path) -> None:
    """The host cannot answer for the steward: a steward whose TLS
    certificate is not under the CA of the release is StewardUnavailable
    (114) in the Keep, and no evidence is made for it."""
    from stockade.errors import StewardUnavailable
    from stockade.steward.ca import create_ca
    from stockade.wire.messages import StewardRequest

    create_ca(tmp_path / "other", "another steward").close()
    server = _keep_server()
    request = StewardRequest(url=steward.url, ca=_ca_der(tmp_path / "other" / "ca.pem"))
    with pytest.raises(StewardUnavailable, match="does not verify under the pinned steward CA"):
        server.certify(request, _workload_log())
    assert server.service is None
    server.close()


def test_the_keep_reports_an_unreachable_steward(steward: Steward) -> None:
    from stockade.errors import StewardUnavailable
    from stockade.wire.messages import StewardRequest

    server = _keep_server()
    request = StewardRequest(url=f"https://127.0.0.1:{free_port()}", ca=_ca_der(steward.ca))
    with pytest.raises(StewardUnavailable, match="could not get its service certificate") as info:
        server.certify(request, _workload_log())
    assert info.value.exit_code == 114
    server.close()
