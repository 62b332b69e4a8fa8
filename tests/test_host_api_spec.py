"""docs/host-api.md and docs/host-api.cddl against the live keep manager.

Every route's real responses (success and each error kind the live server
can be made to produce) are validated with pycddl against the rule the doc
names for them; the route table in docs/host-api.md must equal the
Starlette app's routes; /metrics must count a deploy. The server is the
one of tests/test_manager.py (tests/manager_support.py), one per module.

pycddl validates against the first rule of a schema, so every rule gets its
own Schema with a ``root = <rule>`` line prepended (as in
tests/test_protocol_cddl.py). The 500 ``loader-failed`` problem cannot be
provoked on a live server; its type is in the schema's enumeration, which
the problem-type test checks against the manager's source. The logs route
answers text/plain (no CDDL rule): its media type, headers and problem
bodies are checked here.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pycddl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from manager_support import HELLO, PROBLEM, Server, deploy, problem_of, running_server
from stockade.wire.messages import PD_TYPE, loads_strict

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parent.parent / "docs"
CDDL = (DOCS / "host-api.cddl").read_text()
DOC = (DOCS / "host-api.md").read_text()
CBOR = "application/cbor"
RULES = (
    "health-response",
    "host-document",
    "create-request",
    "keep-document",
    "keep-list",
    "wait-response",
    "sim-root-response",
    "collateral-list",
    "collateral-file",
    "host-problem",
)
UNKNOWN_ID = "0123456789abcdef"


@pytest.fixture(scope="module")
def server(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(state_dir, tmp_path_factory) as srv:
        yield srv


@functools.cache
def schema(rule: str) -> pycddl.Schema:
    return pycddl.Schema(f"root = {rule}\n{CDDL}")


def valid(rule: str, data: bytes) -> bool:
    try:
        schema(rule).validate_cbor(data)
    except pycddl.ValidationError:
        return False
    except BaseException as exc:  # pycddl 0.6.4 panics on some mismatches
        if type(exc).__name__ != "PanicException":
            raise
        return False
    return True


def body_of(resp: httpx.Response, status: int, rule: str) -> Any:
    """Check status, media type and schema of a response; return its value."""
    assert resp.status_code == status, resp.content
    if rule == "host-problem":
        problem_of(resp)
    else:
        assert resp.headers["content-type"] == CBOR
    schema(rule).validate_cbor(resp.content)
    return loads_strict(resp.content)


def problem(resp: httpx.Response, status: int, ptype: str) -> None:
    pd = body_of(resp, status, "host-problem")
    assert pd[PD_TYPE] == ptype


def post(server: Server, body: bytes, ctype: str = CBOR, token: str | None = None) -> httpx.Response:
    headers = {**server.headers(token), "Content-Type": ctype}
    return httpx.post(f"{server.url}/v1/keeps", content=body, headers=headers)


def ws_denial(server: Server, keep_id: str, headers: dict[str, str]) -> httpx.Response:
    """The HTTP response refusing a WebSocket handshake, as an httpx.Response."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = "ws" + server.url.removeprefix("http") + f"/v1/keeps/{keep_id}/connect"
    with pytest.raises(InvalidStatus) as info:
        connect(url, additional_headers=headers, open_timeout=10).close()
    resp = info.value.response
    return httpx.Response(resp.status_code, headers=dict(resp.headers), content=bytes(resp.body or b""))


# ------------------------------------------------------------------ the schema itself


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_compiles(rule: str) -> None:
    schema(rule)


def test_problem_types_are_the_managers() -> None:
    package = Path(__file__).resolve().parent.parent / "src/stockade/host/manager"
    source = "\n".join(p.read_text() for p in sorted(package.glob("*.py")))
    raised = set(re.findall(r'ApiProblem\(\s*(?:\d{3}|exc\.status_code),\s*"([a-z-]+)"', source))
    listed = set(re.findall(r'^\s*(?:[=/]\s*)?"([a-z-]+)"\s*;', CDDL.split("host-problem-type =")[1], re.M))
    assert raised == listed


PYCDDL_OPTIONAL_MAP_GAP = (
    "pycddl 0.6.4 accepts an unknown key in a nested map whose entries are all optional (limits)"
)


