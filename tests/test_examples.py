"""The example workloads in examples/: reproducible builds and behaviour.

Two kinds of test:

* the build tests rebuild the modules with examples/build.sh from a copy of
  the sources and require the very bytes that are committed. They need the
  Debian Wasm toolchain; without it they are skipped, unless
  STOCKADE_REQUIRE_TOOLCHAINS=1 (CI sets it), in which case they fail;
* the run tests execute the committed modules on bare wasmtime-py, in a
  subprocess, and compare their output with a reference computed in Python;
  csvstat (C++) is also run in a sim Keep through `stockade run --allow-sim`,
  from the module and from its package.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BUILD_SH = EXAMPLES / "build.sh"
README = EXAMPLES / "README.md"
SAMPLE = EXAMPLES / "wordcount" / "sample.txt"

# Module name -> committed module, as build.sh writes them in place.
MODULES = {
    "hello.wasm": EXAMPLES / "hello" / "hello.wasm",
    "wordcount.wasm": EXAMPLES / "wordcount" / "wordcount.wasm",
    "csvstat.wasm": EXAMPLES / "csvstat" / "csvstat.wasm",
    "compute.wasm": EXAMPLES / "compute" / "compute.wasm",
    "kv-server.wasm": EXAMPLES / "kv" / "server" / "kv-server.wasm",
    "kv-client.wasm": EXAMPLES / "kv" / "client" / "kv-client.wasm",
}
HELLO = MODULES["hello.wasm"]
WORDCOUNT = MODULES["wordcount.wasm"]
CSVSTAT = MODULES["csvstat.wasm"]
COMPUTE = MODULES["compute.wasm"]
CSV_SAMPLE = EXAMPLES / "csvstat" / "sample.csv"

REQUIRE_TOOLCHAINS = os.environ.get("STOCKADE_REQUIRE_TOOLCHAINS") == "1"

# What build.sh needs: (description, path or glob pattern, Debian package).
TOOLCHAIN = [
    ("clang", os.environ.get("STOCKADE_CLANG", "/usr/bin/clang"), "clang"),
    ("rustc", os.environ.get("STOCKADE_RUSTC", "/usr/bin/rustc"), "rustc"),
    ("rust-lld", os.environ.get("STOCKADE_RUST_LLD", "/usr/bin/rust-lld"), "rustc, lld"),
    ("wasi-libc sysroot", "/usr/lib/wasm32-wasi/libc.a", "wasi-libc"),
    (
        "compiler-rt builtins for wasm32",
        "/usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a",
        "libclang-rt-14-dev-wasm32",
    ),
    ("libc++ for wasm32-wasi", "/usr/lib/wasm32-wasi/libc++.a", "libc++-14-dev-wasm32"),
    ("libc++abi for wasm32-wasi", "/usr/lib/wasm32-wasi/libc++abi.a", "libc++abi-14-dev-wasm32"),
    (
        "Rust std for wasm32-wasi",
        "/usr/lib/rustlib/wasm32-wasi/lib/libstd-*.rlib",
        "libstd-rust-dev-wasm32",
    ),
]


def require_toolchain() -> None:
    """Skips (or, with STOCKADE_REQUIRE_TOOLCHAINS=1, fails) without the toolchain."""
    missing = [
        f"{what} ({pattern}; Debian: {package})"
        for what, pattern, package in TOOLCHAIN
        if not glob.glob(pattern)
    ]
    if not missing:
        return
    reason = "Wasm example toolchain missing: " + "; ".join(missing)
    if REQUIRE_TOOLCHAINS:
        pytest.fail(reason + " (STOCKADE_REQUIRE_TOOLCHAINS=1)")
    pytest.skip(reason + " (set STOCKADE_REQUIRE_TOOLCHAINS=1 to fail instead)")


# --- reproducible build -------------------------------------------------------


# Two independent builds, each compared with the committed modules (built in
# yet another checkout, at another time): different source and output
# directories, working directories, temporary directories, file times,
# umasks and locale/time-zone environments.
BUILDS = {
    "first": {"dir": "some where", "umask": 0o022, "mtime": 0, "env": {}},
    "second": {
        "dir": "elsewhere/deeper/still",
        "umask": 0o077,
        "mtime": 2_000_000_000,
        "env": {"TZ": "Pacific/Kiritimati", "LC_ALL": "C.UTF-8", "SOURCE_DATE_EPOCH": "1"},
    },
}


@pytest.fixture(scope="module", params=sorted(BUILDS))
def rebuilt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Both modules, rebuilt by build.sh from a copy of the sources elsewhere."""
    require_toolchain()
    setup = BUILDS[request.param]
    # A different, deeper source directory (with a space in it), another
    # output directory and another working directory than the committed build.
    sources = tmp_path_factory.mktemp(f"src-{request.param}") / str(setup["dir"]) / "examples"
    shutil.copytree(EXAMPLES, sources, ignore=shutil.ignore_patterns("*.wasm", "node_modules"))
    for path in sources.rglob("*"):
        os.utime(path, (setup["mtime"], setup["mtime"]))
    out = tmp_path_factory.mktemp(f"out-{request.param}") / "modules"
    build_tmp = tmp_path_factory.mktemp(f"buildtmp-{request.param}")
    env = {**os.environ, "TMPDIR": str(build_tmp), **setup["env"]}
    umask = setup["umask"]
    assert isinstance(umask, int)
    result = subprocess.run(
        ["bash", "-c", f'umask {umask:03o} && exec bash "$0" "$1"', str(sources / "build.sh"), str(out)],
        cwd=build_tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"build.sh failed:\n{result.stdout}\n{result.stderr}"
    assert "warning" not in result.stderr, result.stderr
    # Sources untouched, nothing written next to them, temporary directory gone.
    assert not list(sources.rglob("*.wasm"))
    assert not list(build_tmp.iterdir())
    return {name: (out / name).read_bytes() for name in MODULES}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_build_is_reproducible(rebuilt: dict[str, bytes], name: str) -> None:
    committed = MODULES[name].read_bytes()
    built = rebuilt[name]
    assert hashlib.sha256(built).hexdigest() == hashlib.sha256(committed).hexdigest(), (
        f"{name}: rebuilding gives different bytes; run examples/build.sh, "
        "commit the modules and update the hashes in examples/README.md"
    )
    assert built == committed


def test_readme_lists_the_committed_hashes() -> None:
    listed = dict(
        (path, digest)
        for digest, path in re.findall(r"^([0-9a-f]{64})  (\S+\.wasm)$", README.read_text(), re.M)
    )
    expected = {
        str(path.relative_to(EXAMPLES)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in MODULES.values()
    }
    assert listed == expected


def test_modules_are_stripped() -> None:
    """No custom sections: no names, no producers, no debug information."""
    for path in MODULES.values():
        data = path.read_bytes()
        assert data[:8] == b"\0asm\1\0\0\0"
        assert 0 not in section_ids(data), f"{path.name} has custom sections"


def section_ids(module: bytes) -> list[int]:
    def uleb(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = module[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, pos

    ids, pos = [], 8
    while pos < len(module):
        ids.append(module[pos])
        size, pos = uleb(pos + 1)
        pos += size
    assert pos == len(module)
    return ids


# --- running on wasmtime ------------------------------------------------------

# Runs one WASI command and prints {"exit_code": N} on its own stdout. The
# module's stdio goes to files. Any failure other than a WASI exit is a
# traceback and a non-zero exit of the runner itself, never a module exit code.
RUNNER = """
import json, sys, wasmtime
cfg = json.loads(sys.argv[1])
engine = wasmtime.Engine()
store = wasmtime.Store(engine)
try:
    wasi = wasmtime.WasiConfig()
    wasi.argv = cfg["argv"]
    wasi.env = cfg["env"]
    wasi.stdout_file = cfg["stdout"]
    wasi.stderr_file = cfg["stderr"]
    if cfg["stdin"] is not None:
        wasi.stdin_file = cfg["stdin"]
    for host, guest in cfg["preopens"]:
        wasi.preopen_dir(host, guest, False)
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    module = wasmtime.Module.from_file(engine, cfg["wasm"])
    instance = linker.instantiate(store, module)
    code = 0
    try:
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap as exit_trap:
        code = exit_trap.code
finally:
    close = getattr(store, "close", None)
    if close is not None:
        close()
print(json.dumps({"exit_code": code}))
"""


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str


def run_wasm(
    module: Path,
    argv: list[str],
    work: Path,
    *,
    env: dict[str, str] | None = None,
    preopens: dict[Path, str] | None = None,
    stdin: Path | None = None,
) -> Run:
    work.mkdir(parents=True, exist_ok=True)
    stdout, stderr = work / "stdout", work / "stderr"
    cfg = {
        "wasm": str(module),
        "argv": argv,
        "env": sorted((env or {}).items()),
        "stdout": str(stdout),
        "stderr": str(stderr),
        "stdin": None if stdin is None else str(stdin),
        "preopens": [(str(host), guest) for host, guest in (preopens or {}).items()],
    }
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"runner failed:\n{result.stdout}\n{result.stderr}"
    return Run(
        exit_code=json.loads(result.stdout)["exit_code"],
        stdout=stdout.read_text(encoding="utf-8"),
        stderr=stderr.read_text(encoding="utf-8"),
    )


def test_hello_greets_its_argument(tmp_path: Path) -> None:
    run = run_wasm(HELLO, ["hello", "Alice"], tmp_path)
    assert run.exit_code == 0
    assert run.stdout == "Hello, Alice!\narguments: 1\n"
    assert run.stderr == ""


def test_hello_defaults_to_world_and_shows_greeting(tmp_path: Path) -> None:
    run = run_wasm(HELLO, ["hello"], tmp_path, env={"GREETING": "Bonjour, Keep"})
    assert run.exit_code == 0
    assert run.stdout == "Hello, world!\narguments: 0\nGREETING: Bonjour, Keep\n"
    assert run.stderr == ""


# The reference for wordcount's output (see the definitions in its main.rs).
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def expected_report(inputs: list[tuple[str, bytes]]) -> str:
    lines, totals, words = [], [0, 0, 0], Counter[str]()
    for name, data in inputs:
        counts = [data.count(b"\n"), len(data.split()), len(data)]
        digest = hashlib.sha256(data).hexdigest()
        lines.append(f"{name}: lines={counts[0]} words={counts[1]} bytes={counts[2]} sha256={digest}")
        totals = [t + c for t, c in zip(totals, counts, strict=True)]
        words.update(w.lower() for w in WORD.findall(data.decode("utf-8", "replace")))
    if len(inputs) > 1:
        lines.append(f"total: lines={totals[0]} words={totals[1]} bytes={totals[2]}")
    lines.append("top words:")
    top = sorted(words.items(), key=lambda item: (-item[1], item[0]))[:10]
    lines.extend(f"{count:>7} {word}" for word, count in top)
    return "\n".join(lines) + "\n"


def test_wordcount_sample(tmp_path: Path) -> None:
    data = SAMPLE.read_bytes()
    run = run_wasm(
        WORDCOUNT,
        ["wordcount", "/data/sample.txt"],
        tmp_path,
        preopens={SAMPLE.parent: "/data"},
    )
    assert run.exit_code == 0, run.stderr
    assert run.stderr == ""
    newlines = data.count(b"\n")
    assert run.stdout.splitlines()[0] == (
        f"/data/sample.txt: lines={newlines} words={len(data.split())} "
        f"bytes={len(data)} sha256={hashlib.sha256(data).hexdigest()}"
    )
    assert run.stdout == expected_report([("/data/sample.txt", data)])
    assert "\n     20 the\n" in run.stdout


def test_wordcount_reads_stdin(tmp_path: Path) -> None:
    run = run_wasm(WORDCOUNT, ["wordcount"], tmp_path, stdin=SAMPLE)
    assert run.exit_code == 0, run.stderr
    assert run.stdout == expected_report([("-", SAMPLE.read_bytes())])


def test_wordcount_words_ties_and_several_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    files = {
        "a.txt": "Don't stop. DON'T stop! rock'n'roll 'quoted' end' x_y 42 42\n",
        "b.txt": "Café CAFÉ naïve Ünïcödé\tzeta alpha\vbeta\fgamma\r\ndelta epsilon",
        "c.txt": "",
        "d.txt": "kappa lambda mu nu xi omicron pi rho sigma tau upsilon phi chi psi omega\n",
    }
    for name, text in files.items():
        (data / name).write_text(text, encoding="utf-8")
    argv = ["wordcount", *(f"/in/{name}" for name in files)]
    run = run_wasm(WORDCOUNT, argv, tmp_path / "run", preopens={data: "/in"})
    assert run.exit_code == 0, run.stderr
    expected = expected_report([(f"/in/{n}", t.encode()) for n, t in files.items()])
    assert run.stdout == expected
    assert "      2 café\n      2 don't\n" in run.stdout


def test_wordcount_sha256_at_block_boundaries(tmp_path: Path) -> None:
    rng = random.Random(20240101)
    lengths = [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 70_001]
    data = tmp_path / "data"
    data.mkdir()
    inputs = []
    for length in lengths:
        content = rng.randbytes(length)
        (data / f"{length}.bin").write_bytes(content)
        inputs.append((f"/in/{length}.bin", content))
    argv = ["wordcount", *(name for name, _ in inputs)]
    run = run_wasm(WORDCOUNT, argv, tmp_path / "run", preopens={data: "/in"})
    assert run.exit_code == 0, run.stderr
    # Random bytes are mostly not UTF-8: compare everything but the top words,
    # whose reference would depend on Unicode tables of two languages.
    got = run.stdout.split("top words:\n")[0]
    assert got == expected_report(inputs).split("top words:\n")[0]
    for name, content in inputs:
        assert f"{name}: " in got
        assert f"sha256={hashlib.sha256(content).hexdigest()}\n" in got


def test_wordcount_missing_file_fails(tmp_path: Path) -> None:
    run = run_wasm(
        WORDCOUNT,
        ["wordcount", "/data/sample.txt", "/data/no-such-file.txt"],
        tmp_path,
        preopens={SAMPLE.parent: "/data"},
    )
    assert run.exit_code == 1
    assert run.stdout == ""
    assert run.stderr.startswith("wordcount: /data/no-such-file.txt: cannot open: ")
    assert run.stderr.count("\n") == 1


# --- csvstat (C++) -------------------------------------------------------------

NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def quoted(value: str) -> str:
    """csvstat's quoting of names and values (see quoted() in csvstat.cpp)."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def expected_csvstat(text: str) -> str:
    """The reference summary, from Python's csv module (well-formed input
    with LF or CRLF line ends only: csvstat, unlike csv, keeps a lone CR)."""
    records = [r for r in csv.reader(io.StringIO(text, newline=""), strict=True) if r]
    header, rows = records[0], records[1:]
    lines = [f"rows: {len(rows)}", f"columns: {len(header)}"]
    for c, name in enumerate(header):
        values = [row[c] for row in rows if row[c] != ""]
        line = f"{quoted(name)}: count={len(values)} empty={len(rows) - len(values)}"
        numbers = [float(v) for v in values if NUMBER.fullmatch(v)]
        if not values:
            line += " type=empty"
        elif len(numbers) == len(values) and all(math.isfinite(x) for x in numbers):
            total = 0.0
            for x in numbers:  # in order, like the C++ (not math.fsum)
                total += x
            low, high, mean = min(numbers), max(numbers), total / len(numbers)
            # Python's ".15g" formats like C's "%.15g".
            line += f" type=number min={low:.15g} max={high:.15g} mean={mean:.15g} sum={total:.15g}"
        else:
            counts = Counter(values)
            top = min(counts, key=lambda v: (-counts[v], v.encode()))
            line += f" type=text distinct={len(counts)} top={quoted(top)} ({counts[top]})"
        lines.append(line)
    return "\n".join(lines) + "\n"


CSV_SAMPLE_SUMMARY = """\
rows: 8
columns: 6
"station": count=8 empty=0 type=text distinct=4 top="Bergen" (2)
"date": count=8 empty=0 type=text distinct=2 top="2024-01-01" (4)
"temp_c": count=8 empty=0 type=number min=-13.5 max=4.2 mean=-2.65625 sum=-21.25
"rain_mm": count=7 empty=1 type=number min=0 max=12.4 mean=5.12142857142857 sum=35.85
"wind": count=8 empty=0 type=text distinct=5 top="SW" (3)
"note": count=6 empty=2 type=text distinct=5 top="rain" (2)
"""


def test_csvstat_sample(tmp_path: Path) -> None:
    assert expected_csvstat(CSV_SAMPLE.read_text(encoding="utf-8")) == CSV_SAMPLE_SUMMARY
    run = run_wasm(CSVSTAT, ["csvstat", "/data/sample.csv"], tmp_path, preopens={CSV_SAMPLE.parent: "/data"})
    assert (run.exit_code, run.stderr) == (0, "")
    assert run.stdout == CSV_SAMPLE_SUMMARY
    stdin = run_wasm(CSVSTAT, ["csvstat"], tmp_path / "stdin", stdin=CSV_SAMPLE)
    assert (stdin.exit_code, stdin.stdout, stdin.stderr) == (0, CSV_SAMPLE_SUMMARY, "")


def test_csvstat_quotes_crlf_blank_lines_and_odd_values(tmp_path: Path) -> None:
    text = (
        'id,"na,me",value,blank,mixed\r\n'
        "\r\n"
        '1,"a ""quoted"" one",1e3,,7\r\n'
        '2,"multi\r\nline\tand\\",-.5,,x\r\n'
        "\n"
        "3,Ünïcödé,+2.,,1e999\r\n"
        '4,"\x01ctl",0.25,,7\n'
        "5,Ünïcödé,1E-3,,"
    )
    (tmp_path / "in.csv").write_bytes(text.encode())
    run = run_wasm(CSVSTAT, ["csvstat", "-"], tmp_path / "run", stdin=tmp_path / "in.csv")
    assert (run.exit_code, run.stderr) == (0, "")
    assert run.stdout == expected_csvstat(text)
    assert '"na,me": count=5 empty=0 type=text distinct=4 top="Ünïcödé" (2)\n' in run.stdout
    assert '"blank": count=0 empty=5 type=empty\n' in run.stdout
    # 1e999 overflows a double: not a usable number, so the column is text.
    assert '"mixed": count=4 empty=1 type=text distinct=3 top="7" (2)\n' in run.stdout
    assert '"value": count=5 empty=0 type=number min=-0.5 max=1000 ' in run.stdout


def test_csvstat_random_table(tmp_path: Path) -> None:
    rng = random.Random(19)
    words = ["alpha", "beta", "gamma", "delta", "with,comma", 'say "hi"', "é"]
    rows = [["n", "x", "word", "maybe"]]
    for _ in range(3000):
        rows.append(
            [
                str(rng.randint(-(10**9), 10**9)),
                repr(rng.uniform(-1e6, 1e6)),
                rng.choice(words),
                rng.choice(["", "", repr(rng.random())]),
            ]
        )
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    text = buffer.getvalue()
    assert len(text) > 65536  # more than one read buffer, more than the default stack
    (tmp_path / "big.csv").write_text(text, encoding="utf-8", newline="")
    run = run_wasm(CSVSTAT, ["csvstat"], tmp_path / "run", stdin=tmp_path / "big.csv")
    assert (run.exit_code, run.stderr) == (0, "")
    assert run.stdout == expected_csvstat(text)
    assert run.stdout.count("type=number") == 3


@pytest.mark.parametrize(
    ("text", "argv", "code", "message"),
    [
        ('a,b\n1,"2\n', ["csvstat"], 1, "csvstat: -: line 2: unterminated quoted field\n"),
        ("a,b\n1,2\n3\n", ["csvstat"], 1, "csvstat: -: line 3: 1 fields, the header has 2\n"),
        ('a,b\n1,x"y\n', ["csvstat"], 1, "csvstat: -: line 2: quote inside an unquoted field\n"),
        ('a,b\n1,"x"y\n', ["csvstat"], 1, "csvstat: -: line 2: text after a closing quote\n"),
        ('a,b\n"1\n\n2",3\n4\n', ["csvstat"], 1, "csvstat: -: line 5: 1 fields, the header has 2\n"),
        ("\n\r\n", ["csvstat"], 1, "csvstat: -: no header\n"),
        ("", ["csvstat", "/in/nope.csv"], 1, "csvstat: /in/nope.csv: cannot open: "),
        ("", ["csvstat", "a", "b"], 2, "csvstat: usage: csvstat [FILE]\n"),
    ],
)
def test_csvstat_rejects_bad_input(
    tmp_path: Path, text: str, argv: list[str], code: int, message: str
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in.csv").write_text(text, encoding="utf-8", newline="")
    run = run_wasm(
        CSVSTAT, argv, tmp_path / "run", stdin=tmp_path / "in.csv", preopens={tmp_path / "in": "/in"}
    )
    assert run.exit_code == code
    assert run.stdout == ""
    assert run.stderr.startswith(message)
    assert run.stderr.count("\n") == 1


def test_csvstat_header_only(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("only,header", encoding="utf-8")
    run = run_wasm(CSVSTAT, ["csvstat"], tmp_path / "run", stdin=tmp_path / "in.csv")
    assert (run.exit_code, run.stderr) == (0, "")
    assert run.stdout == (
        'rows: 0\ncolumns: 2\n"only": count=0 empty=0 type=empty\n"header": count=0 empty=0 type=empty\n'
    )


@pytest.mark.slow
def test_csvstat_in_a_sim_keep(stockade, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The module with --stdin, and its package (which carries sample.csv and
    names it in its args), each through `stockade run --allow-sim`."""
    proc = stockade("run", "--allow-sim", "--quiet", "--stdin", str(CSV_SAMPLE), str(CSVSTAT))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == CSV_SAMPLE_SUMMARY
    pkg = tmp_path / "csvstat.stockade"
    built = stockade("package", "build", str(EXAMPLES / "csvstat"), "-o", str(pkg))
    assert built.returncode == 0, built.stderr
    proc = stockade("run", "--allow-sim", "--quiet", str(pkg))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == CSV_SAMPLE_SUMMARY
    # A bad table: the workload's one-line error and exit code come through.
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1\n", encoding="utf-8")
    proc = stockade("run", "--allow-sim", "--quiet", "--stdin", str(bad), str(CSVSTAT))
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert b"csvstat: -: line 2: 1 fields, the header has 2\n" in proc.stderr


# == compute ===========================================================================================


def compute_sha256_reference(mib: int) -> str:
    """What ``compute sha256 MIB`` hashes (examples/README.md, compute)."""
    pattern = bytearray((j * 31 + 7) % 256 for j in range(65536))
    digest = hashlib.sha256()
    for i in range(mib * 16):
        pattern[:8] = i.to_bytes(8, "little")
        digest.update(pattern)
    return digest.hexdigest()


@pytest.mark.parametrize("mib", [0, 1, 3])
def test_compute_sha256_matches_hashlib(mib: int, tmp_path: Path) -> None:
    run = run_wasm(COMPUTE, ["compute", "sha256", str(mib)], tmp_path)
    assert (run.exit_code, run.stderr) == (0, "")
    assert run.stdout == compute_sha256_reference(mib) + "\n"


@pytest.mark.parametrize(
    ("n", "count"),
    # pi(n) (OEIS A000720; 10**7: 664579), and the edges of the sieve.
    [(0, 0), (1, 0), (2, 1), (3, 2), (4, 2), (9, 4), (127, 31), (128, 31), (10**6, 78498), (10**7, 664579)],
)
def test_compute_counts_primes(n: int, count: int, tmp_path: Path) -> None:
    run = run_wasm(COMPUTE, ["compute", "primes", str(n)], tmp_path)
    assert (run.exit_code, run.stderr) == (0, "")
    assert run.stdout == f"{count}\n"


def test_compute_copies_stdin(tmp_path: Path) -> None:
    # Text (run_wasm reads stdout as UTF-8) over several 64 KiB reads.
    data = os.urandom(3 * 65536 + 17).hex().encode()[: 3 * 65536 + 17]
    (tmp_path / "in").write_bytes(data)
    run = run_wasm(COMPUTE, ["compute", "copy"], tmp_path / "run", stdin=tmp_path / "in")
    assert run.exit_code == 0
    assert (tmp_path / "run" / "stdout").read_bytes() == data
    assert run.stderr == f"copied {len(data)} bytes\n"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["sha256"],
        ["sha256", "-1"],
        ["sha256", "x"],
        ["primes", str(2**36 + 1)],
        ["copy", "1"],
        ["sum", "1"],
    ],
)
def test_compute_rejects_bad_arguments(argv: list[str], tmp_path: Path) -> None:
    run = run_wasm(COMPUTE, ["compute", *argv], tmp_path)
    assert run.exit_code == 2
    assert run.stdout == ""
    assert run.stderr == "usage: compute sha256 MIB | compute primes N | compute copy\n"


def test_compute_sieve_too_large_for_memory(tmp_path: Path) -> None:
    """2**36 needs a 4 GiB sieve, more than a 32-bit linear memory holds."""
    run = run_wasm(COMPUTE, ["compute", "primes", str(2**36)], tmp_path)
    assert run.exit_code == 1
    assert run.stdout == ""
    assert run.stderr == f"compute: cannot allocate the sieve for {2**36}\n"
