"""Throughput and compute (issue 18, item 5), each part against a baseline
measured in the same run:

compute   a compute-bound workload (examples/compute: ``sha256 MIB`` and
          ``primes N``) in a sim Keep (``stockade run --allow-sim``, the
          Keep's own ``run`` step: instantiate + ``_start``) against the same
          module on bare wasmtime-py in a fresh Python process, timed the same
          way. To explain a difference, bare wasmtime-py also runs with the
          Keep's settings added one at a time: the Keep's engine
          configuration (``stockade.keep.runner.make_engine``: the
          WebAssembly features it turns off; no epoch interruption since
          ADR 0029), then its store limits (``store_limits``) and output
          callback: that last variant has the Keep's settings exactly, and
          ``ratio_keep_over_same_settings`` is the Keep over it. Also run:
          bare with epoch interruption on (what the Keep's limits cost
          before ADR 0029). Goal: Keep / bare <= 1.03x with the same
          settings.
bulk      bytes through standard input and back out on standard output
          (``compute copy``) through the attested channel, both for a local
          Keep (``stockade run``) and through a keep manager's WebSocket relay
          (``stockade deploy --host``), against plain loopback TLS 1.3 between
          two Python processes moving the same bytes the same way (all of it
          one way, then all of it back). The stockade figure is the client's
          ``run`` step (from the release to the exit status: stdin out,
          compile, copy, stdout back) minus the Keep's compile step. Stdin
          above 1 MiB is streamed in ``stdin`` messages while the output
          comes back (docs/protocol.cddl), so both directions overlap, as
          they cannot in the baseline. ``--bulk-mib`` (default 1024) sets
          the size. Goal: >= 0.8x.
deploys   N deploys of examples/hello at once through a running keep
          manager (fork server), each from its own client thread (create,
          relay, attestation, verification, identity, run): p50/p99 latency
          and host CPU seconds per deploy (the manager, its fork servers and
          every Keep and sim PSP they forked, from /proc/PID/stat utime +
          stime + the reaped children's cutime + cstime). Baseline: the same
          deploy one at a time on the same manager.

Not a pass/fail gate. ``--runs`` repeats the timed parts; ``--json`` prints
one document.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMPUTE = ROOT / "examples" / "compute" / "compute.wasm"
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
MIB = 1024 * 1024

sys.path.insert(0, str(ROOT / "bench"))  # bench_manager: its Manager and helpers

# == compute ==========================================================================================

#: Bare wasmtime-py in a fresh process, with a chosen share of the Keep's
#: settings; prints one JSON line: compile and run (instantiate + _start) ms.
BARE = r"""
import json, sys, time
import wasmtime
cfg = json.loads(sys.argv[1])
if cfg["engine"] == "keep":
    from stockade.keep.runner import make_engine
    engine = make_engine()
elif cfg["engine"] == "epoch":
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
else:
    engine = wasmtime.Engine()
wasm = open(cfg["wasm"], "rb").read()
t0 = time.perf_counter()
module = wasmtime.Module(engine, wasm)
t1 = time.perf_counter()
store = wasmtime.Store(engine)
wasi = wasmtime.WasiConfig()
wasi.argv = ["compute", *cfg["args"]]
out = []
if cfg["limits"]:
    from stockade.keep.runner import store_limits
    store.set_limits(**store_limits(cfg["memory"]))
    wasi.stdout_custom = out.append  # the Keep's output goes through a callback too
else:
    wasi.stdout_file = "/dev/null"
store.set_wasi(wasi)
if cfg["engine"] == "epoch":
    store.set_epoch_deadline(1)
linker = wasmtime.Linker(engine)
linker.define_wasi()
t2 = time.perf_counter()
c2 = time.thread_time()
instance = linker.instantiate(store, module)
code = 0
try:
    instance.exports(store)["_start"](store)
except wasmtime.ExitTrap as exc:
    code = exc.code
t3 = time.perf_counter()
c3 = time.thread_time()
store.close()
print(json.dumps({"code": code, "compile_ms": (t1 - t0) * 1e3, "run_ms": (t3 - t2) * 1e3,
                  "run_cpu_ms": (c3 - c2) * 1e3, "stdout": b"".join(out).decode()}), flush=True)
