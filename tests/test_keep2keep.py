"""The Keep-to-Keep demo end to end: scripts/demo-keep2keep.sh (README,
"Keep-to-Keep with the steward").

The script checks every step itself (the steward's CA key in a SoftHSM2
token, three Keeps certified, the intruder refused by the server's runtime,
the client's answers, each side naming the other's workload, every log entry
proven against the signed tree head) and exits non-zero naming the step that
failed; this test runs it and checks what it printed. Skipped only when
SoftHSM2 is missing and CI is not set (CI must run it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "demo-keep2keep.sh"
SOFTHSM_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")


def _softhsm_missing() -> str | None:
    if shutil.which("softhsm2-util") is None:
        return "softhsm2 not installed (apt-get install softhsm2)"
    if not any(Path(m).is_file() for m in SOFTHSM_MODULES):
        return "libsofthsm2.so not found"
    return None


def test_keep_to_keep_demo(tmp_path: Path) -> None:
    reason = _softhsm_missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Keep-to-Keep demo: {reason}")
        pytest.skip(reason)
    bindir = Path(sys.executable).parent
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path),
        # The venv this test runs in (scripts/bootstrap.sh makes it).
        "STOCKADE": str(bindir / "stockade"),
        "PYTHON": sys.executable,
    }
    env.pop("STOCKADE_STATE_DIR", None)
    result = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900, env=env, check=False
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    # The CA key was generated in the token (steward init says where it is).
    assert "PKCS#11 token 'stockade-steward'" in result.stdout
    # The client's session through the server Keep.
    assert "> GET colour\nVALUE blue\n" in result.stdout
    assert "intruder Keep refused" in result.stdout
    # The server's runtime refused the intruder's workload and accepted the client's.
    assert re.search(
        r"net: refused kv incoming connection: peer stockade://workload/sha256/[0-9a-f]{64}", out
    )
    assert re.search(r"net: accepted kv stockade://workload/sha256/[0-9a-f]{64}", out)
    assert "steward log verified: 3 entries (3 certificates" in result.stdout
    match = re.search(r"done: 3 Keeps certified by the steward .*, (\d+) log entries verified", result.stdout)
    assert match and int(match.group(1)) >= 3, result.stdout[-3000:]
    # Clean teardown: the script's temporary directory is gone, and so is
    # every process it started (each had the directory in its command line
    # or environment: STOCKADE_STATE_DIR, SOFTHSM2_CONF).
    assert not list(tmp_path.glob("stockade-keep2keep.*"))
    assert _processes_naming(str(tmp_path)) == []


def _processes_naming(text: str) -> list[str]:
    """Live processes whose command line or environment contains ``text``
    (those of other users, unreadable, are skipped)."""
    found = []
    needle = text.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        for what in ("cmdline", "environ"):
            try:
                data = (proc / what).read_bytes()
            except OSError:
                continue
            if needle in data:
                found.append(f"{proc.name}: {(proc / 'cmdline').read_bytes()[:200]!r}")
                break
    return found
