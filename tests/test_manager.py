"""The keep manager (``stockade host serve``) against a live server.

One server per module, on a free loopback port, with its own state
directory (the session's sim chip copied in) and two tokens: ``main``
(quota 16) and ``small`` (quota 1). Clients are the real CLI
(``stockade deploy --host``, ``stockade keeps``) and the library
(:class:`stockade.client.remote.ManagerClient`), plus raw httpx for the
malformed requests.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import httpx
import pytest

from manager_support import (
    HELLO,
    SLOW_ARGS,
    STOCKADE,
    WORDCOUNT,
    Server,
    _cli,
    deploy,
    keeps_cli,
    problem_of,
    running_server,
)
from stockade.wire.messages import PD_TYPE, loads_strict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(state_dir, tmp_path_factory) as srv:
        yield srv


# ------------------------------------------------------------------ happy path


def test_init_stores_only_a_hash(server: Server) -> None:
    path = server.state / "tokens.json"
    assert path.stat().st_mode & 0o777 == 0o600
    doc = json.loads(path.read_text())
    assert [t["quota"] for t in doc["tokens"]] == [16, 1]
    assert doc["tokens"][0]["sha256"] == hashlib.sha256(server.token.encode()).hexdigest()
    assert server.token not in path.read_text()


def test_health_needs_no_token(server: Server) -> None:
    resp = httpx.get(f"{server.url}/v1/health")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/cbor"
    assert loads_strict(resp.content) == {"status": "ok"}


def test_deploy_hello_through_the_manager(server: Server) -> None:
    proc = deploy(server, "--allow-sim", "--json", str(HELLO), "--", "alice")
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(proc.stdout)
    assert doc["stdout"] == "Hello, alice!\narguments: 1\n"
    assert doc["attestation"]["platform"] == "sim"
    keep_id = doc["keep_id"]
    # The Keep ended after its session: `keeps ls` shows it exited.
    deadline = time.monotonic() + 10
    while True:
        ls = _cli("keeps", "ls", "--json", "--host", server.url, "--token-file", str(server.token_file))
        assert ls.returncode == 0, ls.stderr
        (rec,) = [k for k in json.loads(ls.stdout)["keeps"] if k["id"] == keep_id]
        if rec["state"] != "running" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert rec["state"] == "exited" and rec["exit_status"] == 0
    assert len(bytes.fromhex(rec["measurement"])) == 48
    table = _cli("keeps", "ls", "--host", server.url, env={**os.environ, "STOCKADE_TOKEN": server.token})
    assert table.returncode == 0 and keep_id in table.stdout.decode()


def test_summary_names_the_client_side_sim_root(server: Server) -> None:
    proc = deploy(server, "--allow-sim", str(HELLO), "--", "bob")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b"Hello, bob!\narguments: 1\n"
    err = proc.stderr.decode()
    assert "NO HARDWARE PROTECTION" in err
    assert "sim root     " in err and "from --sim-root" in err


def test_without_allow_sim_the_sim_keep_is_refused(server: Server) -> None:
    proc = deploy(server, str(HELLO))
    assert proc.returncode == 112, proc.stderr.decode()
    assert b"Hello" not in proc.stdout


# ------------------------------------------------------------------ API errors


def test_missing_token_is_401(server: Server) -> None:
    for method, path in (("GET", "/v1/keeps"), ("POST", "/v1/keeps"), ("GET", "/v1/sim/root")):
        resp = httpx.request(method, server.url + path)
        assert resp.status_code == 401, path
        assert problem_of(resp)[PD_TYPE] == "unauthorized"
        assert resp.headers["www-authenticate"].startswith("Bearer")
    resp = httpx.get(f"{server.url}/v1/keeps", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert resp.status_code == 401


def test_invalid_token_is_403(server: Server) -> None:
    resp = httpx.get(f"{server.url}/v1/keeps", headers=server.headers("stk_" + secrets.token_urlsafe(32)))
    assert resp.status_code == 403
    assert problem_of(resp)[PD_TYPE] == "forbidden"
    proc = _cli("keeps", "ls", "--host", server.url, env={**os.environ, "STOCKADE_TOKEN": "stk_wrong"})
    assert proc.returncode == 1 and b"403" in proc.stderr


def test_wrong_content_type_is_415(server: Server) -> None:
    resp = httpx.post(
        f"{server.url}/v1/keeps",
        content=json.dumps({"backend": "sim"}),
        headers={**server.headers(), "Content-Type": "application/json"},
    )
    assert resp.status_code == 415
    assert problem_of(resp)[PD_TYPE] == "unsupported-media-type"


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\x00garbage",
        cbor2.dumps({"backend": "sim"}) + b"\x00",  # trailing bytes
        cbor2.dumps(["sim"]),  # not a map
        cbor2.dumps({"backend": "sim", "limits": {"timeout_ms": -1}}),
        cbor2.dumps({"backend": "sim", "extra": 1}),
    ],
)
def test_malformed_body_is_400(server: Server, body: bytes) -> None:
    resp = httpx.post(
        f"{server.url}/v1/keeps",
        content=body,
        headers={**server.headers(), "Content-Type": "application/cbor"},
    )
    assert resp.status_code == 400
    assert problem_of(resp)[PD_TYPE] == "bad-request"


def test_oversized_body_is_413(server: Server) -> None:
    big = cbor2.dumps({"backend": "sim", "pad": bytes((1 << 20) + 1)}, canonical=True)
    headers = {**server.headers(), "Content-Type": "application/cbor"}
    resp = httpx.post(f"{server.url}/v1/keeps", content=big, headers=headers)
    assert resp.status_code == 413
    assert problem_of(resp)[PD_TYPE] == "too-large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is on what is read
        for _ in range(20):
            yield bytes(1 << 16)

    resp = httpx.post(f"{server.url}/v1/keeps", content=chunks(), headers=headers)
    assert resp.status_code == 413


def test_unknown_id_is_404(server: Server) -> None:
    from stockade.client.remote import ManagerClient, ManagerError

    for method in ("GET", "DELETE"):
        resp = httpx.request(method, f"{server.url}/v1/keeps/0123456789abcdef", headers=server.headers())
        assert resp.status_code == 404
        assert problem_of(resp)[PD_TYPE] == "not-found"
    with ManagerClient(server.url, server.token) as client, pytest.raises(ManagerError) as info:
        client.connect("0123456789abcdef")
    assert info.value.status == 404


def test_quota_is_429_and_tokens_see_only_their_keeps(server: Server) -> None:
    from stockade.client.remote import ManagerClient, ManagerError

    with (
        ManagerClient(server.url, server.small_token) as small,
        ManagerClient(server.url, server.token) as main,
    ):
        first = small.create("sim", {"timeout_ms": 1000})
        try:
            assert first["state"] == "running"
            with pytest.raises(ManagerError) as info:
                small.create("sim")
            assert info.value.status == 429 and info.value.manager_type == "quota-exceeded"
            # Another token neither sees nor kills it.
            assert first["id"] not in {k["id"] for k in main.list()}
            with pytest.raises(ManagerError) as info:
                main.kill(first["id"])
            assert info.value.status == 404
        finally:
            killed = small.kill(first["id"])
        assert killed["state"] == "killed"
        second = small.create("sim")  # the quota counts live Keeps only
        assert small.kill(second["id"])["state"] == "killed"
        assert [k["id"] for k in small.list()] == [first["id"], second["id"]]


def test_one_connection_per_keep(server: Server) -> None:
    from stockade.client.remote import ManagerClient, ManagerError

    with ManagerClient(server.url, server.token) as client:
        keep = client.create("sim")
        sock = client.connect(keep["id"])
        try:
            with pytest.raises(ManagerError) as info:
                client.connect(keep["id"])
            assert info.value.status == 409
        finally:
            sock.close()
            client.kill(keep["id"])


# ------------------------------------------------------------------ Keep death


def test_keep_killed_mid_run_is_keep_died(server: Server, wasm) -> None:
    from stockade.client.remote import ManagerClient

    with ManagerClient(server.url, server.token) as client:
        before = {k["id"] for k in client.list()}
        root = ("--sim-root", str(server.state / "sim" / "chip" / "ark.der"))
        args = ("deploy", "--host", server.url, "--token-file", str(server.token_file), *root, *SLOW_ARGS)
        proc = subprocess.Popen(
            [*STOCKADE, *args, str(wasm("sleep"))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"sleeping\n"  # the workload runs
            (keep,) = [k for k in client.list() if k["id"] not in before]
            assert keep["state"] == "running"
            os.kill(keep["pid"], signal.SIGKILL)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 115, err.decode()
        assert b"Keep died" in err and keep["id"].encode() in err
        deadline = time.monotonic() + 10
        while (rec := client.get(keep["id"]))["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rec["state"] == "failed"
        assert rec["exit_status"] == -signal.SIGKILL
        assert "SIGKILL" in rec["detail"]


# ------------------------------------------------------------------ secrets


def test_secret_never_reaches_the_host(server: Server, tmp_path: Path) -> None:
    from stockade.client.attest import TrustConfig
    from stockade.client.deploy import DeployPlan, send_hello
    from stockade.client.deploy import deploy as run_session
    from stockade.client.remote import ManagerClient
    from stockade.measure.launch import keep_measurement
    from stockade.policy import development_policy
    from stockade.wire.messages import Config, Limits

    canary = ("canary-" + secrets.token_hex(16)).encode()
    secret_file = tmp_path / "canary.txt"
    secret_file.write_bytes(canary)
    expected = (
        f"/secrets/canary: lines=0 words=1 bytes={len(canary)} sha256={hashlib.sha256(canary).hexdigest()}"
    )

    # Through the CLI ...
    proc = deploy(
        server,
        "--allow-sim",
        "-q",
        "--secret",
        f"canary=@{secret_file}",
        str(WORDCOUNT),
        "--",
        "/secrets/canary",
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().splitlines()[0] == expected

    # ... and through the library, with a tap on every relayed byte.
    relayed: list[tuple[str, bytes]] = []
    with ManagerClient(server.url, server.token) as client:
        trust = TrustConfig(sim_root=client.sim_root(), policy=development_policy(keep_measurement()))
        keep = client.create("sim")
        sock = client.connect(keep["id"], tap=lambda way, data: relayed.append((way, data)))
        out: list[bytes] = []
        result = run_session(
            sock,
            DeployPlan.for_module(
                WORDCOUNT.read_bytes(),
                Config(
                    args=("/secrets/canary",),
                    limits=Limits(timeout_ms=10_000, memory_bytes=64 << 20, output_bytes=1 << 20),
                ),
                secrets=(("canary", canary),),
            ),
            trust,
            lambda fd, data: out.append(data),
            hello=send_hello(sock),
        )
    assert result.exit_code == 0
    assert b"".join(out).decode().splitlines()[0] == expected
    up = b"".join(d for w, d in relayed if w == "up")
    down = b"".join(d for w, d in relayed if w == "down")
    assert len(up) > len(WORDCOUNT.read_bytes()) and down  # the workload went through the relay ...
    assert canary not in up and canary not in down  # ... encrypted
    assert hashlib.sha256(canary).hexdigest().encode() not in down  # the output too

    # Nothing under the host's state directory, nor the manager's output, holds it.
    time.sleep(0.3)  # let the manager record the Keep's end
    files = [p for p in server.state.rglob("*") if p.is_file()]
    assert any(p.name.startswith("keep-") for p in files)  # the Keep logs are there
    for path in [*files, server.log]:
        assert canary not in path.read_bytes(), f"the canary is in {path}"


# ------------------------------------------------------------------ logs


FINAL = ("exited", "failed", "killed", "lost")


def log_file(server: Server, keep_id: str) -> Path:
    return server.state / "logs" / f"keep-{keep_id}.log"


def ended_keep(server: Server) -> str:
    """A Keep whose client connected and left during the hello: it logs
    that its session ended, and exits."""
    from stockade.client.remote import ManagerClient

    with ManagerClient(server.url, server.token) as client:
        keep = client.create("sim")
        client.connect(keep["id"]).close()
        done = client.wait(keep["id"], 30)
    assert not done["timed_out"] and done["state"] in FINAL, done
    return str(keep["id"])


def test_logs_are_the_keeps_own_log(server: Server) -> None:
    keep_id = ended_keep(server)
    resp = httpx.get(f"{server.url}/v1/keeps/{keep_id}/logs", headers=server.headers())
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"
    on_disk = log_file(server, keep_id).read_bytes()
    assert resp.content == on_disk and b"keep[" in on_disk and b"session ended" in on_disk
    assert resp.headers["stockade-log-offset"] == "0"
    assert resp.headers["stockade-log-size"] == str(len(on_disk))
    proc = keeps_cli(server, "logs", keep_id)
    assert proc.returncode == 0 and proc.stdout == on_disk, proc.stderr


def test_logs_tail_offset_and_size_cap(server: Server) -> None:
    from stockade.client.remote import ManagerClient
    from stockade.host.manager import MAX_LOG_BYTES

    keep_id = ended_keep(server)
    path = log_file(server, keep_id)
    base = path.read_bytes()
    extra = b"".join(b"line %d\n" % i for i in range(5)) + b"partial"
    with open(path, "ab") as f:  # the host appends to its own log file
        f.write(extra)
    total = len(base) + len(extra)
    url = f"{server.url}/v1/keeps/{keep_id}/logs"

    def get(**params: int) -> httpx.Response:
        resp = httpx.get(url, params=params, headers=server.headers())
        assert resp.status_code == 200, resp.content
        assert resp.headers["stockade-log-size"] == str(total)
        return resp

    two = get(tail=2)
    assert two.content == b"line 4\npartial"
    assert int(two.headers["stockade-log-offset"]) == total - len(two.content)
    assert get(tail=0).content == b""
    assert get(tail=10_000).content == base + extra
    assert get(offset=len(base)).content == extra
    past = get(offset=total + 100)
    assert past.content == b"" and past.headers["stockade-log-offset"] == str(total)
    with ManagerClient(server.url, server.token) as client:
        assert client.logs(keep_id, tail=1) == (b"partial", total - len(b"partial"))
    cli = keeps_cli(server, "logs", keep_id, "--tail", "3")
    assert cli.returncode == 0 and cli.stdout == b"line 3\nline 4\npartial"

    # Over 1 MiB: whole lines from the end, at most MAX_LOG_BYTES of them.
    line = b"x" * 99 + b"\n"
    with open(path, "ab") as f:
        f.write(b"\n" + line * (3 * MAX_LOG_BYTES // len(line) // 2))
    size = path.stat().st_size
    whole = httpx.get(url, headers=server.headers())
    assert 0 < len(whole.content) <= MAX_LOG_BYTES
    assert whole.content.startswith(line) and whole.content.endswith(line)
    assert int(whole.headers["stockade-log-offset"]) + len(whole.content) == size
    first = httpx.get(url, params={"offset": 0}, headers=server.headers())
    assert len(first.content) == MAX_LOG_BYTES and first.content.startswith(base)
    # The CLI reads all of it in 1 MiB steps when following.
    follow = keeps_cli(server, "logs", keep_id, "--follow")
    assert follow.returncode == 0 and follow.stdout == path.read_bytes()


@pytest.mark.parametrize(
    "query",
    [
        {"tail": "-1"},
        {"tail": "x"},
        {"tail": "100001"},
        {"tail": "1.5"},
        {"offset": "-3"},
        {"tail": "1", "offset": "0"},
        {"lines": "3"},
    ],
)
def test_bad_logs_query_is_400(server: Server, query: dict[str, str]) -> None:
    resp = httpx.get(f"{server.url}/v1/keeps/0123456789abcdef/logs", params=query, headers=server.headers())
    assert resp.status_code == 400
    assert problem_of(resp)[PD_TYPE] == "bad-request"


def test_logs_and_wait_are_owner_only(server: Server) -> None:
    from stockade.client.remote import ManagerClient

    with ManagerClient(server.url, server.small_token) as small:
        theirs = small.create("sim")["id"]
        try:
            for keep_id in ("0123456789abcdef", theirs):
                for route in ("logs", "wait?timeout=0"):
                    resp = httpx.get(f"{server.url}/v1/keeps/{keep_id}/{route}", headers=server.headers())
                    assert resp.status_code == 404, route
                    assert problem_of(resp)[PD_TYPE] == "not-found"
                    assert httpx.get(f"{server.url}/v1/keeps/{keep_id}/{route}").status_code == 401
        finally:
            small.kill(theirs)
    proc = keeps_cli(server, "logs", "0123456789abcdef")
    assert proc.returncode == 1
    assert proc.stderr.decode().count("\n") == 1 and "no such Keep (404)" in proc.stderr.decode()


def test_logs_follow_ends_when_the_keep_ends(server: Server) -> None:
    from stockade.client.remote import ManagerClient

    with ManagerClient(server.url, server.token) as client:
        keep_id = client.create("sim")["id"]
        args = ("--host", server.url, "--token-file", str(server.token_file))
        follow = subprocess.Popen(
            [*STOCKADE, "keeps", "logs", keep_id, "--follow", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            time.sleep(1.5)  # it is following
            assert follow.poll() is None
            with open(log_file(server, keep_id), "ab") as f:
                f.write(b"appended while following\n")
            time.sleep(1.5)
            client.kill(keep_id)
            out, err = follow.communicate(timeout=20)
        finally:
            if follow.poll() is None:
                follow.kill()
    assert follow.returncode == 0, err
    assert b"appended while following\n" in out
    assert out == log_file(server, keep_id).read_bytes()


# ------------------------------------------------------------------ wait


def test_wait_times_out_then_wakes_at_the_end(server: Server) -> None:
    from stockade.client.remote import ManagerClient

    with ManagerClient(server.url, server.token) as client:
        keep_id = client.create("sim")["id"]
        t0 = time.monotonic()
        still = client.wait(keep_id, 0.3)
        assert still["timed_out"] is True and still["state"] == "running"
        assert time.monotonic() - t0 >= 0.3
        killer = threading.Timer(
            0.5, lambda: httpx.delete(f"{server.url}/v1/keeps/{keep_id}", headers=server.headers())
        )
        killer.start()
        t0 = time.monotonic()
        done = client.wait(keep_id, 60)
        took = time.monotonic() - t0
        killer.join()
    assert done["timed_out"] is False and done["state"] == "killed"
    assert done["detail"] == "killed on request"
    assert took < 30  # woken by the Keep's end, not by the 60 s timeout (a wide margin, not a speed gate)
    assert {k: v for k, v in done.items() if k != "timed_out"} == client_get(server, keep_id)
    again = httpx.get(f"{server.url}/v1/keeps/{keep_id}/wait", headers=server.headers())
    assert loads_strict(again.content)["timed_out"] is False  # a final Keep: at once


def client_get(server: Server, keep_id: str) -> dict[object, object]:
    from stockade.client.remote import ManagerClient

    with ManagerClient(server.url, server.token) as client:
        return client.get(keep_id)


@pytest.mark.parametrize("timeout", ["-1", "300.5", "nan", "inf", "x", ""])
def test_bad_wait_timeout_is_400(server: Server, timeout: str) -> None:
    url = f"{server.url}/v1/keeps/0123456789abcdef/wait"
    resp = httpx.get(url, params={"timeout": timeout}, headers=server.headers())
    assert resp.status_code == 400
    assert problem_of(resp)[PD_TYPE] == "bad-request"
    assert httpx.get(url, params={"t": "1"}, headers=server.headers()).status_code == 400


def test_keeps_wait_exit_codes(server: Server) -> None:
    from stockade.client.remote import ManagerClient

    proc = deploy(server, "--allow-sim", "--json", str(HELLO), "--", "alice")
    assert proc.returncode == 0, proc.stderr
    done = keeps_cli(server, "wait", json.loads(proc.stdout)["keep_id"], "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["state"] == "exited" and doc["timed_out"] is False and doc["exit_code"] == 0

    with ManagerClient(server.url, server.token) as client:
        keep_id = client.create("sim")["id"]
        try:
            waited = keeps_cli(server, "wait", keep_id, "--timeout", "0.3")
            assert waited.returncode == 124, waited.stderr
            assert waited.stdout.decode() == f"Keep {keep_id}, still running after 0.3 s\n"
        finally:
            client.kill(keep_id)
    killed = keeps_cli(server, "wait", keep_id)
    assert killed.returncode == 115, killed.stderr
    assert killed.stdout.decode() == f"Keep {keep_id}: killed (killed on request)\n"
    unknown = keeps_cli(server, "wait", "0123456789abcdef")
    assert unknown.returncode == 1 and b"404" in unknown.stderr and b"Traceback" not in unknown.stderr


def test_wait_on_a_keep_this_manager_did_not_start(server: Server) -> None:
    """A Keep re-adopted after a restart (here: a record another registry
    writer made, with a live process) is polled; when its process ends it
    is recorded as lost."""
    from stockade.client.remote import ManagerClient
    from stockade.host.registry import Limits, Registry

    owner = json.loads((server.state / "tokens.json").read_text())["tokens"][0]["id"]
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with Registry.open_state_dir(server.state) as reg:
            rec = reg.create("sim", Limits(), owner)
            reg.transition(rec.keep_id, "running", pid=sleeper.pid)
        with ManagerClient(server.url, server.token) as client:
            still = client.wait(rec.keep_id, 0.6)
            assert still["timed_out"] is True and still["state"] == "running"
            sleeper.kill()
            sleeper.wait()
            done = client.wait(rec.keep_id, 30)
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
    assert done["timed_out"] is False and done["state"] == "lost"
    assert f"adopted Keep process {sleeper.pid} ended" in done["detail"]


def test_https_url_to_a_plain_http_manager(server: Server) -> None:
    url = server.url.replace("http://", "https://")
    proc = _cli("keeps", "ls", "--host", url, "--token-file", str(server.token_file))
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "TLS handshake" in err and "use an http:// URL" in err