# Not through interpreter finalization: with stdout_custom, wasmtime-py's
# output thread can panic ("panic in a function that cannot unwind") and
# abort the process while Python shuts down (seen with wasmtime-py 50).
import os
os._exit(0)
"""

#: name -> (engine, store limits and output callback): the Keep's settings
#: added one at a time ("bare+epoch": epoch interruption, which Keeps used
#: before ADR 0029, on bare wasmtime-py).
BARE_VARIANTS = {
    "bare": ("default", False),
    "bare+epoch": ("epoch", False),
    "bare+keep_engine": ("keep", False),
    "bare+keep_engine+limits": ("keep", True),
}
#: What each variant adds its setting to (share_of_each_setting_cpu).
VARIANT_BASE = {
    "bare+epoch": "bare",
    "bare+keep_engine": "bare",
    "bare+keep_engine+limits": "bare+keep_engine",
    "keep": "bare+keep_engine+limits",
}


def _env(state: Path) -> dict[str, str]:
    return {**os.environ, "STOCKADE_STATE_DIR": str(state)}


def bare_run(args: list[str], engine: str, limits: bool, memory: int) -> dict[str, Any]:
    cfg = {"wasm": str(COMPUTE), "args": args, "engine": engine, "limits": limits, "memory": memory}
    proc = subprocess.run(
        [sys.executable, "-c", BARE, json.dumps(cfg)], capture_output=True, check=True, timeout=900
    )
    doc: dict[str, Any] = json.loads(proc.stdout)
    if doc["code"] != 0:
        raise SystemExit(f"bare run of compute {args} exited {doc['code']}: {proc.stderr.decode()}")
    return doc


def keep_run(args: list[str], state: Path, memory: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "stockade", "run", "--allow-sim", "--json", "--timeout", "900"]
    cmd += ["--memory", str(memory), str(COMPUTE), "--", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=_env(state), check=False, timeout=1200)
    wall = (time.perf_counter() - t0) * 1e3
    if proc.returncode != 0:
        raise SystemExit(f"stockade run compute {args} failed ({proc.returncode}): {proc.stderr.decode()}")
    doc = json.loads(proc.stdout)
    t = doc["timing_ms"]
    return {
        "wall_ms": wall,
        "compile_ms": t["keep_compile"],
        "run_ms": t["keep_run"],
        "run_cpu_ms": t["keep_run_cpu"],
        "stdout": doc["stdout"],
    }


def part_compute(runs: int, sha_mib: int, primes: int, state: Path) -> dict[str, Any]:
    memory = 256 * MIB
    workloads = {"sha256": ["sha256", str(sha_mib)], "primes": ["primes", str(primes)]}
    result: dict[str, Any] = {}
    for name, args in workloads.items():
        variants = [*BARE_VARIANTS, "keep"]
        cpu: dict[str, list[float]] = {k: [] for k in variants}
        wall: dict[str, list[float]] = {k: [] for k in variants}
        compile_ms: dict[str, list[float]] = {k: [] for k in variants}
        outputs: set[str] = set()
        keep_run(args, state, memory)  # warm-up: page cache, sim chip
        for i in range(runs):
            # Rotate the order so that a slow moment of the machine does not
            # always hit the same variant.
            order = variants[i % len(variants) :] + variants[: i % len(variants)]
            for variant in order:
                if variant == "keep":
                    doc = keep_run(args, state, memory)
                else:
                    engine, limits = BARE_VARIANTS[variant]
                    doc = bare_run(args, engine, limits, memory)
                cpu[variant].append(doc["run_cpu_ms"])
                wall[variant].append(doc["run_ms"])
                compile_ms[variant].append(doc["compile_ms"])
                if doc["stdout"]:
                    outputs.add(doc["stdout"])
        if len(outputs) != 1:
            raise SystemExit(f"compute {args}: the runs disagree: {sorted(outputs)}")
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        med_wall = {k: statistics.median(v) for k, v in wall.items()}
        result[name] = {
            "args": args,
            "output": outputs.pop().strip(),
            # CPU time of the thread running the Wasm code (instantiate +
            # _start): what the settings cost, with less of the noise of a
            # shared machine than wall-clock time.
            "run_cpu_ms_median": {k: round(v, 1) for k, v in med_cpu.items()},
            "run_wall_ms_median": {k: round(v, 1) for k, v in med_wall.items()},
            "compile_ms_median": {k: round(statistics.median(v), 1) for k, v in compile_ms.items()},
            "ratio_over_bare_cpu": {k: round(v / med_cpu["bare"], 3) for k, v in med_cpu.items()},
            "ratio_over_bare_wall": {k: round(v / med_wall["bare"], 3) for k, v in med_wall.items()},
            # What each setting adds to the run's CPU time, as a share of
            # the bare run's ("keep": what the Keep adds beyond its settings).
            "share_of_each_setting_cpu": {
                k: round((med_cpu[k] - med_cpu[base]) / med_cpu["bare"], 3)
                for k, base in VARIANT_BASE.items()
            },
            # The goal's ratio: the Keep over bare wasmtime-py with the same
            # engine and store settings.
            "ratio_keep_over_same_settings": {
                "cpu": round(med_cpu["keep"] / med_cpu["bare+keep_engine+limits"], 3),
                "wall": round(med_wall["keep"] / med_wall["bare+keep_engine+limits"], 3),
            },
        }
    result["target_ratio"] = 1.03
    return result


# == bulk =============================================================================================

#: One end of the baseline: a TLS 1.3 server on loopback in its own Python
#: process. Reads SIZE bytes, then sends them back; prints nothing.
TLS_SERVER = r"""
import socket, ssl, sys
cert, key, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.load_cert_chain(cert, key)
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
tls = ctx.wrap_socket(conn, server_side=True)
buf = bytearray()
while len(buf) < size:
    data = tls.recv(1 << 20)
    if not data:
        sys.exit("client went away")
    buf += data