@pytest.mark.parametrize(
    "body",
    [{"backend": "sim"}, {"backend": "sim", "limits": {"timeout_ms": 1, "output_bytes": 2**63 - 1}}],
)
def test_create_requests_the_server_accepts_match_the_schema(body: dict[str, Any]) -> None:
    schema("create-request").validate_cbor(cbor2.dumps(body, canonical=True))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"backend": "sim", "extra": 1}, id="extra-key"),
        pytest.param({"backend": "sim", "limits": {"timeout_ms": -1}}, id="limit-negative"),
        pytest.param({"backend": "sim", "limits": {"timeout_ms": 0}}, id="limit-zero"),
        pytest.param({"backend": "sim", "limits": {"timeout_ms": 2**63}}, id="limit-2-63"),
        pytest.param(
            {"backend": "sim", "limits": {"cpu": 1}},
            id="limit-unknown",
            marks=pytest.mark.xfail(strict=True, reason=PYCDDL_OPTIONAL_MAP_GAP),
        ),
        pytest.param({"backend": 1}, id="backend-int"),
        pytest.param({}, id="empty"),
    ],
)
def test_create_requests_the_server_rejects_fail_the_schema(server: Server, body: dict[str, Any]) -> None:
    data = cbor2.dumps(body, canonical=True)
    problem(post(server, data), 400, "bad-request")
    assert not valid("create-request", data)


# ------------------------------------------------------------------ routes of the doc = routes of the app


def documented_routes() -> set[tuple[str, str]]:
    rows = re.findall(r"^\| `(GET|POST|PUT|PATCH|DELETE|WS)` \| `(/[^`]*)` \|", DOC, re.M)
    assert rows
    return set(rows)


def app_routes() -> set[tuple[str, str]]:
    from starlette.routing import Route, WebSocketRoute

    from stockade.host.manager import create_app
    from stockade.host.tokens import Tokens

    app = create_app(Path("/nonexistent-state-dir"), Tokens(()))  # not started: no lifespan
    out: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            out.add(("WS", route.path))
        else:
            assert isinstance(route, Route)
            out |= {(m, route.path) for m in (route.methods or ()) if m != "HEAD"}
    return out


def test_documented_routes_equal_the_apps() -> None:
    assert documented_routes() == app_routes()


def test_every_documented_route_has_a_section() -> None:
    for method, path in documented_routes():
        assert f"### `{method} {path}`" in DOC


def test_two_apps_have_separate_metrics() -> None:
    from stockade.host.manager import create_app
    from stockade.host.tokens import Tokens

    a = create_app(Path("/nonexistent-a"), Tokens(()))
    b = create_app(Path("/nonexistent-b"), Tokens(()))
    a.state.metrics.relay_bytes.labels("to_keep").inc(5)
    assert b'stockade_relay_bytes_total{direction="to_keep"} 0.0' in b.state.metrics.exposition()
    assert b'stockade_relay_bytes_total{direction="to_keep"} 5.0' in a.state.metrics.exposition()


# ------------------------------------------------------------------ live responses: success


def test_health(server: Server) -> None:
    assert body_of(httpx.get(f"{server.url}/v1/health"), 200, "health-response") == {"status": "ok"}


def test_keep_life_cycle_bodies(server: Server) -> None:
    url = f"{server.url}/v1/keeps"
    req = cbor2.dumps({"backend": "sim", "limits": {"timeout_ms": 5000}}, canonical=True)
    schema("create-request").validate_cbor(req)
    created = body_of(post(server, req), 201, "keep-document")
    assert created["state"] == "running" and created["limits"] == {"timeout_ms": 5000}
    assert len(created["measurement"]) == 48
    keep_id = created["id"]
    got = body_of(httpx.get(f"{url}/{keep_id}", headers=server.headers()), 200, "keep-document")
    assert got["id"] == keep_id
    listed = body_of(httpx.get(url, headers=server.headers()), 200, "keep-list")
    assert keep_id in {k["id"] for k in listed["keeps"]}
    killed = body_of(httpx.delete(f"{url}/{keep_id}", headers=server.headers()), 200, "keep-document")
    assert killed["state"] == "killed" and "ended_at" in killed and "exit_status" in killed
    again = body_of(httpx.delete(f"{url}/{keep_id}", headers=server.headers()), 200, "keep-document")
    assert again["state"] == "killed"
    # A Keep in a final state has had its chance: the relay refuses it.
    problem(ws_denial(server, keep_id, server.headers()), 409, "conflict")


def test_wait_bodies(server: Server) -> None:
    url = f"{server.url}/v1/keeps"
    created = body_of(post(server, cbor2.dumps({"backend": "sim"})), 201, "keep-document")
    keep_id = created["id"]
    resp = httpx.get(f"{url}/{keep_id}/wait", params={"timeout": "0.2"}, headers=server.headers())
    waited = body_of(resp, 200, "wait-response")
    assert waited["timed_out"] is True and waited["state"] == "running"
    assert not valid("keep-document", resp.content)  # timed_out is not a keep-document field
    httpx.delete(f"{url}/{keep_id}", headers=server.headers())
    resp = httpx.get(f"{url}/{keep_id}/wait", headers=server.headers())
    done = body_of(resp, 200, "wait-response")
    assert done["timed_out"] is False and done["state"] == "killed"
    assert {k: v for k, v in done.items() if k != "timed_out"} == body_of(
        httpx.get(f"{url}/{keep_id}", headers=server.headers()), 200, "keep-document"
    )
    broken = cbor2.dumps({**done, "timed_out": "no"}, canonical=True)
    assert not valid("wait-response", broken)


