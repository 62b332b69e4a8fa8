"""The disk limit (issue 13 item 3) and the whole-workload memory limits
(item 2) below the CLI: the manifest default, the ``--disk`` flag, the
engine's disabled features, and the Keep's fallback when it cannot make a
private tmpfs (run in a subprocess: the fallback lowers RLIMIT_FSIZE)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run_options
from stockade.client.plan import DEFAULT_LIMITS, RunOptions, prepare
from stockade.errors import UsageError, WorkloadRejected
from stockade.keep.runner import MAX_TABLES, compile_error, make_engine, table_elements_for
from stockade.package.manifest import Manifest, ManifestError

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"


def options(wasm: Path, **kw: object) -> RunOptions:
    return run_options(wasm, **{"quiet": True, **kw})


def test_default_disk_limit() -> None:
    assert prepare(options(HELLO)).limits.disk_bytes == DEFAULT_LIMITS["disk_bytes"] == 256 << 20


def test_disk_flag() -> None:
    assert prepare(options(HELLO, disk="8M")).limits.disk_bytes == 8 << 20


@pytest.mark.parametrize("value", ["0", "-1M", "lots"])
def test_bad_disk_flag(value: str) -> None:
    with pytest.raises(UsageError, match="--disk"):
        prepare(options(HELLO, disk=value))


def test_manifest_disk_limit_and_flag_override(tmp_path: Path) -> None:
    from stockade.package.format import build

    app = tmp_path / "app"
    (app / "bin").mkdir(parents=True)
    (app / "bin" / "hello.wasm").write_bytes(HELLO.read_bytes())
    (app / "Stockade.toml").write_text(
        'name = "hello"\nversion = "1.0.0"\nentry = "bin/hello.wasm"\n\n[limits]\ndisk_bytes = 4194304\n'
    )
    pkg = tmp_path / "hello.stockade"
    pkg.write_bytes(build(app))
    assert prepare(options(pkg)).limits.disk_bytes == 4 << 20
    assert prepare(options(pkg, disk="1M")).limits.disk_bytes == 1 << 20


def test_manifest_disk_limit_must_be_positive() -> None:
    doc = {"name": "x", "version": "1", "entry": "a.wasm", "limits": {"disk_bytes": 0}}
    with pytest.raises(ManifestError, match="disk_bytes"):
        Manifest.from_map(doc)


def test_table_budget_is_a_quarter_of_the_memory_limit() -> None:
    assert table_elements_for(1 << 20) == 10_000  # the floor
    assert MAX_TABLES * table_elements_for(256 << 20) * 8 == (256 << 20) // 4


@pytest.mark.parametrize(
    ("wat", "feature"),
    [
        ('(module (memory 1) (memory 1) (func (export "_start")))', "multi-memory"),
        ('(module (memory i64 1) (func (export "_start")))', "memory64"),
        ('(module (memory 1 1 shared) (func (export "_start")))', "threads"),
        ('(module (table 1 externref) (func (export "_start")))', "GC"),
    ],
)
def test_engine_refuses_features_by_name(wat: str, feature: str) -> None:
    import wasmtime

    with pytest.raises(wasmtime.WasmtimeError) as info:
        wasmtime.Module(make_engine(), wasmtime.wat2wasm(wat))
    err = compile_error(info.value)
    assert isinstance(err, WorkloadRejected)
    assert f"uses the WebAssembly {feature}" in err.detail


def test_engine_still_compiles_the_examples() -> None:
    """Modules with the modules' engine, components with the components'
    (the 12 MB JavaScript component is compiled, and run, by
    tests/test_components.py)."""
    import wasmtime
    from wasmtime.component import Component

    from stockade.keep.runner import make_component_engine
    from stockade.package.format import is_component

    engine, component_engine = make_engine(), make_component_engine()
    for path in sorted((ROOT / "examples").glob("*/*.wasm")):
        data = path.read_bytes()
        if not is_component(data):
            wasmtime.Module(engine, data)
        elif path.name != "jscomponent.wasm":
            Component(component_engine, data)


FALLBACK = textwrap.dedent(
    """
    import ctypes, sys, wasmtime
    from pathlib import Path
    from stockade.errors import LimitExceeded
    from stockade.keep import sandbox
    from stockade.keep.runner import Runner, make_engine
    from stockade.wire.messages import FileEntry, Limits, Workload

    class NoNamespaces:  # a kernel that refuses unshare (EPERM)
        def unshare(self, flags):
            ctypes.set_errno(1)
            return -1

    sandbox._libc = NoNamespaces
    scratch = Path(sys.argv[1])
    box = sandbox.enter(scratch)
    print("mode", box.private, box.reason)
    wasm = wasmtime.wat2wasm(Path(sys.argv[2]).read_text())
    work = Workload(
        wasm=wasm,
        files=(FileEntry("/", None),),
        limits=Limits(disk_bytes=4 << 20, timeout_ms=20000),
        secrets=(("token", b"CANARY-FALLBACK"),),
    )
    try:
        Runner(make_engine(), lambda fd, data: None, box).run(work)
        print("no limit")
    except LimitExceeded as exc:
        print("limit", exc.limit, exc.detail)
    box.cleanup()
    print("left", sorted(p.name for p in scratch.rglob("*")))
    """
)


def test_fallback_without_namespaces_still_bounds_disk(tmp_path: Path) -> None:
    script = tmp_path / "fallback.py"
    script.write_text(FALLBACK)
    wat = tmp_path / "fill.wat"
    wat.write_text((ROOT / "tests" / "data" / "hostile" / "fill.wat").read_text().replace("CHUNKS", "16"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = subprocess.run(
        [sys.executable, str(script), str(scratch), str(wat)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "mode False unshare(CLONE_NEWNS): Operation not permitted"
    assert lines[1].startswith("limit disk workload failed at its disk limit"), lines
    assert lines[2] == "left ['private']"  # the workload's files and secrets are gone


HUGE = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from stockade.keep import sandbox
    box = sandbox.enter(Path(sys.argv[1]))
    assert box.private, box.reason
    box.set_limit(2**64 - 1)
    st = os.statvfs(box.root)
    print(st.f_blocks * st.f_frsize, st.f_files)
    """
)


