"""A remote sim deploy trusts only a sim root from the deployer's side, and
live deploys check revocation with the CRLs the client holds (issue 13,
items 8 and 7).

Against a live keep manager (module-scoped, loopback): ``deploy --allow-sim``
without a client-side root is refused before any Keep is created; a wrong
``--sim-root`` fails verification; the right one (as ``stockade host
sim-root`` prints it on the host) works; a policy that pins the root's
SHA-256 accepts the root the host serves only if it is that one. The
summary and the JSON attestation say whether revocation was checked:
``stockade run`` uses the local sim chip's CRL, ``deploy`` the ``--crl``
files; a CRL that revokes the chain refuses the Keep.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from manager_support import HELLO, Server, _cli, deploy, running_server
from stockade.client.remote import ManagerClient
from stockade.evidence.pki import load_der, serial
from stockade.evidence.sim import chip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(state_dir, tmp_path_factory) as srv:
        yield srv


@pytest.fixture(scope="module")
def files(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What the host's operator hands over (root PEM, CRL), a foreign sim
    chip's root, and a CRL of the host's chip that revokes its ASK."""
    out = tmp_path_factory.mktemp("operator")
    proc = _cli("host", "sim-root", "--state-dir", str(server.state), "--crl", str(out / "host.crl"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(b"-----BEGIN CERTIFICATE-----")
    (out / "root.pem").write_bytes(proc.stdout)
    foreign = tmp_path_factory.mktemp("foreign-state")
    chip.ensure_chip(foreign)
    shutil.copy(foreign / "sim" / "chip" / "ark.der", out / "foreign.der")
    ask = load_der((server.state / "sim" / "chip" / "ask.der").read_bytes(), "ASK")
    revoked = chip.issue_crl(server.state, datetime.now(UTC), revoked=[serial(ask)])
    (out / "revoked.crl").write_bytes(revoked)
    return {
        "root": out / "root.pem",
        "crl": out / "host.crl",
        "foreign": out / "foreign.der",
        "revoked": out / "revoked.crl",
    }


def fingerprint(state: Path) -> str:
    """SHA-256 of the sim root of the state directory ``state``."""
    return hashlib.sha256((state / "sim" / "chip" / "ark.der").read_bytes()).hexdigest()


def pin_policy(tmp_path: Path, digest: str) -> Path:
    path = tmp_path / "pinned.toml"
    path.write_text(f'version = 1\nname = "pinned"\nplatforms = ["sim"]\n\n[sim]\nroot_sha256 = "{digest}"\n')
    return path


def keep_count(server: Server) -> int:
    with ManagerClient(server.url, server.token) as client:
        return len(client.list())


def test_host_sim_root_prints_the_root_and_its_fingerprint(server: Server, files: dict[str, Path]) -> None:
    proc = _cli("host", "sim-root", "--state-dir", str(server.state), "--fingerprint")
    assert proc.returncode == 0, proc.stderr
    digest = proc.stdout.decode().strip()
    assert digest == hashlib.sha256((server.state / "sim" / "chip" / "ark.der").read_bytes()).hexdigest()
    full = _cli("host", "sim-root", "--state-dir", str(server.state))
    assert f'root_sha256 = "{digest}"' in full.stderr.decode()
    assert b"NO HARDWARE PROTECTION" in full.stderr


def test_remote_sim_deploy_without_a_client_side_root_is_refused(server: Server, tmp_path: Path) -> None:
    before = keep_count(server)
    base = ("deploy", "--host", server.url, "--token-file", str(server.token_file))
    proc = _cli(*base, "--allow-sim", str(HELLO))
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.decode()
    assert "--sim-root FILE" in err and "stockade host sim-root" in err and "root_sha256" in err
    assert err.count("\n") == 1 and b"Hello" not in proc.stdout
    # A policy that lists sim but pins no root is refused the same way.
    policy = tmp_path / "dev.toml"
    policy.write_text('version = 1\nplatforms = ["sim"]\n')
    proc = _cli(*base, "--policy", str(policy), str(HELLO))
    assert proc.returncode == 2 and b"--sim-root FILE" in proc.stderr
    assert keep_count(server) == before  # refused before the host created anything


def test_remote_sim_deploy_with_the_wrong_root_fails_verification(
    server: Server, files: dict[str, Path]
) -> None:
    proc = deploy(server, "--allow-sim", "--sim-root", str(files["foreign"]), str(HELLO), "--", "eve")
    assert proc.returncode == 110, proc.stderr
    assert b"Hello" not in proc.stdout
    assert b"attestation verification failed" in proc.stderr


def test_remote_sim_deploy_with_the_operators_root_works(server: Server, files: dict[str, Path]) -> None:
    proc = deploy(server, "--allow-sim", "--sim-root", str(files["root"]), str(HELLO), "--", "ann")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"Hello, ann!\narguments: 1\n"
    err = proc.stderr.decode()
    assert f"from --sim-root {files['root']}" in err
    assert "revocation   not checked (no CRL available)" in err


def test_a_sim_root_that_is_not_a_certificate_is_a_usage_error(server: Server, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    proc = deploy(server, "--allow-sim", "--sim-root", str(junk), str(HELLO))
    assert proc.returncode == 2, proc.stderr
    assert b"stockade host sim-root" in proc.stderr and b"Traceback" not in proc.stderr


def test_policy_pin_accepts_the_host_root_only_if_it_is_pinned(
    server: Server, files: dict[str, Path], tmp_path: Path
) -> None:
    right = pin_policy(tmp_path, fingerprint(server.state))
    proc = deploy(server, "--policy", str(right), "--json", str(HELLO), "--", "pat")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["stdout"] == "Hello, pat!\narguments: 1\n"
    rows = {r["rule"]: r for r in doc["policy"]["rows"]}
    assert rows["sim.root_sha256"]["verdict"] == "pass"

    # The host serves its own root; the policy pins another: refused at once.
    before = keep_count(server)
    (tmp_path / "other").mkdir()
    wrong = pin_policy(tmp_path / "other", hashlib.sha256(files["foreign"].read_bytes()).hexdigest())
    proc = deploy(server, "--policy", str(wrong), str(HELLO))
    assert proc.returncode == 110, proc.stderr
    assert b"the host serves a sim root with SHA-256" in proc.stderr and b"Hello" not in proc.stdout
    assert keep_count(server) == before
    # --sim-root that the policy does not pin: a usage error.
    proc = deploy(server, "--policy", str(wrong), "--sim-root", str(files["root"]), str(HELLO))
    assert proc.returncode == 2 and b"is not a [sim] root_sha256 of the policy" in proc.stderr


def test_deploy_checks_revocation_with_the_crl_given(server: Server, files: dict[str, Path]) -> None:
    root = ("--allow-sim", "--sim-root", str(files["root"]))
    proc = deploy(server, *root, "--json", str(HELLO))
    assert proc.returncode == 0, proc.stderr
    revocation = json.loads(proc.stdout)["attestation"]["revocation"]
    assert revocation == {"checked": False, "crl_issuers": [], "reason": "no CRL available"}

    proc = deploy(server, *root, "--crl", str(files["crl"]), "--json", str(HELLO))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["attestation"]["revocation"]["checked"] is True
    assert "ARK-Sim-Milan" in doc["attestation"]["revocation"]["crl_issuers"][0]
    proc = deploy(server, *root, "--crl", str(files["crl"]), str(HELLO))
    assert proc.returncode == 0, proc.stderr
    assert b"revocation   checked: not revoked (CRL of OU=Engineering," in proc.stderr
    assert b"CN=ARK-Sim-Milan)\n" in proc.stderr

    proc = deploy(server, *root, "--crl", str(files["revoked"]), str(HELLO))
    assert proc.returncode == 110, proc.stderr
    assert b"is revoked since" in proc.stderr and b"Hello" not in proc.stdout

    bad = files["crl"].with_name("bad.crl")
    bad.write_bytes(b"not a crl")
    proc = deploy(server, *root, "--crl", str(bad), str(HELLO))
    assert proc.returncode == 2 and b"--crl" in proc.stderr and b"Traceback" not in proc.stderr


def run_cli(state: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "STOCKADE_STATE_DIR": str(state)}
    return subprocess.run(
        [sys.executable, "-m", "stockade", "run", *args],
        capture_output=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_local_run_checks_revocation_with_the_sim_chips_crl(state_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    shutil.copytree(state_dir / "sim", state / "sim")
    (state / "sim" / "chip" / "crl.der").unlink(missing_ok=True)
    proc = run_cli(state, "--allow-sim", "--json", str(HELLO))
    assert proc.returncode == 0, proc.stderr
    revocation = json.loads(proc.stdout)["attestation"]["revocation"]
    assert revocation["checked"] is True and "ARK-Sim-Milan" in revocation["crl_issuers"][0]
    assert (state / "sim" / "chip" / "crl.der").is_file()  # issued once, reused while valid
    proc = run_cli(state, "--allow-sim", str(HELLO))
    assert b"revocation   checked: not revoked" in proc.stderr

    ask = load_der((state / "sim" / "chip" / "ask.der").read_bytes(), "ASK")
    revoked = chip.issue_crl(state, datetime.now(UTC), revoked=[serial(ask)])
    (state / "sim" / "chip" / "crl.der").write_bytes(revoked)
    proc = run_cli(state, "--allow-sim", str(HELLO))
    assert proc.returncode == 110, proc.stderr
    assert b"is revoked since" in proc.stderr and b"Hello" not in proc.stdout


def test_local_run_without_a_crl_says_revocation_was_not_checked(state_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    shutil.copytree(state_dir / "sim", state / "sim")
    (state / "sim" / "chip" / "crl.der").unlink(missing_ok=True)
    (state / "sim" / "chip" / "ark.key").unlink()  # the CRL cannot be issued
    proc = run_cli(state, "--allow-sim", "--json", str(HELLO))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["attestation"]["revocation"] == {
        "checked": False,
        "crl_issuers": [],
        "reason": "no CRL available",
    }
    assert "revocation not checked (no CRL available)" in doc["attestation"]["checks"]


def test_local_run_with_a_policy_pinning_another_sim_root_is_refused(
    state_dir: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    wrong = pin_policy(tmp_path, hashlib.sha256(files["foreign"].read_bytes()).hexdigest())
    proc = run_cli(state_dir, "--policy", str(wrong), str(HELLO))
    assert proc.returncode == 112, proc.stderr
    assert b"sim.root_sha256" in proc.stderr and b"Hello" not in proc.stdout
    right = pin_policy(tmp_path, fingerprint(state_dir))
    proc = run_cli(state_dir, "--policy", str(right), str(HELLO))
    assert proc.returncode == 0, proc.stderr
