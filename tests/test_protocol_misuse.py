"""A bug in stockade's own use of the protocol state machine ends a real
``stockade run`` as an internal error (ProtocolMisuse, exit 1), in one line,
before anything is sent to the Keep past the step refused; never as the
peer's protocol error (113). ADR 0015.

The bug is injected into the CLI process: a ``python -c`` wrapper patches
``ClientSession`` and then runs the real CLI against a real sim Keep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"

#: Patches applied in the CLI process before ``stockade run``.
BUGS = {
    # accepts evidence whose report data is not this session's (wrong nonce)
    "evidence-of-another-session": (
        "orig = protocol.ClientSession.evidence_verified\n"
        "protocol.ClientSession.evidence_verified = lambda self, rd, spki: orig(self, bytes(64), spki)\n",
        "the evidence accepted does not bind this session's hello nonce and TLS key",
    ),
    # accepts an identity other than the one the Keep sent
    "another-identity": (
        "import dataclasses\n"
        "orig = protocol.ClientSession.identity_verified\n"
        "protocol.ClientSession.identity_verified = lambda self, i: orig(\n"
        "    self, dataclasses.replace(i, evidence=i.evidence + b'x'))\n",
        "the identity accepted is not the one the Keep sent",
    ),
    # releases the secrets without accepting the identity first
    "release-before-identity": (
        "protocol.ClientSession.identity_verified = lambda self, i: None\n",
        "cannot release secrets in state await-identity",
    ),
}

RELEASE_SPY = (
    "released = []\n"
    "orig_release = protocol.ClientSession.release\n"
    "def spy(self, r):\n"
    "    frame = orig_release(self, r)\n"
    "    released.append(r)\n"
    "    return frame\n"
    "protocol.ClientSession.release = spy\n"
    "import atexit\n"
    "atexit.register(lambda: sys.stderr.write(f'released={len(released)}\\n'))\n"
)


def run_with_bug(state_dir: Path, bug: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    patch, _ = BUGS[bug]
    code = (
        "import sys\n"
        "from stockade.wire import protocol\n"
        f"{RELEASE_SPY}{patch}"
        f"sys.argv = ['stockade', 'run', '--allow-sim', *{list(args)!r}, {str(HELLO)!r}, 'Bob']\n"
        "from stockade.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, "STOCKADE_STATE_DIR": str(state_dir)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=120, env=env, check=False
    )


@pytest.mark.parametrize("bug", list(BUGS))
def test_our_own_protocol_misuse_is_an_internal_error(state_dir: Path, bug: str) -> None:
    proc = run_with_bug(state_dir, bug)
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1, (proc.returncode, stderr)
    assert "Traceback" not in stderr
    assert f"stockade: internal error (a bug in stockade): {BUGS[bug][1]}" in stderr, stderr
    assert "protocol error" not in stderr
    assert b"Hello" not in proc.stdout  # the workload never ran
    assert "released=0" in stderr, stderr  # no secrets left the client


def test_misuse_in_json_output(state_dir: Path) -> None:
    proc = run_with_bug(state_dir, "evidence-of-another-session", "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["exit_code_source"] == "stockade"
    assert doc["error"]["type"] == "internal-error"
    assert doc["error"]["exit_code"] == 1
