"""End-to-end deploy time against bare wasmtime-py, measured in one run.

Alternates the commands so that machine noise hits all alike, and reports
the ratio of medians plus a per-step breakdown of the stockade run (from the
``--json`` timing of the client and the Keep). Not a pass/fail gate.

Lines (issue 18): the cold ``stockade run`` (a fresh Keep process,
``STOCKADE_WARM=0``), the warm ``stockade run`` (a Keep forked by the
per-user warm fork server, ADR 0022; started by an untimed first run, in a
private runtime directory, stopped at the end) and ``stockade deploy
--host`` to a running keep manager with its fork server (loopback), each
with the CLI in the command's own process (``STOCKADE_AGENT=0``); then the
warm run and the deploy again through the per-user client agent (ADR 0028:
the ``stockade`` launcher hands the command to a pre-imported agent that
forks the CLI; started by an untimed run, stopped at the end). Each ratio is
against bare wasmtime-py in a fresh process, same run. The CPU of an agent
line is the launcher's plus the agent's child's (from the agent's log).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"

BARE = r"""
import sys, wasmtime
engine = wasmtime.Engine()
module = wasmtime.Module.from_file(engine, sys.argv[1])
linker = wasmtime.Linker(engine)
linker.define_wasi()
store = wasmtime.Store(engine)
wasi = wasmtime.WasiConfig()
wasi.argv = ["hello.wasm", *sys.argv[2:]]
wasi.inherit_stdout()
store.set_wasi(wasi)
instance = linker.instantiate(store, module)
try:
    instance.exports(store)["_start"](store)
except wasmtime.ExitTrap as e:
    sys.exit(e.code)
finally:
    store.close()
"""

STEPS = [
    ("Keep start (process, imports) + wait for hello", "keep_wait_hello"),
    ("evidence (sim PSP report)", "keep_evidence"),
    ("certificate with evidence", "keep_certificate"),
    ("TLS 1.3 handshake (Keep side)", "keep_handshake"),
    ("verification (client)", "verify"),
    ("transfer of the package (load request)", "transfer"),
    ("package check + measurement (Keep)", "keep_load"),
    ("identity: second report + client check", "identity"),
    ("compile (Keep)", "keep_compile"),
    ("run (Keep)", "keep_run"),
]

#: The per-session steps of the warm lines through the client agent (issue
#: 18, session 24): the phases the client saw, then the Keep's own steps
#: (the Keep waits in the wait_* steps; sealing_key and compile_ahead are
#: done while the client verifies).
WARM_STEPS = [
    ("phase: booting (create / fork the Keep)", "phase_booting"),
    ("phase: attesting (hello -> TLS handshake done)", "phase_attesting"),
    ("phase: verifying (client)", "phase_verifying"),
    ("phase: loading (load -> identity checked)", "phase_loading"),
    ("phase: running (release -> exit status)", "phase_running"),
    ("Keep: evidence (sim PSP report)", "keep_evidence"),
    ("Keep: certificate with evidence", "keep_certificate"),
    ("Keep: TLS handshake", "keep_handshake"),
    ("Keep: sealing key (before the load)", "keep_sealing_key"),
    ("Keep: package check + measurement", "keep_load"),
    ("Keep: identity (second report)", "keep_identity"),
    ("Keep: cached module loaded before the release", "keep_compile_ahead"),
    ("Keep: compile step (incl. the load ahead)", "keep_compile"),
    ("Keep: run", "keep_run"),
]


#: CPU seconds (user + system) of the processes each line waited for, in ms:
#: for bare wasmtime-py, the whole run; for a cold run, the CLI and its
#: Keep (its child); for a warm run and deploy --host, the client process
#: alone (the Keep is the fork server's child, not ours).
CPU_MS: dict[str, list[float]] = {}


def timed(cmd: list[str], env: dict[str, str], line: str = "") -> tuple[float, bytes]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=env, check=True)
    ms = (time.perf_counter() - t) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if line:
        cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
        CPU_MS.setdefault(line, []).append(cpu)
    return ms, proc.stdout


class Manager:
    """A ``stockade host serve`` on loopback with its fork server (the
    default), the bench's sim chip, one token."""

    def __init__(self, base: Path, chip_state: Path, serve_args: tuple[str, ...] = ()) -> None:
        self.state = base / "state"
        self.state.mkdir(mode=0o700)
        shutil.copytree(Path(chip_state) / "sim", self.state / "sim")
        stockade = [sys.executable, "-m", "stockade"]
        init = subprocess.run(
            [*stockade, "host", "init", "--state-dir", str(self.state), "--quota", "4"],
            capture_output=True,
            check=True,
        )
        self.token_file = base / "token"
        self.token_file.write_bytes(init.stdout)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{port}"
        self.log = base / "server.log"
        serve = [
            "host",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(self.state),
            *serve_args,
        ]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([*stockade, *serve], stdout=out, stderr=subprocess.STDOUT)
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

    def deploy_cmd(self) -> list[str]:
        return [
            *(sys.executable, "-m", "stockade", "deploy", "--host", self.url),
            *(
                "--token-file",
                str(self.token_file),
                "--sim-root",
                str(self.state / "sim" / "chip" / "ark.der"),
            ),
            *("--allow-sim", "--json", str(HELLO), "--", "Alice"),
        ]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def stop_warm_server(runtime: Path) -> None:
    """SIGTERM the warm fork server and the client agent whose pids are in a lock file there."""
    for pattern in ("warm-*.lock", "agent-*.lock"):
        for lock in (runtime / "stockade").glob(pattern):
            with suppress(OSError, ValueError):
                os.kill(int(lock.read_text().strip()), signal.SIGTERM)


