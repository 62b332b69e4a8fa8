"""The README's two set-up commands stay true."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_names_the_demo_and_test_commands() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```\n(.*?)```", text, flags=re.S)
    commands = [b.strip() for b in blocks if b.strip().startswith("./scripts/")]
    assert commands == ["./scripts/demo.sh", "./scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\n./scripts/test.sh\n" in ci, ".ci/run must call exactly the README's test command"


def test_demo_command_deploys_hello_into_a_sim_keep(tmp_path: Path) -> None:
    env = {**os.environ, "STOCKADE_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.run(
        [str(ROOT / "scripts" / "demo.sh")], capture_output=True, env=env, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().startswith("Hello, Alice!\n")
    err = proc.stderr.decode()
    assert "Keep attested and verified" in err
    assert "NO HARDWARE PROTECTION" in err
    assert "Traceback" not in err


def test_security_and_contributing_exist_and_are_linked() -> None:
    readme = (ROOT / "README.md").read_text()
    for name, must_say in (
        ("SECURITY.md", ("## Scope", "## How to report", "## What happens next", "## Supported versions")),
        ("CONTRIBUTING.md", ("./scripts/test.sh", "lint-imports", "mypy")),
    ):
        assert f"`{name}`" in readme, f"README must link {name}"
        text = (ROOT / name).read_text()
        for phrase in must_say:
            assert phrase in text, f"{name} lacks {phrase!r}"
