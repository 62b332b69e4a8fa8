"""The Intel collateral fetcher and its on-disk cache, against the fake PCS
of stockade.testing.pcs on loopback (real collateral from the vectors, and
the fake PKI's), and the collateral directory layout."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from intel_support import sample, shared_pck, shared_pki
from stockade.errors import CollateralUnavailable
from stockade.evidence.intel.collateral import (
    CollateralKey,
    PcsClient,
    load_collateral_dir,
    save_collateral_dir,
    verify_quote_files,
)
from stockade.evidence.intel.tcb import TcbStatus
from stockade.evidence.intel.verify import verify_quote
from stockade.testing.pcs import FakePcs

AZURE = "v4-azure-trustee"


@pytest.fixture
def pcs() -> Iterator[FakePcs]:
    with FakePcs() as fake:
        yield fake


def client(pcs: FakePcs, cache: Path, **kw: object) -> PcsClient:
    return PcsClient(cache, base_url=pcs.base_url, root_crl_url=pcs.root_crl_url, **kw)  # type: ignore[arg-type]


def serve_real(pcs: FakePcs, name: str = AZURE) -> CollateralKey:
    s = sample(name)
    key = CollateralKey.for_quote(s.quote)
    pcs.add(key.tee, key.fmspc, s.collateral, key.ca)
    return key


def test_collateral_keys_of_real_quotes() -> None:
    assert CollateralKey.for_quote(sample(AZURE).quote) == CollateralKey("tdx", "00806f050000", "platform")
    assert CollateralKey.for_quote(sample("v3-00a067-dcap-qvl").quote) == CollateralKey(
        "sgx", "00a067110000", "processor"
    )
    # The go-tdx-guest sample with appended bytes still names its collateral.
    assert CollateralKey.for_quote(sample("v4-spr-e4-go-tdx-guest").quote).fmspc == "50806f000000"


def test_fetch_verify_and_cache(pcs: FakePcs, tmp_path: Path) -> None:
    s = sample(AZURE)
    serve_real(pcs)
    c = client(pcs, tmp_path)
    fetched = c.collateral_for_quote(s.quote, s.verify_at)
    assert fetched.tcb_info == s.collateral.tcb_info  # the exact bytes, unchanged
    assert fetched.tcb_signing_chain == s.collateral.tcb_signing_chain
    assert verify_quote(s.quote, fetched, s.verify_at).tcb_status is TcbStatus.OUT_OF_DATE
    assert pcs.count() == 4
    assert {r.path for r in pcs.requests} == {
        "/tdx/certification/v4/tcb",
        "/tdx/certification/v4/qe/identity",
        "/sgx/certification/v4/pckcrl",
        "/IntelSGXRootCA.der",
    }
    # Fresh cache: no more requests, same bytes, also in a new client.
    assert client(pcs, tmp_path).collateral_for_quote(s.quote, s.verify_at) == fetched
    assert c.collateral_for_quote(s.quote, s.verify_at, offline=True) == fetched
    assert pcs.count() == 4


def test_stale_cache_is_refetched(pcs: FakePcs, tmp_path: Path) -> None:
    pki, pck = shared_pki(), shared_pck()
    key = CollateralKey("tdx", pck.spec.fmspc.hex(), "platform")
    pcs.add("tdx", key.fmspc, pki.collateral("tdx", pck))
    c = client(pcs, tmp_path)
    c.collateral(key, pki.now)
    assert pcs.count() == 4
    later = pki.now + timedelta(days=31)  # every item's nextUpdate has passed
    newer = replace(pki, now=later)  # same keys, collateral issued later
    pcs.add("tdx", key.fmspc, newer.collateral("tdx", pck))
    got = c.collateral(key, later)
    assert pcs.count() == 8
    assert got.tcb_info == pcs.tcb_infos["tdx", key.fmspc.upper()][0]
    # Offline, a stale cache is still returned (verification will judge it).
    assert c.collateral(key, later + timedelta(days=90), offline=True) == got


def test_offline_without_cache(pcs: FakePcs, tmp_path: Path) -> None:
    key = serve_real(pcs)
    with pytest.raises(CollateralUnavailable, match=r"tcb_info\.json is not cached and fetching is off"):
        client(pcs, tmp_path).collateral(key, sample(AZURE).verify_at, offline=True)
    assert pcs.count() == 0


@pytest.mark.parametrize("status", [404, 429, 500, 503])
def test_http_errors(pcs: FakePcs, tmp_path: Path, status: int) -> None:
    key = serve_real(pcs)
    pcs.fail(status, path="/tdx/certification/v4/qe")
    c = client(pcs, tmp_path)
    with pytest.raises(CollateralUnavailable, match=f"qe/identity: HTTP {status}"):
        c.collateral(key, sample(AZURE).verify_at)
    assert not (tmp_path / "tdx" / "qe_identity.json").exists()
    c.collateral(key, sample(AZURE).verify_at)  # the fault was one-off


def test_unknown_fmspc(pcs: FakePcs, tmp_path: Path) -> None:
    serve_real(pcs)
    with pytest.raises(CollateralUnavailable, match=r"tcb\?fmspc=00A06D080000: HTTP 404"):
        client(pcs, tmp_path).collateral(
            CollateralKey("tdx", "00a06d080000", "platform"), sample(AZURE).verify_at
        )


@pytest.mark.parametrize(
    "path",
    [
        "/tdx/certification/v4/tcb",
        "/tdx/certification/v4/qe",
        "/sgx/certification/v4/pckcrl",
        "/IntelSGXRootCA",
    ],
)
def test_garbage_is_not_cached(pcs: FakePcs, tmp_path: Path, path: str) -> None:
    key = serve_real(pcs)
    pcs.garbage(path=path)
    c = client(pcs, tmp_path)
    with pytest.raises(CollateralUnavailable, match="PCS returned malformed data"):
        c.collateral(key, sample(AZURE).verify_at)
    c.collateral(key, sample(AZURE).verify_at)
    assert pcs.count(path) == 2


@pytest.mark.parametrize(
    ("path", "header"),
    [
        ("/tdx/certification/v4/tcb", "TCB-Info-Issuer-Chain"),
        ("/tdx/certification/v4/qe", "SGX-Enclave-Identity-Issuer-Chain"),
        ("/sgx/certification/v4/pckcrl", "SGX-PCK-CRL-Issuer-Chain"),
    ],
)
def test_missing_issuer_chain_header(pcs: FakePcs, tmp_path: Path, path: str, header: str) -> None:
    key = serve_real(pcs)
    pcs.no_header(path=path)
    with pytest.raises(CollateralUnavailable, match=f"response lacks the {header} header"):
        client(pcs, tmp_path).collateral(key, sample(AZURE).verify_at)


def test_issuer_chain_header_that_is_not_pem(pcs: FakePcs, tmp_path: Path) -> None:
    s = sample(AZURE)
    key = CollateralKey.for_quote(s.quote)
    pcs.add(key.tee, key.fmspc, replace(s.collateral, tcb_signing_chain=b"not a certificate"))
    with pytest.raises(
        CollateralUnavailable, match="TCB-Info-Issuer-Chain header is not a PEM certificate chain"
    ):
        client(pcs, tmp_path).collateral(key, s.verify_at)


def test_expired_collateral_from_pcs(pcs: FakePcs, tmp_path: Path) -> None:
    key = serve_real(pcs)
    with pytest.raises(CollateralUnavailable, match="PCS returned collateral that expired at 2025-06-26"):
        client(pcs, tmp_path).collateral(key, sample(AZURE).verify_at + timedelta(days=60))


def test_tcb_info_for_another_fmspc_is_refused(pcs: FakePcs, tmp_path: Path) -> None:
    s = sample(AZURE)
    pcs.add("tdx", "00a06d080000", s.collateral)  # served under the wrong FMSPC
    with pytest.raises(
        CollateralUnavailable, match="PCS returned TCB info for another FMSPC than 00A06D080000"
    ):
        client(pcs, tmp_path).collateral(CollateralKey("tdx", "00a06d080000", "platform"), s.verify_at)


def test_server_down_and_timeouts(pcs: FakePcs, tmp_path: Path) -> None:
    key = serve_real(pcs)
    pcs.delay(1.0, path="/tdx")
    with pytest.raises(CollateralUnavailable, match=r"timed out after 0\.2 s"):
        client(pcs, tmp_path, timeout=0.2).collateral(key, sample(AZURE).verify_at)
    url = pcs.base_url
    pcs.stop()
    with pytest.raises(CollateralUnavailable, match="ConnectError"):
        PcsClient(tmp_path / "other", base_url=url, root_crl_url=url + "/x").collateral(
            key, sample(AZURE).verify_at
        )


def test_oversized_response(pcs: FakePcs, tmp_path: Path) -> None:
    key = serve_real(pcs)
    pcs.garbage(b"{" * (1 << 20 + 1), path="/tdx/certification/v4/tcb")
    with pytest.raises(CollateralUnavailable, match="response larger than"):
        client(pcs, tmp_path).collateral(key, sample(AZURE).verify_at)


def test_end_to_end_with_the_fake_pki(pcs: FakePcs, tmp_path: Path) -> None:
    pki = shared_pki()
    for tee in ("tdx", "sgx"):
        pck = pki.pck(ca="processor")
        quote = pki.quote(tee, pck)
        key = CollateralKey.for_quote(quote)
        assert key == CollateralKey(tee, pck.spec.fmspc.hex(), "processor")
        pcs.add(tee, key.fmspc, pki.collateral(tee, pck), "processor")
        fetched = client(pcs, tmp_path).collateral_for_quote(quote, pki.now)
        assert verify_quote(quote, fetched, pki.now, root_der=pki.root_der).tcb_status is TcbStatus.UP_TO_DATE


# --- the directory layout ------------------------------------------------------------------


def test_collateral_directory_round_trip(tmp_path: Path) -> None:
    s = sample(AZURE)
    save_collateral_dir(s.collateral, tmp_path)
    assert load_collateral_dir(tmp_path) == s.collateral
    assert verify_quote_files(s.quote, tmp_path, s.verify_at).tcb_status is TcbStatus.OUT_OF_DATE


def test_collateral_directory_without_crls(tmp_path: Path) -> None:
    s = sample("v4-00a06d08-trustee")
    c = load_collateral_dir(s.path / "collateral")
    assert (c.pck_crl, c.root_ca_crl, c.pck_crl_issuer_chain) == (None, None, None)
    with pytest.raises(CollateralUnavailable, match="revocation cannot be checked"):
        verify_quote_files(s.quote, s.path / "collateral", s.verify_at)
    assert verify_quote_files(s.quote, s.path / "collateral", s.verify_at, check_revocation=False).tcb_status


@pytest.mark.parametrize("missing", ["tcb_info.json", "qe_identity.json", "tcb_signing_chain.pem"])
def test_collateral_directory_missing_file(tmp_path: Path, missing: str) -> None:
    save_collateral_dir(sample(AZURE).collateral, tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(CollateralUnavailable, match=f"has no {missing}"):
        load_collateral_dir(tmp_path)
    with pytest.raises(CollateralUnavailable):
        verify_quote_files(sample(AZURE).quote, tmp_path / "nowhere", sample(AZURE).verify_at)
