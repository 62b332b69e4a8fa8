"""Bounded fuzzing of the live keep manager's API with hypothesis: bad input
(content types, garbage or truncated CBOR, odd paths, bad tokens) always gets
a specific 4xx problem-details answer, never a 5xx, and the server stays up.

The loop is bounded in examples and time and targets only 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cbor2
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manager_support import PROBLEM, Server, running_server
from stockade.wire.messages import PD_TYPE, loads_strict


@pytest.fixture(scope="module")
def server(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(state_dir, tmp_path_factory) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def _problem_type(resp: httpx.Response) -> str:
    assert resp.headers["content-type"].startswith(PROBLEM), resp.headers
    pd = loads_strict(resp.content)
    assert isinstance(pd, dict)
    return str(pd[PD_TYPE])


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=200),
    cbor_values.map(lambda v: bytes(cbor2.dumps(v))),
    cbor_values.map(lambda v: bytes(cbor2.dumps(v))[:-1]),  # truncated
    st.fixed_dictionaries(
        {"backend": st.sampled_from(["sim", "snp", "", "x" * 50]), "limits": cbor_values}
    ).map(lambda v: bytes(cbor2.dumps(v))),
)
content_types = st.sampled_from(
    ["application/cbor", "application/json", "text/plain", "", "application/cbor; x=1"]
)

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(body=bodies, ctype=content_types)
def test_create_with_bad_bodies_gets_a_4xx_problem(
    server: Server, http: httpx.Client, body: bytes, ctype: str
) -> None:
    headers = {**server.headers(server.small_token), "content-type": ctype}
    resp = http.post("/v1/keeps", content=body, headers=headers)
    if resp.status_code == 201:  # a valid create slipped through: clean it up
        keep_id = loads_strict(resp.content)["id"]
        http.delete(f"/v1/keeps/{keep_id}", headers=server.headers(server.small_token))
        return
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.content)
    assert _problem_type(resp)


@FUZZ
@given(
    path=st.text(alphabet="abcdef0123456789-_.%", min_size=1, max_size=40),
    method=st.sampled_from(["GET", "DELETE", "PUT", "PATCH"]),
    token=st.one_of(st.none(), st.text(alphabet="abcdefstk_0123456789", min_size=1, max_size=40)),
)
def test_odd_paths_methods_and_tokens_get_4xx(
    server: Server, http: httpx.Client, path: str, method: str, token: str | None
) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    resp = http.request(method, f"/v1/keeps/{path}", headers=headers)
    assert 400 <= resp.status_code < 500, (resp.status_code, path)


@FUZZ
@given(
    route=st.sampled_from(["wait", "logs"]),
    query=st.dictionaries(
        st.sampled_from(["timeout", "tail", "offset", "x"]),
        st.text(alphabet="0123456789.-+eEinfa x", max_size=12),
        max_size=3,
    ),
)
def test_odd_wait_and_logs_queries_get_4xx(
    server: Server, http: httpx.Client, route: str, query: dict[str, str]
) -> None:
    resp = http.get(f"/v1/keeps/0123456789abcdef/{route}", params=query, headers=server.headers())
    assert resp.status_code in (400, 404), (resp.status_code, query)
    assert _problem_type(resp) in ("bad-request", "not-found")


def test_server_is_still_up_after_the_fuzzing(server: Server, http: httpx.Client) -> None:
    assert server.proc.poll() is None
    assert http.get("/v1/health").status_code == 200
    assert "Traceback" not in server.log.read_text()
