"""Property tests (hypothesis) of the Intel DCAP parsers and verifier:
arbitrary bytes raise only StockadeError subclasses (MalformedEvidence for
parsers), parsed quotes round-trip, and consistent fake-signed quotes verify
with the values they carry."""

from __future__ import annotations

import contextlib
import json
import struct
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intel_support import sample, samples, shared_pck, shared_pki
from stockade.errors import MalformedEvidence, StockadeError
from stockade.evidence.intel.abi import Quote, parse_pem_chain
from stockade.evidence.intel.collateral import detect_quote
from stockade.evidence.intel.pck import check_envelope, parse_sgx_extension
from stockade.evidence.intel.tcbinfo import parse_enclave_identity, parse_tcb_info, split_signed_body
from stockade.evidence.intel.verify import check_quote, verify_quote
from stockade.evidence.sgx.abi import EnclaveReport
from stockade.evidence.tdx.abi import TdReport
from stockade.testing.intel import default_td_body

pytestmark = pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")
QUOTES = [s.quote for s in samples()]
FAST = settings(max_examples=200, deadline=None)
JSON = settings(max_examples=100, deadline=None)


def only_malformed(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except MalformedEvidence:
        return None


# --- arbitrary bytes ----------------------------------------------------------------------


@FAST
@given(st.binary(max_size=6000))
def test_random_bytes_to_the_quote_parser(data: bytes) -> None:
    q = only_malformed(Quote.from_bytes, data)
    if q is not None:
        assert q.to_bytes() == data
    detect_quote(data)  # never raises


@st.composite
def near_valid_quote(draw: st.DrawFn) -> bytes:
    """A real quote with header fields, lengths and a few bytes overwritten:
    gets much further than noise."""
    buf = bytearray(draw(st.sampled_from(QUOTES)))
    struct.pack_into("<H", buf, 0, draw(st.sampled_from([2, 3, 4, 5, 6])))
    struct.pack_into("<H", buf, 2, draw(st.sampled_from([2, 2, 2, 3])))
    struct.pack_into("<I", buf, 4, draw(st.sampled_from([0, 0x81, 0x81, 1])))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(buf) - 1))
        buf[pos] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, 40))
    return bytes(buf[: len(buf) - cut] if draw(st.booleans()) else buf)


@FAST
@given(near_valid_quote())
def test_near_valid_quotes(data: bytes) -> None:
    q = only_malformed(Quote.from_bytes, data)
    if q is not None:
        assert q.to_bytes() == data
        assert len(q.signed_bytes) + 4 + len(q.trailing) < len(data)


@settings(max_examples=100, deadline=None)
@given(near_valid_quote())
def test_near_valid_quotes_through_the_verifier(data: bytes) -> None:
    """Whatever the bytes, the verifier raises a StockadeError (or, for an
    untouched real quote, may verify)."""
    s = sample("v4-b0c06f-dcap-qvl")
    with contextlib.suppress(StockadeError):
        verify_quote(data, s.collateral, s.verify_at)
    with contextlib.suppress(StockadeError):
        check_quote(data, s.verify_at, allow_trailing=True)


@FAST
@given(st.binary(max_size=700))
def test_random_bytes_to_the_body_parsers(data: bytes) -> None:
    for parse in (EnclaveReport.from_bytes, TdReport.from_bytes):
        only_malformed(parse, data)


@FAST
@given(st.binary(min_size=384, max_size=384))
def test_random_enclave_reports(data: bytes) -> None:
    r = only_malformed(EnclaveReport.from_bytes, data)
    if r is not None:
        assert r.to_bytes() == data and len(r.report_data) == 64


@FAST
@given(st.binary(max_size=600))
def test_random_bytes_to_the_der_readers(data: bytes) -> None:
    only_malformed(parse_sgx_extension, data)
    only_malformed(check_envelope, data, "random")


@st.composite
def mutated_extension(draw: st.DrawFn) -> bytes:
    buf = bytearray(shared_pck().spec.extension())
    for _ in range(draw(st.integers(1, 3))):
        buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    return bytes(buf)


@FAST
@given(mutated_extension())
def test_mutated_sgx_extensions(data: bytes) -> None:
    only_malformed(parse_sgx_extension, data)