def test_logs_response(server: Server) -> None:
    created = body_of(post(server, cbor2.dumps({"backend": "sim"})), 201, "keep-document")
    url = f"{server.url}/v1/keeps/{created['id']}"
    httpx.delete(url, headers=server.headers())
    resp = httpx.get(f"{url}/logs", params={"tail": "5"}, headers=server.headers())
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"
    start, size = int(resp.headers["stockade-log-offset"]), int(resp.headers["stockade-log-size"])
    assert start + len(resp.content) == size
    assert resp.content.count(b"\n") <= 5


def test_sim_root(server: Server) -> None:
    doc = body_of(httpx.get(f"{server.url}/v1/sim/root", headers=server.headers()), 200, "sim-root-response")
    assert doc["ark"][:1] == b"\x30"  # a DER SEQUENCE


def test_collateral_bodies(server: Server) -> None:
    store = server.state / "collateral" / "snp" / "Milan" / "vcek"
    store.mkdir(parents=True, exist_ok=True)
    (store / "crl.der").write_bytes(b"bytes the host does not parse")
    listing = body_of(
        httpx.get(f"{server.url}/v1/collateral", headers=server.headers()), 200, "collateral-list"
    )
    assert {"name": "snp/Milan/vcek/crl.der", "size": 29} in [
        {k: f[k] for k in ("name", "size")} for f in listing["files"]
    ]
    one = body_of(
        httpx.get(f"{server.url}/v1/collateral/snp/Milan/vcek/crl.der", headers=server.headers()),
        200,
        "collateral-file",
    )
    assert one["data"] == b"bytes the host does not parse"
    problem(httpx.get(f"{server.url}/v1/collateral/snp/nope.der", headers=server.headers()), 404, "not-found")


def test_list_for_another_token(server: Server) -> None:
    listed = body_of(
        httpx.get(f"{server.url}/v1/keeps", headers=server.headers(server.small_token)), 200, "keep-list"
    )
    assert isinstance(listed["keeps"], list)


# ------------------------------------------------------------------ live responses: errors


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/host"),
        ("GET", "/v1/keeps"),
        ("POST", "/v1/keeps"),
        ("GET", f"/v1/keeps/{UNKNOWN_ID}"),
        ("DELETE", f"/v1/keeps/{UNKNOWN_ID}"),
        ("GET", f"/v1/keeps/{UNKNOWN_ID}/wait"),
        ("GET", f"/v1/keeps/{UNKNOWN_ID}/logs"),
        ("GET", "/v1/sim/root"),
        ("GET", "/v1/collateral"),
        ("GET", "/v1/collateral/intel/root_ca_crl.der"),
    ],
)
def test_401_and_403_on_every_authenticated_route(server: Server, method: str, path: str) -> None:
    problem(httpx.request(method, server.url + path), 401, "unauthorized")
    basic = {"Authorization": "Basic Zm9vOmJhcg=="}
    problem(httpx.request(method, server.url + path, headers=basic), 401, "unauthorized")
    problem(httpx.request(method, server.url + path, headers=server.headers("stk_nope")), 403, "forbidden")


def test_401_403_404_on_the_relay(server: Server) -> None:
    resp = ws_denial(server, UNKNOWN_ID, {})
    problem(resp, 401, "unauthorized")
    assert resp.headers["www-authenticate"].startswith("Bearer")
    problem(ws_denial(server, UNKNOWN_ID, server.headers("stk_nope")), 403, "forbidden")
    problem(ws_denial(server, UNKNOWN_ID, server.headers()), 404, "not-found")


def test_404_for_unknown_or_foreign_keeps(server: Server) -> None:
    for method in ("GET", "DELETE"):
        resp = httpx.request(method, f"{server.url}/v1/keeps/{UNKNOWN_ID}", headers=server.headers())
        problem(resp, 404, "not-found")
    for route in ("wait", "logs"):
        resp = httpx.get(f"{server.url}/v1/keeps/{UNKNOWN_ID}/{route}", headers=server.headers())
        problem(resp, 404, "not-found")


def test_400_for_bad_queries(server: Server) -> None:
    url = f"{server.url}/v1/keeps/{UNKNOWN_ID}"
    for route, params in (
        ("wait", {"timeout": "301"}),
        ("wait", {"timeout": "soon"}),
        ("wait", {"tail": "1"}),
        ("logs", {"tail": "-1"}),
        ("logs", {"offset": "x"}),
        ("logs", {"tail": "1", "offset": "1"}),
    ):
        problem(httpx.get(f"{url}/{route}", params=params, headers=server.headers()), 400, "bad-request")


