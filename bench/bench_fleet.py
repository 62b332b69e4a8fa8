"""A simulated fleet on a real etcd: placement read latency and etcd load as
the number of registered hosts grows (issue 16 item 5).

No real managers: for each fleet size N the bench grants N leases and writes
N host records (stockade.fleet.record.HostRecord, as ``host serve --fleet``
writes them), then refreshes every host at the real rate for ``--seconds``:
every ``ttl / 3`` seconds one lease keep-alive and one read of its drain
mark, and a put of its record every ``--record-every`` seconds (what
stockade.host.fleet.Registrar does for a host whose load does not change;
``--record-every 0`` puts at every refresh). A
prefix watcher on ``hosts/`` counts the watch events a watching client
would receive. Meanwhile a reader repeats the placement read: ``read_fleet``
(two range reads: drain marks and host records, every record parsed
strictly) and a filter (platform sim, not drained, capacity left, least
loaded). stockade.client's placement, where present, filters the same
records; this filter stands in for it so that the bench runs on any branch.

Reported per N: keys, the refresh rate asked and achieved (and the p95 lag
of a refresh behind its schedule: when it grows, the simulator, i.e. one
Python process on this machine, could not keep up, not etcd), etcd's
requests per second (from its own /metrics: ranges, puts, lease renewals),
watch events per second, etcd CPU (fraction of one core), etcd's database
size and the bytes put per second (history kept until compaction), and the placement read p50/p95 with its ratio to a one-key read in
the same run (the baseline).

    .venv/bin/python bench/bench_fleet.py [--sizes 10,100,300,1000] [--seconds 20] [--record-every 15] [--json]

Report only; needs ``etcd`` (Debian etcd-server). bench/README.md has the
curve and what it means.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import heapq
import http.client
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from etcd_support import EtcdServer  # noqa: E402 - the tests' etcd launcher
from stockade import procfs  # noqa: E402
from stockade.fleet.etcd import Etcd, FleetConfig, parse_endpoints  # noqa: E402
from stockade.fleet.record import HostRecord, Offer, read_fleet  # noqa: E402

TTL = 10  # stockade.host.fleet.DEFAULT_TTL_S
MEASUREMENT = "ab" * 48
_METRICS = (
    "etcd_mvcc_range_total",
    "etcd_mvcc_put_total",
    "etcd_debugging_lease_renewed_total",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_debugging_mvcc_total_put_size_in_bytes",
)


def record(i: int) -> HostRecord:
    offers = (Offer("sim", "sim", MEASUREMENT), Offer("sim-tdx", "sim-tdx", MEASUREMENT))
    if i % 5 == 0:
        offers = (Offer("snp", "snp", ""),)
    now = time.time()
    return HostRecord(
        id=f"sim-host-{i:05d}",
        api_url=f"https://10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:8470",
        version="0.1.0",
        offers=offers,
        api_tls_sha256="cd" * 32,
        labels={"zone": f"z{i % 3}", "rack": f"r{i % 40}"},
        max_keeps=16,
        free_memory_mib=8192,
        keeps_running=i % 7,
        started=now,
        refreshed=now,
    )


def place(etcd: Etcd, platform: str = "sim") -> str | None:
    """The placement read: every entry, the filter, the least loaded."""
    best = None
    for entry in read_fleet(etcd):
        rec = entry.record
        if rec is None or entry.drained or platform not in rec.platforms:
            continue
        if rec.max_keeps is not None and rec.keeps_running >= rec.max_keeps:
            continue
        if best is None or rec.keeps_running < best.keeps_running:
            best = rec
    return None if best is None else best.id


def etcd_metrics(server: EtcdServer) -> dict[str, float]:
    with urllib.request.urlopen(f"{server.http}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for name in _METRICS:
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        out[name] = float(found.group(1)) if found else 0.0
    return out


class Gateway:
    """A minimal etcd v3 JSON-gateway client for the simulated hosts: one
    keep-alive HTTP connection, pre-encoded keys. Much cheaper per request
    than etcd3gw over requests, so that one process can stand in for
    hundreds of hosts; the placement reader uses the real client
    (stockade.fleet.etcd). Same endpoints and bodies as etcd3gw sends
    (https://etcd.io/docs/v3.4/dev-guide/api_grpc_gateway/)."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=10)

    def call(self, path: str, body: dict[str, object]) -> dict[str, object]:
        self.conn.request("POST", f"/v3/{path}", json.dumps(body), {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status} {data[:200]!r}")
        doc = json.loads(data)
        assert isinstance(doc, dict)
        return doc


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Refresher:
    """Registers and then refreshes hosts ``first .. first + n - 1`` at the
    real rate (every TTL / 3: keep-alive, drain read, record put) from W
    threads; a host registers (lease grant + put) at its first turn."""

    def __init__(self, url: str, prefix: str, first: int, n: int, workers: int, record_every: float) -> None:
        endpoint = parse_endpoints(url)[0]
        self.address = (endpoint.host, endpoint.port)
        self.records = [record(i) for i in range(first, first + n)]
        self.host_keys = [b64(f"{prefix}hosts/{r.id}".encode()) for r in self.records]
        self.drain_keys = [b64(f"{prefix}drain/{r.id}".encode()) for r in self.records]
        self.leases = [0] * n
        self.written = [0.0] * n
        self.record_every = record_every
        self.workers = workers
        self.stop = threading.Event()
        self.registered = 0
        self.done = 0
        self.lags: list[float] = []
        self.errors = 0
        self._lock = threading.Lock()

    def _parts(self) -> list[list[int]]:
        return [
            p for p in (list(range(w, len(self.records), self.workers)) for w in range(self.workers)) if p
        ]

    def run(self) -> list[threading.Thread]:
        interval = TTL / 3
        t0 = time.monotonic()

        def loop(part: list[int]) -> None:
            gw = Gateway(*self.address)
            # Spread the turns over one interval, as hosts started at random times.
            due = [(t0 + interval * (k / len(part)), i) for k, i in enumerate(part)]
            heapq.heapify(due)
            while not self.stop.is_set():
                when, i = due[0]
                wait = when - time.monotonic()
                if wait > 0:
                    self.stop.wait(min(wait, 0.2))
                    continue
                heapq.heapreplace(due, (when + interval, i))
                try:
                    first = not self.leases[i]
                    if first:
                        self.leases[i] = int(str(gw.call("lease/grant", {"TTL": TTL})["ID"]))
                    else:
                        gw.call("lease/keepalive", {"ID": self.leases[i]})
                        gw.call("kv/range", {"key": self.drain_keys[i]})
                    if first or time.monotonic() - self.written[i] >= self.record_every:
                        value = b64(replace(self.records[i], refreshed=time.time()).to_json())
                        gw.call("kv/put", {"key": self.host_keys[i], "value": value, "lease": self.leases[i]})
                        self.written[i] = time.monotonic()
                except (OSError, RuntimeError, ValueError, KeyError, http.client.HTTPException):
                    gw = Gateway(*self.address)
                    with self._lock:
                        self.errors += 1
                    continue
                with self._lock:
                    if first:
                        self.registered += 1
                    else:
                        self.done += 1
                        self.lags.append(time.monotonic() - when)

        threads = [threading.Thread(target=loop, args=(p,), daemon=True) for p in self._parts()]
        for t in threads:
            t.start()
        return threads

    def revoke(self) -> None:
        def rev(part: list[int]) -> None:
            gw = Gateway(*self.address)
            for i in part:
                if self.leases[i]:
                    with contextlib.suppress(OSError, RuntimeError, http.client.HTTPException):
                        gw.call("lease/revoke", {"ID": self.leases[i]})

        threads = [threading.Thread(target=rev, args=(p,)) for p in self._parts()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def refresher_main(url: str, prefix: str, first: int, n: int, workers: int, record_every: float) -> int:
    """The refresher as its own process (so that its threads do not share
    the reader's interpreter lock): registers, prints "ready", refreshes
    until stdin says "stop" (lags reset at "mark"), prints its figures as
    JSON and revokes every lease."""
    sim = Refresher(url, prefix, first, n, workers, record_every)
    start = time.monotonic()
    threads = sim.run()
    while sim.registered < n and time.monotonic() - start < 120:
        time.sleep(0.05)
    register_s = time.monotonic() - start
    print("ready", flush=True)
    marked = 0
    for line in sys.stdin:
        if line.strip() == "mark":
            with sim._lock:
                sim.lags.clear()
                marked = sim.done
            print("marked", flush=True)
        elif line.strip() == "stop":
            break
    sim.stop.set()
    for t in threads:
        t.join(5)
    doc = {"register_s": register_s, "done": sim.done - marked, "lags": sim.lags, "errors": sim.errors}
    print(json.dumps(doc), flush=True)
    sim.revoke()
    return 0


def count_watch_events(config: FleetConfig, stop: threading.Event) -> tuple[threading.Thread, list[int]]:
    etcd = Etcd(config)
    client = etcd._client(0)
    events, cancel = client.watch_prefix(etcd.key("hosts", ""))
    counter = [0]

    def pump() -> None:
        for _ in events:
            counter[0] += 1
            if stop.is_set():
                break

    def stopper() -> None:
        stop.wait()
        cancel()

    threading.Thread(target=stopper, daemon=True).start()
    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread, counter


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def measure(
    server: EtcdServer, n: int, seconds: float, workers: int, procs: int, record_every: float, prefix: str
) -> dict[str, object]:
    config = FleetConfig(parse_endpoints(server.url), prefix=prefix)
    etcd = Etcd(config)
    sims = []
    for p in range(procs):
        first, count = n * p // procs, n * (p + 1) // procs - n * p // procs
        if count:
            args = [server.url, prefix, str(first), str(count), str(workers), str(record_every)]
            sims.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--refresher", *args],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )

    def tell(word: str) -> list[str]:
        for sim in sims:
            assert sim.stdin is not None
            sim.stdin.write(word + "\n")
            sim.stdin.flush()
        return [sim.stdout.readline().strip() for sim in sims if sim.stdout is not None]

    assert [sim.stdout.readline().strip() for sim in sims if sim.stdout is not None] == ["ready"] * len(sims)
    stop = threading.Event()
    _, watched = count_watch_events(config, stop)
    time.sleep(min(2.0, TTL / 3))  # settle into the refresh rhythm
    assert tell("mark") == ["marked"] * len(sims)
    pid = server.proc.pid if server.proc is not None else 0
    before, cpu0, w0, t0 = etcd_metrics(server), procfs.cpu_seconds(pid), watched[0], time.monotonic()
    ranges: list[float] = []
    reads: list[float] = []
    read_cpu: list[float] = []
    single: list[float] = []
    one_key = etcd.key("hosts", "sim-host-00001")
    chosen = None
    while time.monotonic() - t0 < seconds:
        start = time.perf_counter()
        etcd.get(one_key)
        single.append(time.perf_counter() - start)
        start = time.perf_counter()
        etcd.get_prefix(etcd.key("hosts", ""))
        ranges.append(time.perf_counter() - start)
        start, cpu = time.perf_counter(), time.thread_time()
        chosen = place(etcd)
        reads.append(time.perf_counter() - start)
        read_cpu.append(time.thread_time() - cpu)
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    after, cpu1 = etcd_metrics(server), procfs.cpu_seconds(pid)
    events = watched[0] - w0
    stop.set()
    keys = len(etcd.get_prefix(etcd.key("")))
    stats = [json.loads(line) for line in tell("stop")]
    for sim in sims:
        sim.wait(120)
    done = sum(st["done"] for st in stats)
    lags = [lag for st in stats for lag in st["lags"]]
    register_s = max(st["register_s"] for st in stats)

    def rate(name: str) -> float:
        return (after[name] - before[name]) / elapsed

    read_p50 = statistics.median(reads) * 1e3
    single_p50 = statistics.median(single) * 1e3
    return {
        "hosts": n,
        "keys": keys,
        "register_s": round(register_s, 2),
        "refresh_per_s_target": round(n / (TTL / 3), 1),
        "refresh_per_s": round(done / elapsed, 1),
        "refresh_lag_p95_s": round(pct(lags, 0.95), 3),
        "refresh_errors": sum(st["errors"] for st in stats),
        "refresher_processes": len(sims),
        "etcd_ranges_per_s": round(rate("etcd_mvcc_range_total"), 1),
        "etcd_puts_per_s": round(rate("etcd_mvcc_put_total"), 1),
        "etcd_lease_renewals_per_s": round(rate("etcd_debugging_lease_renewed_total"), 1),
        "watch_events_per_s": round(events / elapsed, 1),
        "etcd_cpu_cores": round((cpu1 - cpu0) / elapsed, 3),
        "etcd_db_bytes": int(after["etcd_mvcc_db_total_size_in_bytes"]),
        # Bytes written per second: the history etcd keeps until compaction.
        "put_kib_per_s": round(rate("etcd_debugging_mvcc_total_put_size_in_bytes") / 1024, 1),
        "placement_reads": len(reads),
        "placement_read_ms_p50": round(read_p50, 2),
        "placement_read_ms_p95": round(pct(reads, 0.95) * 1e3, 2),
        "placement_read_cpu_ms_p50": round(statistics.median(read_cpu) * 1e3, 2),
        "range_read_ms_p50": round(statistics.median(ranges) * 1e3, 2),
        "single_get_ms_p50": round(single_p50, 2),
        "ratio_read_over_single_get": round(read_p50 / single_p50, 1),
        "chosen": chosen,
    }


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--refresher":
        url, prefix, first, n, workers, every = sys.argv[2:8]
        return refresher_main(url, prefix, int(first), int(n), int(workers), float(every))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,300,1000", help="fleet sizes (hosts), comma separated")
    parser.add_argument("--seconds", type=float, default=20, help="measuring time per size")
    parser.add_argument("--workers", type=int, default=8, help="threads per refresher process")
    parser.add_argument(
        "--procs", type=int, default=0, help="refresher processes (default: 1 per 150 hosts, at most 8)"
    )
    parser.add_argument(
        "--record-every",
        type=float,
        default=15.0,  # stockade.host.fleet.RECORD_EVERY_S
        help="seconds between writes of an unchanged record (0: every refresh, the naive design)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        server = EtcdServer(Path(tmp) / "data", Path(tmp) / "etcd.log")
        server.start()
        try:
            for k, n in enumerate(sizes):
                procs = args.procs or min(8, 1 + n // 150)
                row = measure(server, n, args.seconds, args.workers, procs, args.record_every, f"/bench/{k}/")
                rows.append(row)
                if not args.json:
                    print(f"  {n} hosts measured", file=sys.stderr)
        finally:
            server.stop()
    doc = {
        "ttl_s": TTL,
        "record_every_s": args.record_every,
        "seconds": args.seconds,
        "workers": args.workers,
        "sizes": rows,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    cols = (
        "hosts",
        "keys",
        "refresh_per_s_target",
        "refresh_per_s",
        "refresh_lag_p95_s",
        "etcd_ranges_per_s",
        "etcd_puts_per_s",
        "watch_events_per_s",
        "etcd_cpu_cores",
        "etcd_db_bytes",
        "put_kib_per_s",
        "placement_read_ms_p50",
        "placement_read_ms_p95",
        "placement_read_cpu_ms_p50",
        "range_read_ms_p50",
        "ratio_read_over_single_get",
    )
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