@FAST
@given(
    st.binary(max_size=400)
    | st.text(alphabet="-BEGIN CERTIFICATE\nEND+/=AQIDabc\x00", max_size=400).map(str.encode)
)
def test_random_pem(data: bytes) -> None:
    only_malformed(parse_pem_chain, data, "random")


# --- collateral JSON -----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


@JSON
@given(
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps({"tcbInfo": v, "signature": "00"}).encode())
)
def test_random_signed_bodies(body: bytes) -> None:
    signed = only_malformed(split_signed_body, body, "tcbInfo", "random")
    if signed is not None:
        only_malformed(parse_tcb_info, signed.value)
        only_malformed(parse_enclave_identity, signed.value)


@st.composite
def perturbed_tcb_info(draw: st.DrawFn) -> dict[str, Any]:
    """Fake TCB info (SGX or TDX) with one field replaced by any JSON value."""
    tee = draw(st.sampled_from(["sgx", "tdx"]))
    info = shared_pki().tcb_info_json(tee, shared_pck().spec)
    path = draw(st.sampled_from(["top", "level", "tcb", "module"]))
    value = draw(json_values)
    if path == "top":
        info[draw(st.sampled_from(sorted(info)))] = value
    elif path == "level":
        info["tcbLevels"][0][draw(st.sampled_from(["tcb", "tcbDate", "tcbStatus", "advisoryIDs"]))] = value
    elif path == "tcb":
        key = draw(st.sampled_from(["sgxtcbcomponents", "pcesvn", "tdxtcbcomponents"]))
        info["tcbLevels"][0]["tcb"][key] = value
    elif tee == "tdx":
        info["tdxModuleIdentities"][0][
            draw(st.sampled_from(["id", "mrsigner", "tcbLevels", "attributes"]))
        ] = value
    return info


@JSON
@given(perturbed_tcb_info())
def test_perturbed_tcb_info(info: dict[str, Any]) -> None:
    only_malformed(parse_tcb_info, info)


@JSON
@given(
    st.sampled_from(
        ["version", "miscselect", "attributesMask", "mrsigner", "isvprodid", "tcbLevels", "issueDate"]
    ),
    json_values,
)
def test_perturbed_qe_identity(key: str, value: Any) -> None:
    identity = shared_pki().qe_identity_json("tdx")
    identity[key] = value
    only_malformed(parse_enclave_identity, identity)


# --- consistent fake quotes verify with their values --------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(
        [("tdx", 4, False), ("tdx", 5, False), ("tdx", 5, True), ("sgx", 3, False), ("sgx", 4, False)]
    ),
    st.binary(min_size=64, max_size=64),
    st.binary(min_size=48, max_size=48),
    st.binary(min_size=48, max_size=48),
    st.integers(0, 2**64 - 1),
    st.binary(min_size=20, max_size=20),
)
def test_fake_quotes_verify_with_their_values(
    kind: tuple[str, int, bool], report_data: bytes, mr_td: bytes, rtmr: bytes, attrs: int, user: bytes
) -> None:
    from stockade.evidence.intel.abi import BodyType

    tee, version, v15 = kind
    pki, pck = shared_pki(), shared_pck()
    body = None
    if tee == "tdx":
        body = default_td_body(
            report_data=report_data,
            mr_td=mr_td,
            rtmr3=rtmr,
            td_attributes=attrs.to_bytes(8, "little"),
            v15=v15,
        )
    body_type = (
        BodyType.TD_REPORT15 if v15 else (BodyType.TD_REPORT10 if tee == "tdx" else BodyType.SGX_REPORT)
    )
    quote = pki.quote(
        tee, pck, version=version, body=body, body_type=body_type, report_data=report_data, user_data=user
    )
    v = verify_quote(quote, pki.collateral(tee, pck), pki.now + timedelta(minutes=1), root_der=pki.root_der)
    c = v.claims
    assert (c.platform, c.report_data, c.report_version) == (tee, report_data, version)
    assert v.quote.header.user_data == user
    if tee == "tdx":
        assert c.measurement == mr_td and dict(c.registers)["rtmr3"] == rtmr
        assert c.debug is bool(attrs & 1)
