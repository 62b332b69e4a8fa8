"""``stockade deploy --fleet`` against three real keep managers and a real
etcd on loopback (issue 16's closing figures):

1. deploy latency through the fleet vs direct ``--host``, the same module
   (examples/hello) to the same idle hosts, alternating, in fresh client
   processes: median wall time of each and the ratio fleet / direct (the
   baseline is the direct deploy of the same run);
2. the spread of N deploys (default 60, 3 at a time) over 3 equally idle
   hosts (ties are broken at random);
3. the time from SIGKILL of a host to its exclusion (its record gone from
   etcd when its lease expired), with the lease TTL used.

Hosts are registered by the test registrar of tests/fleet_support.py (a
record under a lease, refreshed while the host's process lives, as
``host serve --fleet`` does). Report only; not a pass/fail gate.

Run: ``.venv/bin/python bench/bench_fleet_deploy.py [--runs 5] [--deploys 60] [--ttl 3] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
sys.path.insert(0, str(ROOT / "tests"))  # the etcd, manager and registrar helpers of the tests

from etcd_support import EtcdServer, etcd_missing  # noqa: E402
from fleet_support import Registrar, fleet_etcd, registered, running_hosts  # noqa: E402


def _deploy(base: list[str], env: dict[str, str], *where: str) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    proc = subprocess.run(
        [*base[:4], *where, *base[4:]], capture_output=True, env=env, check=False, timeout=300
    )
    elapsed = (time.perf_counter() - start) * 1000
    if proc.returncode != 0:
        raise SystemExit(f"deploy failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return elapsed, json.loads(proc.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="deploys of each kind for the latency")
    parser.add_argument("--deploys", type=int, default=60, help="deploys for the spread")
    parser.add_argument("--ttl", type=int, default=3, help="lease TTL of the hosts' records, seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    missing = etcd_missing()
    if missing:
        raise SystemExit(missing)
    from stockade.evidence.sim.chip import ensure_chip

    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        base = Path(tmp)
        state = base / "client"
        ensure_chip(state)
        server = EtcdServer(base / "etcd-data", base / "etcd.log")
        server.start()
        try:
            with running_hosts(state, base / "hosts") as (hosts, token_file):
                registrar = Registrar(fleet_etcd(server), ttl=args.ttl)
                try:
                    for host in hosts:
                        registrar.register(host, registrar.record(host))
                    env = {**os.environ, "STOCKADE_STATE_DIR": str(state)}
                    cmd = [
                        sys.executable,
                        "-m",
                        "stockade",
                        "deploy",
                        "--token-file",
                        str(token_file),
                        "--sim-root",
                        str(state / "sim" / "chip" / "ark.der"),
                        "--allow-sim",
                        "--json",
                        str(HELLO),
                    ]
                    fleet_ms: list[float] = []
                    direct_ms: list[float] = []
                    for i in range(args.runs):
                        fleet_ms.append(_deploy(cmd, env, "--fleet", server.url)[0])
                        direct_ms.append(_deploy(cmd, env, "--host", hosts[i % len(hosts)].url)[0])

                    def one(_: int) -> str:
                        return str(_deploy(cmd, env, "--fleet", server.url)[1]["placement"]["chosen"])

                    with ThreadPoolExecutor(3) as pool:
                        spread = Counter(pool.map(one, range(args.deploys)))

                    victim = hosts[0]
                    assert victim.proc is not None
                    victim.proc.send_signal(signal.SIGKILL)
                    killed = time.monotonic()
                    victim.proc.wait()
                    etcd = fleet_etcd(server)
                    while victim.host_id in registered(etcd):
                        time.sleep(0.05)
                    exclusion_s = time.monotonic() - killed
                finally:
                    registrar.close()
        finally:
            server.stop()
    fleet_med, direct_med = statistics.median(fleet_ms), statistics.median(direct_ms)
    result = {
        "runs": args.runs,
        "fleet_deploy_ms_median": round(fleet_med, 1),
        "direct_deploy_ms_median": round(direct_med, 1),
        "ratio": round(fleet_med / direct_med, 3),
        "fleet_deploy_ms": [round(v, 1) for v in fleet_ms],
        "direct_deploy_ms": [round(v, 1) for v in direct_ms],
        "spread": dict(sorted(spread.items())),
        "ttl_s": args.ttl,
        "sigkill_to_exclusion_s": round(exclusion_s, 2),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"deploy --fleet {fleet_med:.0f} ms vs --host {direct_med:.0f} ms (median of {args.runs}): "
            f"ratio {result['ratio']}x"
        )
        print(f"spread of {args.deploys} deploys over 3 hosts: {result['spread']}")
        print(f"SIGKILL to exclusion: {exclusion_s:.2f} s with a lease TTL of {args.ttl} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