def test_create_errors(server: Server) -> None:
    problem(post(server, b'{"backend": "sim"}', ctype="application/json"), 415, "unsupported-media-type")
    problem(post(server, b"\xff\x00"), 400, "bad-request")
    problem(post(server, cbor2.dumps({"backend": "sim", "extra": 1})), 400, "bad-request")
    big = cbor2.dumps({"backend": "sim", "pad": bytes((1 << 20) + 1)}, canonical=True)
    problem(post(server, big), 413, "too-large")
    problem(post(server, cbor2.dumps({"backend": "sev-snp"})), 422, "unsupported-backend")


def test_quota_and_relay_conflict(server: Server) -> None:
    first = body_of(
        post(server, cbor2.dumps({"backend": "sim"}), token=server.small_token), 201, "keep-document"
    )
    try:
        problem(
            post(server, cbor2.dumps({"backend": "sim"}), token=server.small_token), 429, "quota-exceeded"
        )
        # Another token's Keep is not found, on every route.
        resp = httpx.get(f"{server.url}/v1/keeps/{first['id']}", headers=server.headers())
        problem(resp, 404, "not-found")
        problem(ws_denial(server, first["id"], server.headers()), 404, "not-found")
        from stockade.client.remote import ManagerClient

        with ManagerClient(server.url, server.small_token) as client:
            sock = client.connect(first["id"])
            try:
                denial = ws_denial(server, first["id"], server.headers(server.small_token))
                problem(denial, 409, "conflict")
            finally:
                sock.close()
    finally:
        httpx.delete(f"{server.url}/v1/keeps/{first['id']}", headers=server.headers(server.small_token))


def test_routing_errors(server: Server) -> None:
    problem(httpx.get(f"{server.url}/v2/nothing"), 404, "http")
    problem(httpx.put(f"{server.url}/v1/keeps", headers=server.headers()), 405, "http")
    problem(httpx.post(f"{server.url}/v1/health"), 405, "http")


# ------------------------------------------------------------------ metrics


def scrape(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = httpx.get(f"{server.url}/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_a_deploy(server: Server) -> None:
    before = scrape(server)
    proc = deploy(server, "--allow-sim", "--json", str(HELLO), "--", "alice")
    assert proc.returncode == 0, proc.stderr.decode()
    deadline = time.monotonic() + 10
    while True:
        after = scrape(server)
        exited = metric(after, "stockade_keeps", state="exited")
        evidence = metric(after, "stockade_evidence_requests_total", backend="sim") - metric(
            before, "stockade_evidence_requests_total", backend="sim"
        )
        done = exited > metric(before, "stockade_keeps", state="exited") and evidence >= 2
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert exited >= 1
    # Two reports per deploy: the Keep's attestation and the workload identity.
    assert evidence == 2
    assert metric(after, "stockade_keep_create_seconds_count") > metric(
        before, "stockade_keep_create_seconds_count"
    )
    assert metric(after, "stockade_keep_creates_total", outcome="ok") >= 1
    for direction in ("to_keep", "to_client"):
        assert metric(after, "stockade_relay_bytes_total", direction=direction) > metric(
            before, "stockade_relay_bytes_total", direction=direction
        )
    assert metric(after, "stockade_api_requests_total", route="/v1/keeps", status="201") >= 1
    assert (
        metric(after, "stockade_api_requests_total", route="/v1/keeps/{keep_id}/connect", status="101") >= 1
    )
    assert metric(after, "stockade_api_requests_total", route="/v1/health", status="200") >= 1
    for state in ("created", "attesting", "running", "exited", "failed", "killed", "lost"):
        assert ("stockade_keeps", frozenset({("state", state)})) in after


def test_metrics_expose_no_ids_or_tokens(server: Server) -> None:
    created = body_of(post(server, cbor2.dumps({"backend": "sim"})), 201, "keep-document")
    httpx.delete(f"{server.url}/v1/keeps/{created['id']}", headers=server.headers())
    text = httpx.get(f"{server.url}/metrics").text
    assert created["id"] not in text
    assert server.token not in text and server.small_token not in text
    assert "stockade_keep_creates_total" in text and PROBLEM not in text


def test_the_manager_parses_the_line_the_sim_psp_writes(tmp_path: Path) -> None:
    from stockade.evidence.sim.psp import SERVED_LINE
    from stockade.host.manager.logs import reports_served as _reports_served

    log = tmp_path / "keep.log"
    log.write_text("keep[1]: session ended\n" + SERVED_LINE.format(3) + "\n")
    assert _reports_served(log) == 3
    log.write_text(SERVED_LINE.format(1) + "\n" + SERVED_LINE.format(2) + "\n")
    assert _reports_served(log) == 2  # the last line counts
    assert _reports_served(tmp_path / "missing.log") == 0