view = memoryview(buf)
for off in range(0, size, 1 << 20):
    tls.sendall(view[off : off + (1 << 20)])
tls.close()
"""


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = time.time()
    import datetime as dt

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime.fromtimestamp(now - 60, dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(now + 3600, dt.UTC))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def tls_baseline(size: int, data: bytes, cert: Path, key: Path) -> tuple[float, float]:
    """ms to send ``size`` bytes to another Python process over loopback TLS
    1.3 and receive them back (after the handshake), and the CPU seconds of
    both processes (start-up of the server included)."""
    import resource

    def children_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    cpu0 = children_cpu() + time.process_time()
    server = subprocess.Popen(
        [sys.executable, "-c", TLS_SERVER, str(cert), str(key), str(size)], stdout=subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # a baseline of the transfer, not of trust
        with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw) as tls:
            t0 = time.perf_counter()
            view = memoryview(data)
            for off in range(0, size, 1 << 20):
                tls.sendall(view[off : off + (1 << 20)])
            got = 0
            while got < size:
                chunk = tls.recv(1 << 20)
                if not chunk:
                    raise SystemExit("baseline server closed early")
                got += len(chunk)
            ms = (time.perf_counter() - t0) * 1e3
        server.wait(60)
        return ms, children_cpu() + time.process_time() - cpu0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


TIMING_LINE = re.compile(r"^\s+(\w+)\s+([0-9.]+)", re.M)


def _timings(stderr: str) -> dict[str, float]:
    """The client steps and Keep steps of ``--timings`` (stderr)."""
    steps: dict[str, float] = {}
    section = ""
    for line in stderr.splitlines():
        if line.strip() in ("client steps", "Keep steps (measured inside the Keep)"):
            section = "keep_" if line.strip().startswith("Keep") else "client_"
            continue
        m = TIMING_LINE.match(line)
        if m and section:
            steps[section + m.group(1)] = float(m.group(2))
    return steps


def stockade_bulk(
    cmd: list[str], env: dict[str, str], src: Path, size: int, check: bool, mgr: Any = None
) -> dict[str, Any]:
    """Run ``cmd`` (stockade run|deploy ... compute copy) with ``src`` as the
    workload's stdin; stdout to /dev/null, or to a file compared with the
    input when ``check``. With ``mgr`` (the keep manager of a deploy
    --host), also the CPU seconds of each hop: the client process (start-up
    included), the manager (its relay) and the Keep (with its sim PSP)."""
    with tempfile.TemporaryDirectory(prefix="stockade-bench-bulk-") as tmp:
        out_path = Path(tmp) / "out" if check else Path(os.devnull)
        with open(out_path, "wb") as out:
            hops0 = _hop_cpu(mgr) if mgr is not None else None
            t0 = time.perf_counter()
            proc = subprocess.run(
                [*cmd, "--stdin", str(src), "--timings", str(COMPUTE), "copy"],
                stdout=out,
                stderr=subprocess.PIPE,
                env=env,
                check=False,
                timeout=1800,
            )
            wall = (time.perf_counter() - t0) * 1e3
            hops = None
            if mgr is not None and hops0 is not None:
                _settle(mgr)  # the Keep reaped: its CPU is in its fork server's
                hops1 = _hop_cpu(mgr)
                hops = {k: round(hops1[k] - hops0[k], 3) for k in hops1}
        stderr = proc.stderr.decode("utf-8", "replace")
        if proc.returncode != 0:
            return {"ok": False, "exit_code": proc.returncode, "error": stderr.strip().splitlines()[-1:]}
        if check and not _same_file(out_path, src):
            raise SystemExit("bulk: the workload's stdout is not its stdin")
    steps = _timings(stderr)
    if f"copied {size} bytes" not in stderr:
        raise SystemExit(f"bulk: the workload did not copy {size} bytes: {stderr}")
    return {
        "ok": True,
        "wall_ms": wall,
        # From the release to the exit status, without the Keep's compile.
        "transfer_ms": steps["client_run"] - steps["keep_compile"],
        "keep_wait_release_ms": steps["keep_wait_release"],
        "keep_run_ms": steps["keep_run"],
        "cpu_s": hops,
    }


def _hop_cpu(mgr: Any) -> dict[str, float]:
    """CPU seconds so far of this bench's children (the client processes it
    ran: run with STOCKADE_AGENT=0 they are its own), of the manager
    process, and of its fork servers with the Keeps and sim PSPs they
    forked and reaped."""
    import resource

    from bench_manager import descendants

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    tree = descendants(mgr.proc.pid)
    return {
        "client": children.ru_utime + children.ru_stime,
        "manager": cpu_with_children(mgr.proc.pid, children=False),
        "keep": sum(cpu_with_children(p) for p, (ppid, _) in tree.items() if ppid == mgr.proc.pid),
    }


def _settle(mgr: Any) -> None:
    """Wait until only the fork servers are left under the manager."""
    from bench_manager import descendants

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(ppid == mgr.proc.pid for ppid, _ in descendants(mgr.proc.pid).values()):
            return
        time.sleep(0.05)


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    return _sha256(a) == _sha256(b)


def _sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.digest()


def part_bulk(runs: int, mib: int, state: Path, chip: Path) -> dict[str, Any]:
    size = mib * MIB
    result: dict[str, Any] = {"requested_bytes": size}
    tmp = Path(tempfile.mkdtemp(prefix="stockade-bench-bulk-"))
    mgr = None
    try:
        cert, key = _self_signed(tmp)

        def make_input(n: int) -> tuple[Path, bytes]:
            # Incompressible and cheap to make: a SHA-256 counter stream.
            seed = hashlib.sha256(b"stockade bulk bench").digest()
            block = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(32768))
            data = (block * (n // len(block) + 1))[:n]
            path = tmp / f"in-{n}"
            path.write_bytes(data)
            return path, data

        limits = ["--max-output", str(size + MIB), "--timeout", "1200", "--memory", "64M"]
        local = [sys.executable, "-m", "stockade", "run", "--allow-sim", "--quiet", *limits]
        env = _env(state)
        src, data = make_input(size)
        first = stockade_bulk(local, env, src, size, check=True)
        if not first["ok"]:
            raise SystemExit(f"bulk: {size} bytes through a local Keep failed: {first}")
        result["measured_bytes"] = size

        mgr = start_manager(tmp / "mgr", chip, quota=4)
        (tmp / "token").write_text(mgr.token)
        remote = [sys.executable, "-m", "stockade", "deploy", "--host", mgr.url, "--token-file"]
        # The sim root as the host's operator hands it over (`stockade host sim-root`).
        remote += [str(tmp / "token"), "--sim-root", str(mgr.state / "sim" / "chip" / "ark.der")]
        remote += ["--allow-sim", "--quiet", *limits]
        # The deploy client in this bench's own process tree (not the client
        # agent's, ADR 0028) so that its CPU is counted: the transfer (from
        # the release on) is the same either way.
        remote_env = {**env, "STOCKADE_AGENT": "0"}
        relay_first = stockade_bulk(remote, remote_env, src, size, check=True)
        if not relay_first["ok"]:
            raise SystemExit(f"bulk through the relay failed: {relay_first}")

        rows: dict[str, list[float]] = {"tls_baseline": [], "local": [], "relay": []}
        parts: dict[str, list[dict[str, Any]]] = {"local": [], "relay": []}
        baseline_cpu: list[float] = []
        for _ in range(runs):
            ms, cpu = tls_baseline(size, data, cert, key)
            rows["tls_baseline"].append(ms)
            baseline_cpu.append(cpu)
            for name, cmd, cmd_env, hop in (("local", local, env, None), ("relay", remote, remote_env, mgr)):
                doc = stockade_bulk(cmd, cmd_env, src, size, check=False, mgr=hop)
                if not doc["ok"]:
                    raise SystemExit(f"bulk {name} failed: {doc}")
                rows[name].append(doc["transfer_ms"])
                parts[name].append(doc)
        med = {k: statistics.median(v) for k, v in rows.items()}
        result.update(
            {
                "transfer_ms_median": {k: round(v, 1) for k, v in med.items()},
                # Both directions: stdin in, stdout back.
                "mib_per_s": {k: round(2 * size / MIB / (v / 1e3), 1) for k, v in med.items()},
                "ratio_throughput_over_tls": {
                    k: round(med["tls_baseline"] / med[k], 3) for k in ("local", "relay")
                },
                "keep_wait_release_ms_median": {
                    k: round(statistics.median(d["keep_wait_release_ms"] for d in v), 1)
                    for k, v in parts.items()
                },
                "keep_run_ms_median": {
                    k: round(statistics.median(d["keep_run_ms"] for d in v), 1) for k, v in parts.items()
                },
                # CPU seconds of each process (both ends of the baseline;
                # through the relay: the client with its start-up, the
                # manager, the Keep with its sim PSP).
                "cpu_s_median": {
                    "tls_baseline": round(statistics.median(baseline_cpu), 3),
                    "relay": {
                        hop: round(statistics.median(d["cpu_s"][hop] for d in parts["relay"]), 3)
                        for hop in ("client", "manager", "keep")
                    },
                },
                "target_ratio": 0.8,
            }
        )
    finally:
        if mgr is not None:
            mgr.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


# == deploys ==========================================================================================


def start_manager(base: Path, chip: Path, quota: int) -> Any:
    from bench_manager import Manager

    base.mkdir(parents=True)
    return Manager(base, chip, quota, fork_server=True)


def cpu_with_children(pid: int, *, own: bool = True, children: bool = True) -> float:
    """utime + stime + cutime + cstime of ``pid`` (/proc/PID/stat fields
    14-17, proc(5)): its own CPU and that of the children it has reaped."""
    from stockade.procfs import read_stat

    fields = read_stat(pid)
    if fields is None:
        return 0.0
    picked = ((11, 12) if own else ()) + ((13, 14) if children else ())
    return sum(int(fields[i]) for i in picked) / os.sysconf("SC_CLK_TCK")


def part_deploys(count: int, sequential: int, chip: Path) -> dict[str, Any]:
    from bench_manager import descendants, pct
    from stockade.client.attest import TrustConfig
    from stockade.client.deploy import DeployPlan, deploy
    from stockade.client.remote import ManagerClient
    from stockade.measure.launch import keep_measurement
    from stockade.policy.builtin import development_policy
    from stockade.wire.messages import Config

    tmp = Path(tempfile.mkdtemp(prefix="stockade-bench-deploys-"))
    mgr = start_manager(tmp / "mgr", chip, quota=count + 8)
    try:
        # The sim root as the host's operator hands it over (`stockade host sim-root`).
        sim_root = (mgr.state / "sim" / "chip" / "ark.der").read_bytes()
        trust = TrustConfig(sim_root=sim_root, policy=development_policy(keep_measurement()))
        wasm = HELLO.read_bytes()

        def one() -> float:
            plan = DeployPlan.for_module(wasm, Config(args=("Alice",)))
            out = bytearray()
            t0 = time.perf_counter()
            with ManagerClient(mgr.url, mgr.token, timeout=600) as client:
                keep = client.create("sim")
                sock = client.connect(str(keep["id"]))
                try:
                    result = deploy(sock, plan, trust, lambda fd, data: out.extend(data) if fd == 1 else None)
                finally:
                    sock.close()
            ms = (time.perf_counter() - t0) * 1e3
            if result.exit_code != 0 or not out.startswith(b"Hello, Alice!"):
                raise SystemExit(f"deploy failed: exit {result.exit_code}, stdout {bytes(out)!r}")
            return ms

        time.sleep(0.5)  # the fork servers finish their imports
        one()  # warm-up
        serial = [one() for _ in range(sequential)]

        def host_cpu() -> tuple[float, float]:
            """CPU seconds of the manager, and of its fork servers with the
            Keeps and sim PSPs they forked (each fork server reaps its
            children, so their CPU lands in its cutime/cstime)."""
            tree = descendants(mgr.proc.pid)
            forks = sum(cpu_with_children(p) for p, (ppid, _) in tree.items() if ppid == mgr.proc.pid)
            return cpu_with_children(mgr.proc.pid), forks

        def settle() -> None:
            # Every Keep and PSP of the burst ended and reaped (only the
            # fork servers are left under the manager).
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                tree = descendants(mgr.proc.pid)
                if all(ppid == mgr.proc.pid for ppid, _ in tree.values()):
                    return
                time.sleep(0.2)

        settle()
        cpu0 = host_cpu()
        client0 = time.process_time()
        wall0 = time.perf_counter()
        barrier = threading.Barrier(count)

        def burst_one() -> float:
            barrier.wait()
            return one()

        with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
            latencies = list(pool.map(lambda _: burst_one(), range(count)))
        wall = time.perf_counter() - wall0
        client_cpu = time.process_time() - client0
        settle()
        cpu1 = host_cpu()
        manager_cpu, forks_cpu = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        cpu = manager_cpu + forks_cpu
        return {
            "deploys": count,
            "latency_ms": {"p50": round(pct(latencies, 0.5), 1), "p99": round(pct(latencies, 0.99), 1)},
            "one_at_a_time_ms": {"p50": round(pct(serial, 0.5), 1), "p99": round(pct(serial, 0.99), 1)}
            if serial
            else None,
            "ratio_p50_over_one_at_a_time": round(pct(latencies, 0.5) / pct(serial, 0.5), 2)
            if serial
            else None,
            "wall_s": round(wall, 2),
            "deploys_per_s": round(count / wall, 1),
            "host_cpu_s": round(cpu, 2),
            "host_cpu_s_per_deploy": round(cpu / count, 3),
            "manager_cpu_s_per_deploy": round(manager_cpu / count, 3),
            "keeps_and_psps_cpu_s_per_deploy": round(forks_cpu / count, 3),
            # The bench's own client threads (TLS, verification), not host CPU.
            "client_cpu_s_per_deploy": round(client_cpu / count, 3),
        }
    finally:
        mgr.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# == main =============================================================================================


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each kind (compute, bulk)")
    parser.add_argument(
        "--parts", default="compute,bulk,deploys", help="comma-separated: compute,bulk,deploys"
    )
    parser.add_argument("--sha-mib", type=int, default=256, help="compute: MiB hashed by `compute sha256`")
    parser.add_argument("--primes", type=int, default=200_000_000, help="compute: N of `compute primes`")
    parser.add_argument("--bulk-mib", type=int, default=1024, help="bulk: MiB through stdin and back")
    parser.add_argument("--deploys", type=int, default=200, help="deploys at once through the manager")
    parser.add_argument("--sequential", type=int, default=10, help="deploys one at a time (baseline)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - {"compute", "bulk", "deploys"}
    if unknown or args.runs < 1 or args.deploys < 1 or args.sequential < 1 or args.bulk_mib < 1:
        parser.error("--parts takes compute,bulk,deploys; --runs, --deploys, --sequential, --bulk-mib >= 1")

    from stockade.evidence.sim.chip import ensure_chip

    state = Path(tempfile.mkdtemp(prefix="stockade-bench-state-"))
    result: dict[str, Any] = {"runs": args.runs}
    try:
        ensure_chip(state)
        if "compute" in parts:
            result["compute"] = part_compute(args.runs, args.sha_mib, args.primes, state)
        if "bulk" in parts:
            result["bulk"] = part_bulk(args.runs, args.bulk_mib, state, state)
        if "deploys" in parts:
            result["deploys"] = part_deploys(args.deploys, args.sequential, state)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    report(result)
    return 0


def report(result: dict[str, Any]) -> None:
    if "compute" in result:
        c = result["compute"]
        print(
            f"compute: the Keep's run step vs bare wasmtime-py, median of {result['runs']}; target <= 1.03x"
        )
        for name in ("sha256", "primes"):
            w = c[name]
            print(f"  compute {' '.join(w['args'])} -> {w['output']}")
            for variant, ms in w["run_cpu_ms_median"].items():
                print(
                    f"    {variant:26s} CPU {ms:9.1f} ms {w['ratio_over_bare_cpu'][variant]:6.3f}x"
                    f"   wall {w['run_wall_ms_median'][variant]:9.1f} ms {w['ratio_over_bare_wall'][variant]:6.3f}x"
                )
            print(f"    share of each setting (CPU): {w['share_of_each_setting_cpu']}")
            same = w["ratio_keep_over_same_settings"]
            print(f"    keep / bare with the same settings: CPU {same['cpu']:.3f}x, wall {same['wall']:.3f}x")
    if "bulk" in result:
        b = result["bulk"]
        print(
            f"bulk: {b['measured_bytes'] // MIB} MiB in and back out (median of {result['runs']}; target >= 0.8x)"
        )
        for k, ms in b["transfer_ms_median"].items():
            ratio = b["ratio_throughput_over_tls"].get(k)
            tail = f"  {ratio:.3f}x of TLS" if ratio is not None else ""
            print(f"  {k:14s} {ms:9.1f} ms  {b['mib_per_s'][k]:8.1f} MiB/s{tail}")
        print(f"  Keep waiting for the release (stdin in): {b['keep_wait_release_ms_median']} ms")
        print(f"  Keep run step (copy, stdout out): {b['keep_run_ms_median']} ms")
        print(
            f"  CPU s: TLS baseline (both ends) {b['cpu_s_median']['tls_baseline']}; "
            f"relay hops {b['cpu_s_median']['relay']}"
        )
    if "deploys" in result:
        d = result["deploys"]
        print(f"deploys: {d['deploys']} at once through a manager (fork server)")
        print(
            f"  latency p50 {d['latency_ms']['p50']} ms, p99 {d['latency_ms']['p99']} ms; wall {d['wall_s']} s"
        )
        print(
            f"  one at a time p50 {d['one_at_a_time_ms']['p50']} ms; ratio {d['ratio_p50_over_one_at_a_time']}"
        )
        print(
            f"  host CPU {d['host_cpu_s']} s, {d['host_cpu_s_per_deploy']} s per deploy "
            f"(manager {d['manager_cpu_s_per_deploy']} s, Keeps and sim PSPs "
            f"{d['keeps_and_psps_cpu_s_per_deploy']} s); client {d['client_cpu_s_per_deploy']} s"
        )


if __name__ == "__main__":
    sys.exit(main())
