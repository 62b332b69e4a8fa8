"""Keep manager at scale: memory per idle Keep, create latency, manager CPU.

Runs a live ``stockade host serve`` twice in one run, once with the Keep
fork server (the default) and once with ``--no-fork-server`` (a fresh
Python process per Keep and per sim PSP: the baseline), and for each:

1. creates N sim Keeps through the API from N client threads at once; each
   thread then opens the relay and completes the attested TLS handshake
   (hello, sim evidence, certificate, TLS 1.3), so the Keep is attested and
   idle, waiting for its workload, with its engine built;
2. reports, per Keep: create latency (POST /v1/keeps until the API answers
   "running") and create-to-attested latency (until the TLS handshake with
   the Keep completes: the Keep runtime is up and serving), p50 and p99;
3. reads RSS, PSS and USS (Private_Clean + Private_Dirty) of every idle
   Keep process and of its sim PSP process from /proc/PID/smaps_rollup;
4. reads the manager's CPU seconds (utime + stime, /proc/PID/stat) spent
   during the creates and handshakes, and that of the fork servers.

Ratios fork server / fresh processes are reported for each figure. RSS
counts shared pages in full in every process (copy-on-write pages of the
fork server too); PSS divides them among the processes that share them;
USS is what the Keep alone costs. Target: RSS <= 40 MiB per idle Keep.
Not a pass/fail gate.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stockade.procfs import cpu_seconds, memory_mib, read_stat

ROOT = Path(__file__).resolve().parent.parent
TARGET_RSS_MIB = 40.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(root: int) -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, cmdline) of every live descendant of ``root``."""
    procs: dict[int, tuple[int, bytes]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := read_stat(int(entry.name))) and fields[0] != "Z":
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            procs[int(entry.name)] = (int(fields[1]), cmd)
    found: dict[int, tuple[int, bytes]] = {}
    frontier = {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier and pid not in found}
        found.update({pid: procs[pid] for pid in frontier})
    return found


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Manager:
    def __init__(self, base: Path, chip_state: Path, quota: int, fork_server: bool) -> None:
        self.state = base / "state"
        self.state.mkdir(mode=0o700)
        shutil.copytree(chip_state / "sim", self.state / "sim")
        stockade = [sys.executable, "-m", "stockade"]
        init = subprocess.run(
            [*stockade, "host", "init", "--state-dir", str(self.state), "--quota", str(quota)],
            capture_output=True,
            check=True,
        )
        self.token = init.stdout.decode().strip()
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = base / "server.log"
        # No warm pool (ADR 0031): these benches measure the fork on create
        # and count the processes under the manager as the Keeps they made;
        # bench_e2e.py measures the pool.
        args = ["host", "serve", "--listen", f"127.0.0.1:{port}", "--state-dir", str(self.state)]
        args += ["--keep-pool", "0"]
        if not fork_server:
            args.append("--no-fork-server")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([*stockade, *args], stdout=out, stderr=subprocess.STDOUT)
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the manager did not come up:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def attest_one(url: str, token: str) -> tuple[dict[str, Any], float, float, ssl.SSLSocket, Any]:
    """Create a Keep and complete the TLS handshake with it; the Keep stays
    idle (waiting for a workload) while the returned socket is open."""
    from stockade.client.deploy import send_hello
    from stockade.client.remote import ManagerClient

    client = ManagerClient(url, token, timeout=300)
    t0 = time.perf_counter()
    keep = client.create("sim")
    t1 = time.perf_counter()
    sock = client.connect(keep["id"])
    send_hello(sock)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the bench does not appraise: tests do
    sock.settimeout(300)
    tls = ctx.wrap_socket(sock, server_hostname=None)
    t2 = time.perf_counter()
    return keep, (t1 - t0) * 1000, (t2 - t0) * 1000, tls, client


def idle_before_hello(mgr: Manager, count: int) -> dict[str, float]:
    """Mean memory of ``count`` Keeps created but never connected (the
    runtime up, its engine built, no hello yet); they are killed after."""
    from stockade.client.remote import ManagerClient

    with ManagerClient(mgr.url, mgr.token, timeout=300) as client:
        made = [client.create("sim") for _ in range(count)]
        pids = [int(k["pid"]) for k in made]
        # Wait until the Keeps settle (imports done, engine built): RSS
        # unchanged for a second, at most 30 s.
        last: list[float] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = [m["rss"] if (m := memory_mib(p)) else 0.0 for p in pids]
            if now == last:
                break
            last = now
        rows = [m for p in pids if (m := memory_mib(p))]
        for k in made:
            client.kill(k["id"])
    return {
        key: round(statistics.fmean(r[key] for r in rows), 1) if rows else 0.0
        for key in ("rss", "pss", "uss")
    }