def test_a_huge_disk_limit_stays_a_limit(tmp_path: Path) -> None:
    """size=2**64-1 wraps to 0 in tmpfs, which means no limit at all: the
    Keep caps the size at 2**62 instead."""
    out = subprocess.run(
        [sys.executable, "-I", "-c", HUGE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(1 << 62), str((1 << 62) // 8192)]


def test_a_disk_limit_the_keep_cannot_apply_is_a_clear_refusal(tmp_path: Path) -> None:
    from stockade.keep.runner import Runner
    from stockade.keep.sandbox import Sandbox, SandboxUnavailable
    from stockade.wire.messages import Workload

    class Broken(Sandbox):
        def set_limit(self, disk_bytes: int) -> None:
            raise SandboxUnavailable("mount private: Invalid argument")

    wasm = HELLO.read_bytes()
    runner = Runner(make_engine(), lambda fd, data: None, Broken(tmp_path, private=True))
    with pytest.raises(WorkloadRejected, match=r"cannot apply the 268435456-byte disk limit \(mount private"):
        runner.run(Workload(wasm=wasm))


#: uid/gid 65534 with no capability but CAP_DAC_READ_SEARCH: it may read the
#: checkout and its .venv wherever they are (CI may clone below a directory
#: only root can enter), and is as unprivileged as any user for what the test
#: is about: mount and namespace operations need CAP_SYS_ADMIN, which it lacks.
SETPRIV = (
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=+dac_read_search",
    "--ambient-caps=+dac_read_search",
)
UNPRIVILEGED = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from stockade.keep import sandbox
    box = sandbox.enter(Path(sys.argv[1]))
    print(box.private, box.reason or "-", os.getuid())
    box.set_limit(1 << 20)
    try:
        (box.root / "x").write_bytes(b"0" * (2 << 20))
    except OSError as exc:
        print(exc.strerror)
    print(box.usage()[0])
    """
)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_private_tmpfs_as_an_unprivileged_user() -> None:
    """Not root: the Keep makes a user namespace (its uid mapped to 0) with
    its mount namespace; the host sees the mount point empty."""
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="stockade-test-userns-"))  # pytest's tmp is root-only
    try:
        scratch.chmod(0o777)
        check_unprivileged(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_unprivileged(scratch: Path) -> None:
    out = subprocess.run(
        [*SETPRIV, sys.executable, "-I", "-c", UNPRIVILEGED, str(scratch)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["True - 0", "No space left on device", str(1 << 20)]
    assert list((scratch / "private").iterdir()) == []  # the file was in the Keep's tmpfs only


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ("instance", "instance count too high"),
        ("memory", "memory count too high"),
    ],
)
def test_store_limits_on_instances_and_memories(second: str, message: str) -> None:
    """One instance and one memory per store: core Wasm cannot reach these
    (no module instantiates another; multi-memory is refused at compile
    time), so they are checked here through the embedder's API (a second
    instance; a two-memory module on an engine with multi-memory turned back
    on: defence in depth), with the message the Keep maps to the memory
    limit."""
    import wasmtime

    from stockade.errors import LimitExceeded
    from stockade.keep.runner import Runner, store_limits
    from stockade.keep.sandbox import Sandbox

    engine = make_engine()
    store = wasmtime.Store(engine)
    store.set_limits(**store_limits(16 << 20))
    if second == "instance":
        module = wasmtime.Module(engine, wasmtime.wat2wasm('(module (func (export "_start")))'))
        wasmtime.Instance(store, module, [])
    else:
        config = wasmtime.Config()
        config.wasm_multi_memory = True
        engine = wasmtime.Engine(config)
        store = wasmtime.Store(engine)
        store.set_limits(**store_limits(16 << 20))
        module = wasmtime.Module(engine, wasmtime.wat2wasm("(module (memory 1) (memory 1))"))
    with pytest.raises(wasmtime.WasmtimeError) as info:
        wasmtime.Instance(store, module, [])
    assert message in str(info.value)
    runner = Runner(engine, lambda fd, data: None, Sandbox(Path("/nonexistent"), private=False))
    with pytest.raises(LimitExceeded) as limit:
        runner._instantiation_limit(str(info.value), 16 << 20)
    assert limit.value.limit == "memory"
    assert "at most 4 tables, 1 memory, 1 instance" in limit.value.detail
