"""The read-only status page (``GET /ui``) and ``GET /v1/host``.

Without a browser: the /v1/host route (token, body against
docs/host-api.cddl, fleet membership, no credentials in it), the page's
files and headers (CSP, nosniff, no data, no inline script, no HTML sinks
in the script), and no caching of API answers.

In headless Chromium (slow; tests/browser_support.py, DevTools protocol):
against a real manager (tests/manager_support.py), the page asks for the
token and shows the host's 401, shows a wrong token's 403, lists a Keep
created through the API and shows it killed after ``stockade keeps kill``,
never shows a deploy's output, stdin or environment, and runs no inline
script (CSP); against a stand-in host serving hostile strings, everything
renders as text, and malformed CBOR is refused with the reason shown. They skip without Debian's chromium unless
STOCKADE_REQUIRE_TOOLCHAINS=1 (CI), where they fail.

``STOCKADE_UI_SCREENSHOT=FILE`` makes the kill test save a screenshot of
the page with a few Keeps (docs/img/status-page.png is made so).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import cbor2
import httpx
import pycddl
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import stockade
from browser_support import Chromium, Page, chromium_missing
from manager_support import HELLO, Server, _free_port, deploy, keeps_cli, running_server
from stockade.host.manager import create_app
from stockade.host.manager.status import FleetMembership, HostStatus, public_endpoint
from stockade.host.manager.ui import ASSETS, CSP, asset, ui_routes
from stockade.host.tokens import add_token, load_tokens
from stockade.wire.messages import PD_TYPE, loads_strict

DOCS = Path(__file__).resolve().parent.parent / "docs"
CDDL = (DOCS / "host-api.cddl").read_text()
CBOR = "application/cbor"
REQUIRE_TOOLCHAINS = os.environ.get("STOCKADE_REQUIRE_TOOLCHAINS") == "1"
#: Seconds the page takes at most to show a change (it refreshes every 3 s).
PAGE_S = 15.0


@functools.cache
def schema(rule: str) -> pycddl.Schema:
    return pycddl.Schema(f"root = {rule}\n{CDDL}")


# ------------------------------------------------------------------ /v1/host without a browser


class InProcess:
    """The manager app of a fresh state directory with one token, asked
    in this process (httpx's ASGI transport, inside the app's lifespan)."""

    def __init__(self, tmp_path: Path, **kw: Any) -> None:
        self.token, _ = add_token(tmp_path, 2)
        self.app = create_app(tmp_path, load_tokens(tmp_path), **kw)

    def get(self, *requests: tuple[str, dict[str, str]], method: str = "GET") -> list[httpx.Response]:
        async def run() -> list[httpx.Response]:
            async with self.app.router.lifespan_context(self.app):
                transport = httpx.ASGITransport(app=self.app)
                async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                    return [await client.request(method, path, headers=h) for path, h in requests]

        return anyio.run(run)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_host_needs_the_token(tmp_path: Path) -> None:
    cases = (
        ({}, 401, "unauthorized"),
        ({"Authorization": "Basic Zm9vOmJhcg=="}, 401, "unauthorized"),
        (bearer("stk_not-a-token"), 403, "forbidden"),
    )
    answers = InProcess(tmp_path).get(*(("/v1/host", headers) for headers, _, _ in cases))
    for resp, (_, status, ptype) in zip(answers, cases, strict=True):
        assert resp.status_code == status
        schema("host-problem").validate_cbor(resp.content)
        assert loads_strict(resp.content)[PD_TYPE] == ptype
        assert resp.headers["cache-control"] == "no-store"


def test_host_document_without_fleet(tmp_path: Path) -> None:
    app = InProcess(tmp_path, backends=("sim", "sim-tdx"))
    (resp,) = app.get(("/v1/host", bearer(app.token)))
    assert resp.status_code == 200
    assert resp.headers["content-type"] == CBOR
    assert resp.headers["cache-control"] == "no-store"
    schema("host-document").validate_cbor(resp.content)
    doc = loads_strict(resp.content)
    assert doc["fleet"] is None
    assert doc["backends"] == ["sim", "sim-tdx"]
    assert doc["version"] == stockade.__version__
    assert abs(datetime.fromisoformat(doc["now"]) - datetime.now(UTC)) < timedelta(seconds=60)


def test_host_document_with_fleet_shows_no_credentials(tmp_path: Path) -> None:
    refreshed = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    membership = FleetMembership(
        host_id="host-a",
        endpoints=("etcd://alice:s3cret-pw@10.0.0.1:2379/?token=s3cret-q", "https://10.0.0.2:2379"),
        state="retrying",
        lease_ttl_s=10,
        last_refresh=refreshed,
        last_error="cannot reach https://alice:s3cret-pw@10.0.0.1:2379:\nconnection refused",
        labels={"zone": "eu-1"},
        api_url="https://bob:s3cret-api@host-a.example:8470",
    )
    calls: list[int] = []

    def fleet() -> FleetMembership:
        calls.append(1)
        return membership

    app = InProcess(tmp_path, membership=fleet)
    resp, refused = app.get(("/v1/host", bearer(app.token)), ("/v1/host", {}))
    assert refused.status_code == 401
    assert resp.status_code == 200
    schema("host-document").validate_cbor(resp.content)
    assert b"s3cret" not in resp.content
    assert len(calls) == 1  # asked on each authenticated request, and only then
    assert loads_strict(resp.content)["fleet"] == {
        "host_id": "host-a",
        "endpoints": ["etcd://10.0.0.1:2379/", "https://10.0.0.2:2379"],
        "state": "retrying",
        "lease_ttl_s": 10,
        "last_refresh": "2026-12-01T12:00:00+00:00",
        "last_error": "cannot reach https://10.0.0.1:2379: connection refused",
        "labels": {"zone": "eu-1"},
        "api_url": "https://host-a.example:8470",
    }


def test_public_endpoint() -> None:
    assert public_endpoint("etcd://u:p@h:2379") == "etcd://h:2379"
    assert public_endpoint("http://h:2379/#frag") == "http://h:2379/"
    assert public_endpoint("u:p@h:2379") == "u:p@h:2379"  # no scheme: not a URL, nothing to strip
    assert public_endpoint("x://u:p@h oops://v:q@i") == "x://h oops://v:q@i"  # only the netloc's
    assert public_endpoint("h:2379\n" + "x" * 400).startswith("h:2379 x")
    assert len(public_endpoint("http://h/" + "x" * 400)) == 256


def test_fleet_membership_refuses_what_it_cannot_show() -> None:
    with pytest.raises(ValueError, match="fleet state"):
        FleetMembership("h", ("etcd://h:2379",), "up")
    with pytest.raises(ValueError, match="endpoint"):
        FleetMembership("h", (), "registered")
    with pytest.raises(ValueError, match="lease_ttl_s"):
        FleetMembership("h", ("etcd://h:2379",), "registered", lease_ttl_s=0)
    with pytest.raises(ValueError, match="labels"):
        FleetMembership("h", ("etcd://h:2379",), "registered", labels={str(i): "v" for i in range(33)})
    naive = FleetMembership("h", ("etcd://h:2379",), "registered", last_refresh=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone"):
        naive.to_document()


def test_host_status_document_is_valid_for_every_state() -> None:
    clock = datetime(2026, 12, 1, tzinfo=UTC)
    for state in ("registered", "retrying", "draining", "stopped"):
        fleet = FleetMembership("h", ("etcd://h:2379",), state)
        doc = HostStatus(("sim",), lambda fleet=fleet: fleet, lambda: clock).document()
        schema("host-document").validate_cbor(cbor2.dumps(doc, canonical=True))
    bad = {**doc, "fleet": {**doc["fleet"], "state": "up"}}
    with pytest.raises(pycddl.ValidationError):
        schema("host-document").validate_cbor(cbor2.dumps(bad, canonical=True))


# ------------------------------------------------------------------ the page's files without a browser


def test_page_files_need_no_token_carry_no_data_and_strict_headers(tmp_path: Path) -> None:
    app = InProcess(tmp_path)
    answers = app.get(*((f"/ui/{name}", {}) for name in ASSETS), ("/ui", {}))
    for resp, (name, media_type) in zip(
        answers, [*ASSETS.items(), ("index.html", ASSETS["index.html"])], strict=True
    ):
        assert resp.status_code == 200, name
        assert resp.content == asset(name)  # the file as shipped: no data, no templating
        assert resp.headers["content-type"] == media_type
        assert resp.headers["content-security-policy"] == CSP
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["referrer-policy"] == "no-referrer"
        assert "set-cookie" not in resp.headers
    other, dotted, keeps = app.get(
        ("/ui/other.js", {}), ("/ui/..%2Fui.py", {}), ("/v1/keeps", bearer(app.token))
    )
    assert other.status_code == 404 and dotted.status_code == 404
    assert keeps.status_code == 200
    assert keeps.headers["cache-control"] == "no-store"
    (posted,) = app.get(("/ui", {}), method="POST")
    assert posted.status_code == 405  # a form posted without the script goes nowhere
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["form-action"] == "'none'"
    assert "unsafe" not in CSP


def test_page_has_no_inline_script_or_html_sinks() -> None:
    html = asset("index.html").decode()
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S | re.I)
    assert scripts == [""]  # one, external
    assert re.search(r"<script\b[^>]*\bsrc=\"/ui/app\.js\"", html)
    assert not re.search(r"\son[a-z]+\s*=", html, re.I)  # no inline event handlers
    assert not re.search(r"\sstyle\s*=", html, re.I)
    assert not re.search(r"https?://", html)  # nothing from elsewhere (no CDN)
    js = re.sub(r"^\s*//.*$", "", asset("app.js").decode(), flags=re.M)  # code, not comments
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "Function(",
        "/logs",
    ):
        assert sink not in js, sink
    assert "sessionStorage" in js
    assert "localStorage" not in js
    assert "document.cookie" not in js
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", js)  # only the SVG namespace


# ------------------------------------------------------------------ in headless Chromium


@pytest.fixture(scope="module")
def browser_ok() -> None:
    reason = chromium_missing()
    if reason:
        if REQUIRE_TOOLCHAINS:
            pytest.fail(reason + " (STOCKADE_REQUIRE_TOOLCHAINS=1)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium(browser_ok: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    with Chromium(tmp_path_factory.mktemp("chromium") / "profile") as c:
        yield c


@pytest.fixture
def browser(chromium: Chromium) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) of the module's Chromium."""
    with chromium.page() as b:
        yield b
        # No script error and no Content-Security-Policy violation on any page
        # (network errors are the 401/403 answers the tests ask for).
        assert [p for p in b.problems() if not p.startswith("network:")] == []
        # No script error and no Content-Security-Policy violation on any page
        # (network errors are the 401/403 answers the tests ask for).
        assert [p for p in b.problems() if not p.startswith("network:")] == []