def run_mode(chip_state: Path, keeps: int, sequential: int, fork_server: bool) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="stockade-bench-manager-"))
    mgr = Manager(base, chip_state, keeps + 8, fork_server)
    sessions: list[tuple[dict[str, Any], float, float, ssl.SSLSocket, Any]] = []
    try:
        time.sleep(0.5)  # let the fork servers finish their imports
        before_hello = idle_before_hello(mgr, min(keeps, 10))
        zygotes = [p for p, (_, cmd) in descendants(mgr.proc.pid).items() if b"stockade.keep.zygote" in cmd]
        cpu0 = cpu_seconds(mgr.proc.pid)
        zcpu0 = sum(cpu_seconds(z) for z in zygotes)
        wall0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=keeps) as pool:
            futures = [pool.submit(attest_one, mgr.url, mgr.token) for _ in range(keeps)]
            sessions = [f.result() for f in futures]
        wall = time.perf_counter() - wall0
        cpu = cpu_seconds(mgr.proc.pid) - cpu0
        zcpu = sum(cpu_seconds(z) for z in zygotes) - zcpu0
        time.sleep(1.0)  # idle: engines built, waiting for workloads

        keep_pids = {int(s[0]["pid"]) for s in sessions}
        tree = descendants(mgr.proc.pid)
        zygote_pids = {
            p for p, (_, cmd) in tree.items() if b"stockade.keep.zygote" in cmd and p not in keep_pids
        }
        zygote_pids = {p for p in zygote_pids if tree[p][0] == mgr.proc.pid}
        psp_pids = set(tree) - keep_pids - zygote_pids
        keep_mem = [m for p in keep_pids if (m := memory_mib(p))]
        psp_mem = [m for p in psp_pids if (m := memory_mib(p))]
        zyg_mem = [m for p in zygote_pids if (m := memory_mib(p))]
        create_ms = [s[1] for s in sessions]
        ready_ms = [s[2] for s in sessions]

        def mean(rows: list[dict[str, float]], key: str) -> float:
            return round(statistics.fmean(r[key] for r in rows), 1) if rows else 0.0

        result = {
            "keeps": keeps,
            "keep_processes_measured": len(keep_mem),
            "psp_processes_measured": len(psp_mem),
            "keep_mib": {k: mean(keep_mem, k) for k in ("rss", "pss", "uss")},
            "keep_mib_before_hello": before_hello,
            "psp_mib": {k: mean(psp_mem, k) for k in ("rss", "pss", "uss")},
            "per_keep_total_mib": {
                k: round(mean(keep_mem, k) + mean(psp_mem, k), 1) for k in ("rss", "pss", "uss")
            },
            "fork_servers_mib": {k: round(sum(m[k] for m in zyg_mem), 1) for k in ("rss", "pss", "uss")},
            "create_ms": {"p50": round(pct(create_ms, 0.5), 1), "p99": round(pct(create_ms, 0.99), 1)},
            "create_to_attested_ms": {
                "p50": round(pct(ready_ms, 0.5), 1),
                "p99": round(pct(ready_ms, 0.99), 1),
            },
            "wall_s": round(wall, 2),
            "manager_cpu_s": round(cpu, 2),
            "fork_servers_cpu_s": round(zcpu, 2),
        }
        for _, _, _, tls, client in sessions:
            tls.close()
            client.close()
        sessions = []
        deadline = time.monotonic() + 60
        while any(memory_mib(p) for p in keep_pids | psp_pids) and time.monotonic() < deadline:
            time.sleep(0.1)  # the burst's Keeps end with their streams
        time.sleep(0.5)
        # One at a time on a quiet manager: latency without contention.
        one_ms = []
        for _ in range(sequential):
            session = attest_one(mgr.url, mgr.token)
            one_ms.append(session[2])
            session[3].close()
            session[4].close()
        if one_ms:
            result["sequential_create_to_attested_ms"] = {
                "p50": round(pct(one_ms, 0.5), 1),
                "p99": round(pct(one_ms, 0.99), 1),
            }
    finally:
        for _, _, _, tls, client in sessions:
            tls.close()
            client.close()
        mgr.stop()
        shutil.rmtree(base, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keeps", type=int, default=100, help="Keeps created at once in each mode")
    parser.add_argument("--sequential", type=int, default=10, help="Keeps then created one at a time")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.keeps < 1 or args.sequential < 0:
        parser.error("--keeps must be at least 1 and --sequential at least 0")

    from stockade.evidence.sim.chip import ensure_chip

    chip_state = Path(tempfile.mkdtemp(prefix="stockade-bench-chip-"))
    try:
        ensure_chip(chip_state)
        fork = run_mode(chip_state, args.keeps, args.sequential, fork_server=True)
        spawn = run_mode(chip_state, args.keeps, args.sequential, fork_server=False)
    finally:
        shutil.rmtree(chip_state, ignore_errors=True)

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 2) if b else None

    result = {
        "keeps": args.keeps,
        "target_rss_mib_per_idle_keep": TARGET_RSS_MIB,
        "fork_server": fork,
        "fresh_processes": spawn,
        "ratio_fork_over_fresh": {
            "keep_rss": ratio(fork["keep_mib"]["rss"], spawn["keep_mib"]["rss"]),
            "keep_pss": ratio(fork["keep_mib"]["pss"], spawn["keep_mib"]["pss"]),
            "keep_uss": ratio(fork["keep_mib"]["uss"], spawn["keep_mib"]["uss"]),
            "per_keep_total_pss": ratio(
                fork["per_keep_total_mib"]["pss"], spawn["per_keep_total_mib"]["pss"]
            ),
            "create_to_attested_p50": ratio(
                fork["create_to_attested_ms"]["p50"], spawn["create_to_attested_ms"]["p50"]
            ),
            "create_to_attested_p99": ratio(
                fork["create_to_attested_ms"]["p99"], spawn["create_to_attested_ms"]["p99"]
            ),
            "sequential_create_to_attested_p50": ratio(
                fork.get("sequential_create_to_attested_ms", {}).get("p50", 0.0),
                spawn.get("sequential_create_to_attested_ms", {}).get("p50", 0.0),
            ),
            "manager_cpu": ratio(fork["manager_cpu_s"], spawn["manager_cpu_s"]),
            "wall": ratio(fork["wall_s"], spawn["wall_s"]),
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.keeps} sim Keeps created at once, attested and idle; fork server vs fresh processes")
    for label, doc in (("fork server", fork), ("fresh processes", spawn)):
        k, p, t = doc["keep_mib"], doc["psp_mib"], doc["per_keep_total_mib"]
        print(f"\n{label}:")
        b = doc["keep_mib_before_hello"]
        print(f"  Keep, no hello RSS {b['rss']:6.1f}  PSS {b['pss']:6.1f}  USS {b['uss']:6.1f} MiB")
        print(f"  Keep, attested RSS {k['rss']:6.1f}  PSS {k['pss']:6.1f}  USS {k['uss']:6.1f} MiB")
        print(f"  sim PSP        RSS {p['rss']:6.1f}  PSS {p['pss']:6.1f}  USS {p['uss']:6.1f} MiB")
        print(f"  Keep + PSP     RSS {t['rss']:6.1f}  PSS {t['pss']:6.1f}  USS {t['uss']:6.1f} MiB")
        if doc["fork_servers_mib"]["rss"]:
            z = doc["fork_servers_mib"]
            print(
                f"  fork servers   RSS {z['rss']:6.1f}  PSS {z['pss']:6.1f}  USS {z['uss']:6.1f} MiB (once per host)"
            )
        c, r = doc["create_ms"], doc["create_to_attested_ms"]
        print(f"  create         p50 {c['p50']:7.1f}  p99 {c['p99']:7.1f} ms")
        print(f"  create->attested p50 {r['p50']:7.1f}  p99 {r['p99']:7.1f} ms (wall {doc['wall_s']} s)")
        if "sequential_create_to_attested_ms" in doc:
            q = doc["sequential_create_to_attested_ms"]
            print(f"  one at a time  p50 {q['p50']:7.1f}  p99 {q['p99']:7.1f} ms create->attested")
        print(f"  manager CPU    {doc['manager_cpu_s']} s; fork servers {doc['fork_servers_cpu_s']} s")
    print(f"\ntarget <= {TARGET_RSS_MIB} MiB per idle Keep process (fork server):")
    for label, doc_ in (("before hello", fork["keep_mib_before_hello"]), ("attested", fork["keep_mib"])):
        verdicts = ", ".join(
            f"{key.upper()} {doc_[key]} {'met' if doc_[key] <= TARGET_RSS_MIB else 'NOT met'}"
            for key in ("rss", "pss", "uss")
        )
        print(f"  {label:13s} {verdicts}")
    print("ratios fork server / fresh processes:")
    for name, value in result["ratio_fork_over_fresh"].items():
        print(f"  {name:24s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