def agent_cpu_ms(runtime: Path) -> float:
    """CPU of the last command the client agent ran (its log line), in ms."""
    for log in (runtime / "stockade").glob("agent-*.log"):
        for line in reversed(log.read_text().splitlines()):
            if line.endswith(" ms CPU"):
                return float(line.rsplit(",", 1)[1].split()[0])
    raise SystemExit("the client agent logged no command")


def start_agent(runtime: Path, cmd: list[str], env: dict[str, str]) -> None:
    """Run ``cmd`` once (it starts the agent in the background), wait until
    the agent serves, and check that the next run goes through it."""
    timed(cmd, env)
    deadline = time.monotonic() + 120
    while not list((runtime / "stockade").glob("agent-*.sock")):
        if time.monotonic() > deadline:
            raise SystemExit("the client agent did not start")
        time.sleep(0.05)
    proc = subprocess.run([cmd[0], *cmd[1:3], "-v", *cmd[3:]], capture_output=True, env=env, check=True)
    assert b"of this user's client agent" in proc.stderr.splitlines()[0], proc.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-warm", action="store_true", help="Skip the warm run and deploy --host lines.")
    parser.add_argument(
        "--deploy-only",
        action="store_true",
        help="Only bare wasmtime-py and deploy --host through the client agent, to a manager with its "
        "warm Keep pool (the default) and to one without (--keep-pool 0).",
    )
    args = parser.parse_args()

    state = tempfile.mkdtemp(prefix="stockade-bench-")
    runtime = Path(tempfile.mkdtemp(prefix="stockade-bench-xdg-"))
    # The Keep's sealed compile cache (ADR 0023) in the bench's own state: after the
    # first run the Keep loads the module from it (cold and warm lines alike).
    env = {
        **os.environ,
        "STOCKADE_STATE_DIR": state,
        "STOCKADE_WARM": "0",
        "STOCKADE_AGENT": "0",
        "XDG_CACHE_HOME": os.path.join(state, "cache"),
        # The client agent's runtime directory (the lines with it on).
        "XDG_RUNTIME_DIR": str(runtime),
    }
    warm_env = {**env, "STOCKADE_WARM": "1", "STOCKADE_WARM_IDLE": "600"}
    agent_env = {**warm_env, "STOCKADE_AGENT": "1", "STOCKADE_AGENT_IDLE": "600"}
    deploy_agent_env = {**env, "STOCKADE_AGENT": "1", "STOCKADE_AGENT_IDLE": "600"}
    stockade = [sys.executable, "-m", "stockade", "run", "--allow-sim", "--json", str(HELLO), "--", "Alice"]
    bare = [sys.executable, "-c", BARE, str(HELLO), "Alice"]
    timed(stockade, env)  # creates the sim chip, warms the page cache
    timed(bare, env)

    bare_ms: list[float] = []
    launcher_ms: list[float] = []
    python_ms: list[float] = []
    e2e_ms: list[float] = []
    warm_ms: list[float] = []
    deploy_ms: list[float] = []
    agent_run_ms: list[float] = []
    agent_deploy_ms: list[float] = []
    nopool_deploy_ms: list[float] = []
    steps: dict[str, list[float]] = {}
    #: Per-session steps of the agent lines: line -> step -> values.
    agent_steps: dict[str, dict[str, list[float]]] = {"agent_run": {}, "agent_deploy_host": {}}
    with ExitStack() as stack:
        manager: Manager | None = None
        nopool: Manager | None = None
        if not args.no_warm:
            stack.callback(shutil.rmtree, runtime, True)
            stack.callback(stop_warm_server, runtime)
            _, out = timed(stockade, warm_env)  # starts the warm server
            assert json.loads(out)["keep_start"] == "warm"
            base = Path(tempfile.mkdtemp(prefix="stockade-bench-mgr-"))
            stack.callback(shutil.rmtree, base, True)
            manager = Manager(base, Path(state))
            stack.callback(manager.stop)
            timed(manager.deploy_cmd(), env)
            # The same manager without its warm pool of process Keeps (issue 18,
            # session 24): every create forks its Keep then.
            nopool_base = Path(tempfile.mkdtemp(prefix="stockade-bench-mgr-"))
            stack.callback(shutil.rmtree, nopool_base, True)
            nopool = Manager(nopool_base, Path(state), ("--keep-pool", "0"))
            stack.callback(nopool.stop)
            timed(nopool.deploy_cmd(), env)
            start_agent(runtime, stockade, agent_env)
        for _ in range(args.runs):
            # The launcher's own start-up (ADR 0028) against an empty interpreter.
            python_ms.append(timed([sys.executable, "-c", "pass"], env)[0])
            launcher_ms.append(timed([sys.executable, "-c", "import stockade.launcher"], env)[0])
            ms, out = timed(bare, env, "bare")
            assert b"Hello, Alice!" in out
            bare_ms.append(ms)
            if args.deploy_only and manager is not None and nopool is not None:
                ms, out = timed(manager.deploy_cmd(), deploy_agent_env, "agent_deploy_host")
                assert json.loads(out)["stdout"].startswith("Hello, Alice!")
                CPU_MS["agent_deploy_host"][-1] += agent_cpu_ms(runtime)
                agent_deploy_ms.append(ms)
                ms, out = timed(nopool.deploy_cmd(), deploy_agent_env, "agent_deploy_host_nopool")
                assert json.loads(out)["stdout"].startswith("Hello, Alice!")
                CPU_MS["agent_deploy_host_nopool"][-1] += agent_cpu_ms(runtime)
                nopool_deploy_ms.append(ms)
                continue
            ms, out = timed(stockade, env, "cold")
            doc = json.loads(out)
            assert doc["stdout"].startswith("Hello, Alice!")
            e2e_ms.append(ms)
            for name, value in doc["timing_ms"].items():
                steps.setdefault(name, []).append(value)
            if manager is not None:
                ms, out = timed(stockade, warm_env, "warm")
                doc = json.loads(out)
                assert doc["stdout"].startswith("Hello, Alice!") and doc["keep_start"] == "warm"
                warm_ms.append(ms)
                ms, out = timed(manager.deploy_cmd(), env, "deploy_host")
                assert json.loads(out)["stdout"].startswith("Hello, Alice!")
                deploy_ms.append(ms)
                ms, out = timed(stockade, agent_env, "agent_run")
                doc = json.loads(out)
                assert doc["stdout"].startswith("Hello, Alice!") and doc["keep_start"] == "warm"
                CPU_MS["agent_run"][-1] += agent_cpu_ms(runtime)
                agent_run_ms.append(ms)
                for name, value in doc["timing_ms"].items():
                    agent_steps["agent_run"].setdefault(name, []).append(float(value))
                ms, out = timed(manager.deploy_cmd(), deploy_agent_env, "agent_deploy_host")
                doc = json.loads(out)
                assert doc["stdout"].startswith("Hello, Alice!")
                for name, value in doc["timing_ms"].items():
                    agent_steps["agent_deploy_host"].setdefault(name, []).append(float(value))
                CPU_MS["agent_deploy_host"][-1] += agent_cpu_ms(runtime)
                agent_deploy_ms.append(ms)
                assert nopool is not None
                ms, out = timed(nopool.deploy_cmd(), deploy_agent_env, "agent_deploy_host_nopool")
                assert json.loads(out)["stdout"].startswith("Hello, Alice!")
                CPU_MS["agent_deploy_host_nopool"][-1] += agent_cpu_ms(runtime)
                nopool_deploy_ms.append(ms)

    e_known = bool(e2e_ms)  # not with --deploy-only
    b = statistics.median(bare_ms)
    e = statistics.median(e2e_ms) if e_known else float("nan")
    result = {
        "runs": args.runs,
        "bare_wasmtime_ms_median": round(b, 1),
        "stockade_e2e_ms_median": round(e, 1),
        "ratio": round(e / b, 2),
        "target_ratio": 1.5,
        "steps_ms_median": {k: round(statistics.median(v), 2) for k, v in sorted(steps.items())},
    }
    result["cpu_ms_median"] = {k: round(statistics.median(v), 1) for k, v in CPU_MS.items()}
    result["python_pass_ms_median"] = round(statistics.median(python_ms), 1)
    result["launcher_import_ms_median"] = round(statistics.median(launcher_ms), 1)
    warm_lines: list[tuple[str, float]] = []
    if warm_ms:
        w, d = statistics.median(warm_ms), statistics.median(deploy_ms)
        result.update(
            {
                "warm_run_ms_median": round(w, 1),
                "warm_run_ratio": round(w / b, 2),
                "deploy_host_warm_ms_median": round(d, 1),
                "deploy_host_warm_ratio": round(d / b, 2),
                "warm_target_ratio": 1.2,
            }
        )
        ar = statistics.median(agent_run_ms)
        result.update({"agent_warm_run_ms_median": round(ar, 1), "agent_warm_run_ratio": round(ar / b, 2)})
        result["agent_steps_ms_median"] = {
            line: {k: round(statistics.median(v), 2) for k, v in sorted(values.items())}
            for line, values in agent_steps.items()
        }
        warm_lines = [
            ("stockade run, warm fork server", w),
            ("stockade deploy --host, manager", d),
            ("run, warm server + client agent", ar),
        ]
    if agent_deploy_ms:
        ad, nd = statistics.median(agent_deploy_ms), statistics.median(nopool_deploy_ms)
        result.update(
            {
                "agent_deploy_host_ms_median": round(ad, 1),
                "agent_deploy_host_ratio": round(ad / b, 2),
                "agent_deploy_host_nopool_ms_median": round(nd, 1),
                "agent_deploy_host_nopool_ratio": round(nd / b, 2),
            }
        )
        warm_lines += [("deploy --host, client agent", ad), ("  the same, --keep-pool 0", nd)]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"bare wasmtime-py, fresh process : {b:8.1f} ms (median of {args.runs})")
    if e_known:
        print(f"stockade run --allow-sim (cold) : {e:8.1f} ms")
        print(
            f"ratio                           : {e / b:8.2f}x  (target <= 1.5x: {'met' if e / b <= 1.5 else 'NOT met'})"
        )
    for label, ms in warm_lines:
        print(f"{label:32s}: {ms:8.1f} ms")
        met = "met" if ms / b <= 1.2 else "NOT met"
        print(f"{'ratio':32s}: {ms / b:8.2f}x  (target <= 1.2x: {met})")
    cpu = result["cpu_ms_median"]
    assert isinstance(cpu, dict)
    print("CPU ms (user+sys) of the process(es) waited for, median:")
    print(
        f"  bare wasmtime-py {cpu['bare']:.0f}; cold run, client + Keep {cpu.get('cold', math.nan):.0f}",
        end="",
    )
    if "warm" in cpu:
        print(
            f"; warm run, client only {cpu['warm']:.0f}; deploy --host, client only {cpu['deploy_host']:.0f}"
        )
        print(
            f"  through the client agent (launcher + agent's child): warm run {cpu['agent_run']:.0f}; "
            f"deploy --host {cpu['agent_deploy_host']:.0f} (--keep-pool 0: {cpu['agent_deploy_host_nopool']:.0f})"
        )
    else:
        print()
    print(
        f"launcher start-up: python -c 'import stockade.launcher' {result['launcher_import_ms_median']:.1f} ms, "
        f"python -c pass {result['python_pass_ms_median']:.1f} ms"
    )
    print("per-step medians of the stockade run (cold):")
    for label, key in STEPS:
        if key in result["steps_ms_median"]:
            print(f"  {label:48s} {result['steps_ms_median'][key]:8.2f} ms")
    per_line = result.get("agent_steps_ms_median")
    if isinstance(per_line, dict):
        run, deploy = per_line["agent_run"], per_line["agent_deploy_host"]
        print("per-step medians through the client agent (ms):        warm run   deploy --host")
        for label, key in WARM_STEPS:
            cells = [f"{line[key]:8.2f}" if key in line else f"{'-':>8s}" for line in (run, deploy)]
            print(f"  {label:52s} {cells[0]}   {cells[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