@pytest.fixture(scope="module")
def server(browser_ok: None, state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(state_dir, tmp_path_factory) as srv:
        yield srv


def create_keep(server: Server, limits: dict[str, int] | None = None) -> dict[str, Any]:
    body = cbor2.dumps({"backend": "sim", "limits": limits or {}}, canonical=True)
    resp = httpx.post(
        f"{server.url}/v1/keeps", content=body, headers={**server.headers(), "Content-Type": CBOR}, timeout=30
    )
    assert resp.status_code == 201, resp.content
    doc = loads_strict(resp.content)
    assert isinstance(doc, dict)
    return doc


def sign_in(b: Page, url: str, token: str) -> None:
    b.navigate(f"{url}/ui")
    b.wait_for("!document.getElementById('auth-status').hidden")  # the host's 401, shown
    b.type_into("#token", token)
    b.click("#token-form button[type=submit]")


def row_state(b: Page, keep_id: str) -> str | None:
    found = b.evaluate(
        "(() => { const r = [...document.querySelectorAll('#keeps tbody tr')]"
        f".find((tr) => tr.dataset.keepId === {json.dumps(keep_id)});"
        " return r ? r.children[1].textContent : null; })()"
    )
    return None if found is None else str(found)


pytest_slow = pytest.mark.slow


@pytest_slow
def test_page_asks_for_the_token_and_shows_the_hosts_401(server: Server, browser: Page) -> None:
    browser.navigate(f"{server.url}/ui")
    message = browser.wait_for(
        "!document.getElementById('auth-status').hidden && document.getElementById('auth-status').textContent"
    )
    assert "401" in message and "token is required" in message
    assert browser.evaluate("document.getElementById('status').hidden") is True
    assert browser.evaluate("document.getElementById('token').type") == "password"
    assert browser.evaluate("sessionStorage.length") == 0
    # What the page's own request without a token gets: 401, nothing else.
    status = browser.evaluate("fetch('/v1/keeps', {cache: 'no-store'}).then((r) => r.status)")
    assert status == 401


@pytest_slow
def test_a_wrong_token_is_refused_and_shown(server: Server, browser: Page) -> None:
    create_keep(server)  # a Keep the wrong token must not see
    sign_in(browser, server.url, "stk_wrong-token")
    message = browser.wait_for(
        "document.getElementById('auth-status').textContent.includes('403')"
        " && document.getElementById('auth-status').textContent"
    )
    assert "not valid on this host" in message
    assert browser.evaluate("document.getElementById('status').hidden") is True
    assert browser.evaluate("sessionStorage.getItem('stockade.token')") is None  # forgotten
    assert browser.evaluate("document.querySelectorAll('#keeps tbody tr').length") == 0


@pytest_slow
def test_page_lists_a_keep_and_updates_after_a_kill(server: Server, browser: Page) -> None:
    keep = create_keep(server, {"timeout_ms": 20_000, "memory_bytes": 64 << 20})
    others = [create_keep(server, {"timeout_ms": 60_000}) for _ in range(2)]
    sign_in(browser, server.url, server.token)
    browser.wait_for(f"document.querySelector('tr[data-keep-id=\"{keep['id']}\"]')", PAGE_S)
    assert row_state(browser, keep["id"]) == "running"
    cells = browser.evaluate(
        f"[...document.querySelector('tr[data-keep-id=\"{keep['id']}\"]').children].map((td) => td.textContent)"
    )
    full = keep["measurement"].hex()
    assert cells[2] == "simno hardware protection"
    assert cells[3] == full[:12] + "\u2026"
    assert cells[5] == "time 20 s, memory 64 MiB"
    title = browser.evaluate(
        f"document.querySelector('tr[data-keep-id=\"{keep['id']}\"] .measurement').title"
    )
    assert title == full
    assert "Not in a fleet" in browser.text()
    assert stockade.__version__ in browser.text()
    # The token: in this tab's sessionStorage only; not in the URL or a cookie.
    assert browser.evaluate("sessionStorage.getItem('stockade.token')") == server.token
    assert server.token not in browser.evaluate("location.href")
    assert browser.evaluate("document.cookie") == ""
    assert server.token not in browser.html()

    proc = keeps_cli(server, "kill", keep["id"])
    assert proc.returncode == 0, proc.stderr
    browser.wait_for(
        f"(() => {{ const r = document.querySelector('tr[data-keep-id=\"{keep['id']}\"]');"
        " return r && r.children[1].textContent === 'killed'; })()",
        PAGE_S,
    )
    # The chart's samples: one point per refresh, the last one the running rows.
    browser.wait_for(
        "document.querySelector('#chart polyline[data-series=running]').points.length >= 3", PAGE_S
    )
    legend, running = browser.evaluate(
        "[document.querySelector('#chart svg').textContent,"
        " document.querySelectorAll('#keeps tbody tr .state-running').length]"
    )
    assert f"running {running}," in legend
    assert all(row_state(browser, o["id"]) == "running" for o in others)
    shot = os.environ.get("STOCKADE_UI_SCREENSHOT")
    if shot:
        time.sleep(7)  # a few more samples on the chart
        browser.screenshot(Path(shot))
    for other in others:
        assert keeps_cli(server, "kill", other["id"]).returncode == 0


@pytest_slow
def test_no_workload_output_on_the_page(server: Server, browser: Page, tmp_path: Path) -> None:
    stdin = tmp_path / "stdin"
    stdin.write_text("stdin-canary-8d1f\n")
    proc = deploy(
        server,
        "--allow-sim",
        "--json",
        "--env",
        "GREETING=env-canary-5c2e",
        "--stdin",
        str(stdin),
        str(HELLO),
        "--",
        "arg-canary-77aa",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert "Hello, arg-canary-77aa!" in doc["stdout"]  # the workload did print them
    assert "GREETING: env-canary-5c2e" in doc["stdout"]
    sign_in(browser, server.url, server.token)
    browser.wait_for(f"document.querySelector('tr[data-keep-id=\"{doc['keep_id']}\"]')", PAGE_S)
    browser.wait_for(f"document.querySelector('tr[data-keep-id=\"{doc['keep_id']}\"] .state-exited')", PAGE_S)
    html = browser.html()
    for canary in ("canary", "Hello,", "GREETING"):
        assert canary not in html


# ------------------------------------------------------------------ hostile strings, in Chromium

HOSTILE = "<script>window.__pwned = 1</script>"
HOSTILE_IMG = '<img src=x onerror="window.__pwned = 2">'
HOSTILE_ATTR = '"><svg onload="window.__pwned = 3">'


def hostile_app(token: str, keeps_body: Callable[[], bytes] | None = None) -> Starlette:
    """A stand-in host whose API answers hostile strings in every field the
    page shows (a real registry refuses such Keep ids; the page must not
    rely on it: fleet entries and labels come from other hosts).
    ``keeps_body``: the bytes ``GET /v1/keeps`` answers instead."""
    fleet = FleetMembership(
        host_id=HOSTILE,
        endpoints=(f"etcd://h:2379/{HOSTILE_IMG}",),
        state="retrying",
        last_refresh=datetime.now(UTC),
        last_error=HOSTILE_ATTR,
        labels={HOSTILE: HOSTILE_IMG},
        api_url=f"https://h:8470/{HOSTILE}",
    )
    status = HostStatus((HOSTILE_IMG, "sim"), lambda: fleet)
    keep = {
        "id": HOSTILE,
        "state": HOSTILE_ATTR,
        "backend": HOSTILE_IMG,
        "created_at": HOSTILE,
        "limits": {HOSTILE: HOSTILE_IMG, "memory_bytes": HOSTILE},
        "measurement": bytes(range(48)),
    }
    second = {**keep, "id": HOSTILE_IMG, "state": "running", "backend": "sim", "created_at": HOSTILE_ATTR}

    def authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {token}"

    async def host(request: Request) -> Response:
        if not authorized(request):
            return Response(cbor2.dumps({-1: HOSTILE, -2: HOSTILE_IMG}), 401)
        return Response(cbor2.dumps({**status.document(), "version": HOSTILE}), media_type=CBOR)

    async def keeps(request: Request) -> Response:
        if not authorized(request):
            return Response(b"", 401)
        body = keeps_body() if keeps_body else cbor2.dumps({"keeps": [keep, second]})
        return Response(body, media_type=CBOR)

    return Starlette(routes=[*ui_routes(), Route("/v1/host", host), Route("/v1/keeps", keeps)])


@contextlib.contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """``app`` on a free loopback port (uvicorn in a thread); its URL."""
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the stand-in host did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture
def hostile_host() -> Iterator[Callable[[], str]]:
    with serving(hostile_app("stk_ok")) as url:
        yield lambda: url


@pytest_slow
def test_hostile_strings_render_as_text(hostile_host: Callable[[], str], browser: Page) -> None:
    url = hostile_host()
    browser.navigate(f"{url}/ui")
    shown = browser.wait_for(
        "!document.getElementById('auth-status').hidden && document.getElementById('auth-status').textContent"
    )
    assert HOSTILE in shown and HOSTILE_IMG in shown  # the problem's title and detail, as text
    browser.type_into("#token", "stk_ok")
    browser.click("#token-form button[type=submit]")
    browser.wait_for("document.querySelectorAll('#keeps tbody tr').length === 2", PAGE_S)
    browser.wait_for("document.querySelector('#chart svg')", PAGE_S)
    time.sleep(1)
    assert browser.evaluate("window.__pwned === undefined") is True
    # Only the page's own elements: one script (app.js), no img, no svg but the chart.
    assert browser.evaluate("[...document.scripts].map((s) => s.src)") == [f"{url}/ui/app.js"]
    assert browser.evaluate("document.querySelectorAll('img').length") == 0
    assert browser.evaluate("document.querySelectorAll('svg').length") == 1
    handlers = browser.evaluate(
        "[...document.querySelectorAll('*')].flatMap((e) => [...e.attributes].map((a) => a.name))"
        ".filter((n) => n.startsWith('on'))"
    )
    assert handlers == []
    text = browser.text()
    for hostile in (HOSTILE, HOSTILE_IMG, HOSTILE_ATTR):
        assert hostile in text
    assert browser.evaluate("document.querySelectorAll('#keeps tbody tr')[0].dataset.keepId") == HOSTILE


@pytest_slow
def test_the_csp_blocks_injected_inline_script(server: Server, browser: Page) -> None:
    """The policy is enforced, not only sent: a script element injected
    with inline code does not run, and Chromium reports the violation."""
    browser.navigate(f"{server.url}/ui")
    browser.evaluate(
        "(() => { const s = document.createElement('script');"
        " s.textContent = 'window.__inline = 1'; document.body.appendChild(s); })()"
    )
    time.sleep(0.5)
    assert browser.evaluate("window.__inline === undefined") is True
    violations = [p for p in browser.problems() if "Content Security Policy" in p]
    assert violations
    browser.events.clear()  # seen: the fixture checks for others


#: Malformed CBOR a host could answer, and what the page says of it.
MALFORMED = (
    (bytes.fromhex("a1656b65657073"), "CBOR: truncated"),  # {"keeps": <nothing>}
    (cbor2.dumps({"keeps": []}) + b"\x00", "CBOR: bytes after the item"),
    (bytes.fromhex("c0") + cbor2.dumps("2026-01-01"), "CBOR: tags are not used"),
    (bytes.fromhex("bf656b6565707380ff"), "CBOR: indefinite length"),
    (b"\x81" * 40 + b"\x80", "CBOR: nested too deep"),
    (bytes.fromhex("a2616101616102"), "CBOR: duplicate map key"),  # {"a": 1, "a": 2}
    (bytes.fromhex("a1800a"), "CBOR: map key not text"),  # {[]: 10}
    (bytes.fromhex("5bffffffffffffffff"), "CBOR: length beyond the data"),
    (bytes.fromhex("5a7fffffff00"), "CBOR: length beyond the data"),
    (
        bytes.fromhex("a1656b6565707362c328"),
        "CBOR: text is not valid UTF-8",
    ),  # bad UTF-8
    (bytes.fromhex("f7"), "CBOR: unsupported simple value"),  # undefined
)


@pytest_slow
def test_malformed_cbor_is_refused_and_shown(browser: Page) -> None:
    """The page's CBOR decoder refuses what the API never sends; the page
    says why instead of showing half-decoded data."""
    current = [cbor2.dumps({"keeps": []})]
    with serving(hostile_app("stk_ok", lambda: current[0])) as url:
        sign_in(browser, url, "stk_ok")
        browser.wait_for("document.getElementById('keeps-empty').hidden === false", PAGE_S)
        for body, message in MALFORMED:
            current[0] = body
            browser.navigate(f"{url}/ui")  # the tab keeps the token: reads at once
            shown = browser.wait_for(
                "(() => { const e = document.getElementById('refresh-error');"
                f" return !e.hidden && e.textContent.includes({json.dumps(message)}) && e.textContent; }})()",
                PAGE_S,
            )
            assert shown.startswith("Cannot read the host: "), shown
        # It recovers, and reads integers beyond 2^53 exactly (limits go to 2^63 - 1).
        big = {"id": "k1", "state": "running", "backend": "sim", "created_at": "2026-12-01T00:00:00+00:00"}
        big["limits"] = {"output_bytes": 2**63 - 1, "memory_bytes": 3 << 30}
        current[0] = cbor2.dumps({"keeps": [big]})
        browser.navigate(f"{url}/ui")
        browser.wait_for("document.querySelectorAll('#keeps tbody tr').length === 1", PAGE_S)
        assert browser.evaluate("document.getElementById('refresh-error').hidden") is True
        limits = browser.evaluate("document.querySelector('#keeps tbody tr').children[5].textContent")
        assert limits == "output 9223372036854775807 B, memory 3 GiB"
