"""SoftHSM2 for the steward tests (tests/conftest.py ``hsm`` fixture).

SoftHSM2 reads its configuration and token list once, at C_Initialize,
and stockade loads a PKCS#11 module once per process, so every token the
tests use is created up front in one session fixture (in conftest, so that
every test module shares it). Without softhsm2 the token tests skip,
except in CI (CI=true), where they fail: .ci/run installs it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from stockade.steward.ca import Pkcs11Options

MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
#: Tokens made for the session: test_steward_ca uses the first five,
#: test_steward_serve the "serve" ones.
TOKENS = ("ca", "log", "cli", "canary", "attrs", "serve", "serve-cli")


@dataclass(frozen=True)
class Hsm:
    module: str
    conf: Path
    pin: str

    def options(self, token: str) -> Pkcs11Options:
        return Pkcs11Options(self.module, token, self.pin)


def softhsm_missing() -> str | None:
    if shutil.which("softhsm2-util") is None:
        return "softhsm2 not installed (apt-get install softhsm2)"
    if not any(Path(m).is_file() for m in MODULES):
        return "libsofthsm2.so not found"
    return None
