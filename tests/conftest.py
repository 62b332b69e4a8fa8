"""Shared fixtures.

Every test that starts Keeps uses one sim chip for the whole session
(generating its two RSA-4096 keys takes seconds), in a temporary state
directory, never the user's own.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from stockade.client.plan import RunOptions
    from stockade.testing.amd import FakeAmdPki

# `stockade run` forks its sim Keep from a per-user warm fork server that
# outlives the run (ADR 0022). The suite runs cold unless told otherwise, so
# that no server outlives it; tests/test_warm.py turns the warm path on with
# a private runtime directory and stops its server. STOCKADE_WARM=1 runs
# every CLI test through the warm path (servers then exit after 60 s idle).
os.environ.setdefault("STOCKADE_WARM", "0")
# Likewise the per-user client agent (ADR 0028) that `stockade run` and
# `stockade deploy` hand their command to: off unless a test turns it on
# (tests/test_client_agent.py, with a private runtime directory).
os.environ.setdefault("STOCKADE_AGENT", "0")
# The Keep's sealed compile cache of `stockade run` (ADR 0023) goes below
# $XDG_CACHE_HOME: one private directory for the session, never the user's
# ~/.cache (the `stockade` fixture gives each state its own; tests of the
# compile step itself pass --no-compile-cache or their own directory).
if "XDG_CACHE_HOME" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="stockade-test-cache-")
    os.environ["XDG_CACHE_HOME"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, True)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stockade.evidence.sim.chip import ensure_chip

    path = tmp_path_factory.mktemp("stockade-state")
    ensure_chip(path)
    return path


@pytest.fixture
def stockade(state_dir: Path):
    """Run the real ``stockade`` CLI in a subprocess; returns CompletedProcess."""

    def run(*args: str, input: bytes | None = None, timeout: float = 120, env: dict[str, str] | None = None):
        # XDG_CACHE_HOME: the local compile cache of `stockade run` stays in the test's state.
        full_env = {
            **os.environ,
            "STOCKADE_STATE_DIR": str(state_dir),
            "XDG_CACHE_HOME": str(state_dir / "cache"),
            **(env or {}),
        }
        return subprocess.run(
            [sys.executable, "-m", "stockade", *args],
            input=input,
            capture_output=True,
            timeout=timeout,
            env=full_env,
            check=False,
        )

    return run


@pytest.fixture(scope="module")
def wasm(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``wasm("name")`` -> path of tests/data/wasm/name.wat compiled to a .wasm file."""
    import wasmtime

    out = tmp_path_factory.mktemp("wasm")

    def build(name: str) -> Path:
        target = out / f"{name}.wasm"
        if not target.exists():
            target.write_bytes(wasmtime.wat2wasm((DATA / "wasm" / f"{name}.wat").read_text()))
        return target

    return build


@pytest.fixture(scope="module")
def milan() -> FakeAmdPki:
    """A fake AMD PKI for Milan (stockade.testing.amd), one per test module."""
    from stockade.evidence.snp.abi import Product
    from stockade.testing.amd import FakeAmdPki

    return FakeAmdPki(Product.MILAN)


@pytest.fixture(scope="module")
def turin() -> FakeAmdPki:
    """A fake AMD PKI for Turin (stockade.testing.amd), one per test module."""
    from stockade.evidence.snp.abi import Product
    from stockade.testing.amd import FakeAmdPki

    return FakeAmdPki(Product.TURIN)


def vm_missing() -> str | None:
    """Why VM Keeps cannot boot on this machine (None: they can)."""
    import shutil

    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
    if not list(Path("/boot").glob("vmlinuz-*-cloud-amd64")):
        return "no Debian cloud kernel (apt-get install linux-image-cloud-amd64)"
    if not Path("/bin/busybox").is_file():
        return "busybox not installed (apt-get install busybox-static)"
    return None


def need_vm() -> None:
    """Skip a VM test where QEMU, the kernel or busybox is missing; in CI
    (which installs them, .ci/run) fail instead, so they never go untested."""
    reason = vm_missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the VM Keep tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def keep_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Keep image of this checkout, built once per session."""
    need_vm()
    from stockade.image.build import build

    out = tmp_path_factory.mktemp("keep-image") / "image"
    build(out)
    return out


def run_options(wasm: Path, **kw: object) -> RunOptions:
    """The options of a ``stockade run`` of ``wasm`` with --allow-sim and
    every other option at its default; ``kw`` overrides fields."""
    from stockade.client.plan import RunOptions

    fields: dict[str, object] = {
        "wasm": wasm,
        "args": (),
        "backend": "sim",
        "allow_sim": True,
        "policy": None,
        "env": (),
        "stdin": None,
        "files": (),
        "secret_refs": (),
        "timeout": None,
        "memory": None,
        "max_output": None,
        "disk": None,
        "expect_measurement": None,
        "signers": (),
        "min_signatures": None,
        "expect_digests": (),
        "as_json": False,
        "quiet": False,
        "state_dir": None,
    }
    return RunOptions(**{**fields, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def hsm(tmp_path_factory: pytest.TempPathFactory):
    """A SoftHSM2 token directory with the tokens of hsm_support.TOKENS
    (one per session: see tests/hsm_support.py); the user PIN is a canary."""
    import secrets

    from hsm_support import MODULES, TOKENS, Hsm, softhsm_missing

    reason = softhsm_missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the PKCS#11 tests: {reason}")
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("softhsm")
    (base / "tokens").mkdir()
    conf = base / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    # The PIN is a canary: it must never show up in stockade's output, errors or files.
    pin = "pin-canary-" + secrets.token_hex(8)
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    for label in TOKENS:
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                "so-" + pin,
                "--pin",
                pin,
            ],
            check=True,
            capture_output=True,
            env=env,
            timeout=30,
        )
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        yield Hsm(next(m for m in MODULES if Path(m).is_file()), conf, pin)
    finally:
        if old is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = old


@pytest.fixture(autouse=True)
def _process_file_size_limit_unchanged() -> Iterator[None]:
    """A test that runs a Keep's Runner in this process with a fallback
    sandbox lowers RLIMIT_FSIZE (stockade.keep.sandbox), and every later
    test's larger writes then fail with EFBIG: name the test that did it,
    and put the limit back so the rest of the run is not poisoned."""
    import resource

    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    yield
    after = resource.getrlimit(resource.RLIMIT_FSIZE)
    if after != before:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)
        pytest.fail(f"the test changed this process's RLIMIT_FSIZE from {before} to {after}")
