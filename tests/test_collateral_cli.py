"""``stockade collateral fetch|ls|prune`` against the fake KDS and PCS on
loopback, serving the real vectors' collateral; and host pre-provisioning
through a live keep manager (GET /v1/collateral, ``fetch --from-host``).

What is fetched is verified at use: each test that fetches then verifies
the real evidence with what the store holds, and tampered store content is
refused by verification."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from intel_support import with_collateral
from manager_support import PROBLEM, Server, running_server
from snp_support import VERIFY_AT, sample
from stockade.errors import CollateralUnavailable, VerificationFailed
from stockade.evidence.intel.collateral import CollateralKey, PcsClient
from stockade.evidence.intel.verify import verify_quote
from stockade.evidence.snp.abi import AttestationReport, Product, SigningKey
from stockade.evidence.snp.verify import HWID_LENGTH, amd_anchors, verify_report
from stockade.evidence.store import CollateralStore
from stockade.testing.amd import FakeAmdPki
from stockade.testing.kds import FakeKds
from stockade.testing.pcs import FakePcs
from stockade.wire.collateral import MAX_FILE_BYTES, valid_name
from stockade.wire.messages import loads_strict

SNP = sample("milan-v3-oak")
TDX = next(s for s in with_collateral("tdx") if s.has_crls and not s.expect_not_supported)
TDX_KEY = CollateralKey.for_quote(TDX.quote)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stockade", "collateral", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("…")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


# --------------------------------------------------------------------------- fakes


@pytest.fixture(scope="module")
def fake_milan() -> FakeAmdPki:
    return FakeAmdPki(Product.MILAN)


@pytest.fixture
def kds(fake_milan: FakeAmdPki) -> Iterator[FakeKds]:
    """The fake KDS serving milan-v3-oak's real VCEK and AMD chain; its CRL
    is one of a fake PKI (AMD's own CRL is not among the vectors)."""
    report = AttestationReport.from_bytes(SNP.report)
    with FakeKds() as server:
        server.set_chain(Product.MILAN, (SNP.path / "ask_ark.pem").read_bytes())
        server.set_crl(Product.MILAN, fake_milan.crl())
        hwid = report.chip_id[: HWID_LENGTH[Product.MILAN]]
        server.add_vcek_der(Product.MILAN, hwid, report.reported_tcb.components(Product.MILAN), SNP.vcek_der)
        yield server


@pytest.fixture
def pcs() -> Iterator[FakePcs]:
    with FakePcs() as server:
        server.add(TDX.tee, TDX_KEY.fmspc, TDX.collateral, ca=TDX_KEY.ca)
        yield server


# --------------------------------------------------------------------------- SNP


def test_fetch_for_a_real_snp_report_then_verify_from_the_store(kds: FakeKds, tmp_path: Path) -> None:
    proc = cli(
        "fetch", str(SNP.path / "report.bin"), "--cache", str(tmp_path), "--kds-url", kds.base_url, "--json"
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    kinds = sorted(f["kind"] for f in doc["files"])
    assert kinds == ["cert-chain", "crl", "vcek"]
    paths = [r.path for r in kds.requests]
    assert paths[1:] == ["/vcek/v1/Milan/cert_chain", "/vcek/v1/Milan/crl"]
    assert paths[0].startswith("/vcek/v1/Milan/")
    got = CollateralStore(tmp_path).snp_collateral(SNP.report)
    assert got.endorsement == SNP.vcek_der
    verified = verify_report(SNP.report, got.endorsement, got.intermediate, amd_anchors(), VERIFY_AT)
    assert verified.claims.product == "Milan"


def test_a_fetched_crl_is_verified_at_use_not_trusted(kds: FakeKds, tmp_path: Path) -> None:
    """The fake KDS's CRL names AMD's ARK in nothing but its name: it is
    ignored or refused by verification, never trusted for having been fetched."""
    assert (
        cli(
            "fetch", str(SNP.path / "report.bin"), "--cache", str(tmp_path), "--kds-url", kds.base_url
        ).returncode
        == 0
    )
    got = CollateralStore(tmp_path).snp_collateral(SNP.report)
    assert got.crl is not None
    result = verify_report(
        SNP.report, got.endorsement, got.intermediate, amd_anchors(), VERIFY_AT, crls=[got.crl]
    )
    assert not result.revocation_checked  # not a CRL of AMD's chain
    assert result.claims.collateral_issued is None


def test_tampered_store_content_is_refused_at_use(kds: FakeKds, tmp_path: Path) -> None:
    assert (
        cli(
            "fetch", str(SNP.path / "report.bin"), "--cache", str(tmp_path), "--kds-url", kds.base_url
        ).returncode
        == 0
    )
    store = CollateralStore(tmp_path)
    vcek = next(n for n in store.names() if "/vcek/" in n and n.endswith(".der") and "crl" not in n)
    der = bytearray(store.read(vcek))
    der[-10] ^= 1  # inside the signature
    store.put(vcek, bytes(der))
    got = store.snp_collateral(SNP.report)
    assert got.endorsement is not None
    with pytest.raises(VerificationFailed):
        verify_report(SNP.report, got.endorsement, got.intermediate, amd_anchors(), VERIFY_AT)


def test_fetch_for_a_vlek_report_takes_the_vlek_chain_and_crl(tmp_path: Path, fake_milan: FakeAmdPki) -> None:
    """KDS serves no VLEKs: a VLEK-signed report needs only the ASVK+ARK
    chain and the CRL from it (the VLEK comes with the evidence)."""
    vlek = sample("milan-v3-vlek-aws-trustee")
    with FakeKds() as server:
        server.set_chain(Product.MILAN, (vlek.path / "ask_ark.pem").read_bytes(), SigningKey.VLEK)
        server.set_crl(Product.MILAN, fake_milan.crl(), SigningKey.VLEK)
        args = ["--cache", str(tmp_path), "--kds-url", server.base_url]
        proc = cli("fetch", str(vlek.path / "report.bin"), *args)
        assert proc.returncode == 0, proc.stderr
        assert [r.path for r in server.requests] == ["/vlek/v1/Milan/cert_chain", "/vlek/v1/Milan/crl"]
    got = CollateralStore(tmp_path).snp_collateral(vlek.report)
    assert got.endorsement is None
    verified = verify_report(vlek.report, vlek.vcek_der, got.intermediate, amd_anchors(), VERIFY_AT)
    assert verified.claims.signer == "VLEK"


def test_fetch_by_snp_selectors(kds: FakeKds, tmp_path: Path) -> None:
    report = AttestationReport.from_bytes(SNP.report)
    parts = report.reported_tcb.components(Product.MILAN)
    tcb = "bl={bootloader},tee={tee},snp={snp},ucode={microcode}".format(**parts)
    args = ["--cache", str(tmp_path), "--kds-url", kds.base_url, "--snp-product", "milan", "--no-crl"]
    proc = cli("fetch", *args, "--chip-id", report.chip_id.hex(), "--tcb", tcb)
    assert proc.returncode == 0, proc.stderr
    assert CollateralStore(tmp_path).snp_collateral(SNP.report).endorsement == SNP.vcek_der
    assert not any(r.path.endswith("/crl") for r in kds.requests)
    # The same by the 16-hex-digit TCB.
    proc = cli("fetch", *args, "--chip-id", report.chip_id.hex(), "--tcb", report.reported_tcb.hex())
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tcb", "bl=1,tee=2"], "missing microcode, snp"),
        (["--tcb", "zz"], "expected 16 hex digits"),
        (["--chip-id", "abcd", "--tcb", "0000000000000000"], "hwID is 64 bytes, got 2"),
    ],
)
def test_bad_snp_selectors_are_usage_errors(tmp_path: Path, extra: list[str], message: str) -> None:
    args = ["--cache", str(tmp_path), "--snp-product", "milan"]
    if "--chip-id" not in extra:
        args += ["--chip-id", "00" * 64]
    line = one_line_error(cli("fetch", *args, *extra), 2)
    assert message in line


def test_kds_http_failure_is_114_in_one_line(kds: FakeKds, tmp_path: Path) -> None:
    kds.fail(503, times=None)
    proc = cli(
        "fetch",
        str(SNP.path / "report.bin"),
        "--cache",
        str(tmp_path),
        "--kds-url",
        kds.base_url,
        "--retries",
        "0",
    )
    line = one_line_error(proc, 114)
    assert "HTTP 503" in line and kds.base_url in line
    assert not list(tmp_path.rglob("*.der"))


def test_kds_garbage_is_114(kds: FakeKds, tmp_path: Path) -> None:
    kds.garbage(path="/vcek/v1/Milan/cert_chain")
    proc = cli("fetch", str(SNP.path / "report.bin"), "--cache", str(tmp_path), "--kds-url", kds.base_url)
    line = one_line_error(proc, 114)
    assert "HTTP 200 but the body is not a PEM certificate chain" in line


# --------------------------------------------------------------------------- TDX


def test_fetch_for_a_real_tdx_quote_then_verify_from_the_store(pcs: FakePcs, tmp_path: Path) -> None:
    at = TDX.verify_at.isoformat()
    proc = cli(
        "fetch",
        str(TDX.path / "quote.bin"),
        "--cache",
        str(tmp_path),
        "--pcs-url",
        pcs.base_url,
        "--at",
        at,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert sorted(f["kind"] for f in doc["files"]) == ["crl", "crl", "qe-identity", "tcb-info"]
    tcb_info = next(f for f in doc["files"] if f["kind"] == "tcb-info")
    assert tcb_info["key"] == f"TDX FMSPC {TDX_KEY.fmspc.upper()}" and tcb_info["expired"] is False
    # A deploy reads <state>/collateral/intel through PcsClient, offline here.
    collateral = PcsClient(tmp_path / "intel").collateral(TDX_KEY, TDX.verify_at, offline=True)
    verified = verify_quote(TDX.quote, collateral, TDX.verify_at, allow_trailing=TDX.trailing_nonzero)
    assert verified.claims.tcb_status == TDX.overall
    assert verified.revocation_checked


def test_fetch_for_a_real_sgx_quote(tmp_path: Path) -> None:
    sgx = next(s for s in with_collateral("sgx") if s.has_crls and not s.expect_not_supported)
    key = CollateralKey.for_quote(sgx.quote)
    with FakePcs() as server:
        server.add(sgx.tee, key.fmspc, sgx.collateral, ca=key.ca)
        args = ["--cache", str(tmp_path), "--pcs-url", server.base_url, "--at", sgx.verify_at.isoformat()]
        proc = cli("fetch", str(sgx.path / "quote.bin"), *args)
        assert proc.returncode == 0, proc.stderr
        assert any(r.path == "/sgx/certification/v4/tcb" for r in server.requests)
    collateral = PcsClient(tmp_path / "intel").collateral(key, sgx.verify_at, offline=True)
    verified = verify_quote(sgx.quote, collateral, sgx.verify_at, allow_trailing=sgx.trailing_nonzero)
    assert verified.claims.platform == "sgx" and verified.claims.tcb_status == sgx.overall


def test_fetch_by_fmspc(pcs: FakePcs, tmp_path: Path) -> None:
    args = ["--cache", str(tmp_path), "--pcs-url", pcs.base_url, "--at", TDX.verify_at.isoformat()]
    proc = cli("fetch", "--fmspc", TDX_KEY.fmspc, "--tdx", "--pck-ca", TDX_KEY.ca, *args)
    assert proc.returncode == 0, proc.stderr
    assert "collateral is verified when it is used" in proc.stdout
    assert (
        tmp_path / "intel" / "tdx" / TDX_KEY.fmspc.upper() / "tcb_info.json"
    ).read_bytes() == TDX.collateral.tcb_info


def test_tampered_tcb_info_is_refused_at_use(pcs: FakePcs, tmp_path: Path) -> None:
    at = TDX.verify_at
    assert (
        cli(
            "fetch",
            str(TDX.path / "quote.bin"),
            "--cache",
            str(tmp_path),
            "--pcs-url",
            pcs.base_url,
            "--at",
            at.isoformat(),
        ).returncode
        == 0
    )
    path = tmp_path / "intel" / "tdx" / TDX_KEY.fmspc.upper() / "tcb_info.json"
    path.write_bytes(
        path.read_bytes().replace(b'"tcbEvaluationDataNumber":', b'"tcbEvaluationDataNumber": ', 1)
    )
    collateral = PcsClient(tmp_path / "intel").collateral(TDX_KEY, at, offline=True)
    with pytest.raises(VerificationFailed):
        verify_quote(TDX.quote, collateral, at, allow_trailing=TDX.trailing_nonzero)


def test_unknown_fmspc_is_114_naming_the_url(pcs: FakePcs, tmp_path: Path) -> None:
    proc = cli(
        "fetch", "--fmspc", "0123456789AB", "--sgx", "--cache", str(tmp_path), "--pcs-url", pcs.base_url
    )
    line = one_line_error(proc, 114)
    assert "HTTP 404" in line and "fmspc=0123456789AB" in line


def test_unreachable_pcs_is_114(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = cli(
        "fetch",
        "--fmspc",
        "00806F050000",
        "--tdx",
        "--cache",
        str(tmp_path),
        "--pcs-url",
        f"http://127.0.0.1:{port}",
    )
    line = one_line_error(proc, 114)
    assert f"127.0.0.1:{port}" in line


def test_expired_collateral_from_pcs_is_114(pcs: FakePcs, tmp_path: Path) -> None:
    # The vectors' collateral has expired by now: PCS must serve current collateral.
    proc = cli("fetch", str(TDX.path / "quote.bin"), "--cache", str(tmp_path), "--pcs-url", pcs.base_url)
    assert "expired" in one_line_error(proc, 114)


# --------------------------------------------------------------------------- ls, prune


def test_ls_and_prune(pcs: FakePcs, kds: FakeKds, tmp_path: Path) -> None:
    at = TDX.verify_at
    base = ["--cache", str(tmp_path)]
    assert (
        cli(
            "fetch", str(TDX.path / "quote.bin"), *base, "--pcs-url", pcs.base_url, "--at", at.isoformat()
        ).returncode
        == 0
    )
    assert cli("fetch", str(SNP.path / "report.bin"), *base, "--kds-url", kds.base_url).returncode == 0
    (tmp_path / "intel" / "junk.der").write_bytes(b"not collateral")  # unreadable: shown, pruned
    doc = json.loads(cli("ls", *base, "--at", at.isoformat(), "--json").stdout)
    by_name = {f["name"]: f for f in doc["files"]}
    assert all(valid_name(n) for n in by_name)
    tcb = by_name[f"intel/tdx/{TDX_KEY.fmspc.upper()}/tcb_info.json"]
    assert (tcb["kind"], tcb["expired"]) == ("tcb-info", False)
    assert tcb["issued"] <= at.isoformat() < tcb["next_update"]
    assert by_name["intel/junk.der"]["kind"] == "unreadable" and by_name["intel/junk.der"]["expired"] is None
    assert {"vcek", "cert-chain", "issuer-chain", "crl", "qe-identity"} <= {f["kind"] for f in doc["files"]}

    table = cli("ls", *base, "--at", at.isoformat())
    assert table.returncode == 0 and "tcb-info" in table.stdout

    later = (at + timedelta(days=400)).isoformat()  # TCB info, QE identity and CRLs have expired
    removed = json.loads(cli("prune", *base, "--at", later, "--json").stdout)["removed"]
    removed_names = {f["name"] for f in removed}
    assert tcb["name"] in removed_names and "intel/junk.der" in removed_names
    left = json.loads(cli("ls", *base, "--at", later, "--json").stdout)["files"]
    assert left and all(f["expired"] is False for f in left)  # certificates valid for years remain
    assert cli("prune", *base, "--all").returncode == 0
    assert json.loads(cli("ls", *base, "--json").stdout)["files"] == []


def test_no_selector_or_two_is_a_usage_error(tmp_path: Path) -> None:
    assert "give one of" in one_line_error(cli("fetch", "--cache", str(tmp_path)), 2)
    proc = cli(
        "fetch", str(SNP.path / "report.bin"), "--fmspc", "00806F050000", "--tdx", "--cache", str(tmp_path)
    )
    assert "give one of" in one_line_error(proc, 2)


def test_no_crl_is_for_snp_only(tmp_path: Path) -> None:
    proc = cli("fetch", str(TDX.path / "quote.bin"), "--no-crl", "--cache", str(tmp_path))
    assert "SEV-SNP collateral only" in one_line_error(proc, 2)


def test_evidence_that_is_neither_is_111(tmp_path: Path) -> None:
    bogus = tmp_path / "x.bin"
    bogus.write_bytes(b"\x00" * 100)
    assert "neither" in one_line_error(cli("fetch", str(bogus), "--cache", str(tmp_path / "c")), 111)


# --------------------------------------------------------------------------- host pre-provisioning


@pytest.fixture(scope="module")
def provisioned(state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A live manager whose state directory's collateral/ holds the TDX
    vector's collateral (as `stockade collateral fetch --state-dir` leaves it)."""
    with running_server(state_dir, tmp_path_factory) as srv:
        with FakePcs() as server:
            server.add(TDX.tee, TDX_KEY.fmspc, TDX.collateral, ca=TDX_KEY.ca)
            store = CollateralStore(srv.state / "collateral")
            store.fetch_intel(
                TDX_KEY, TDX.verify_at, pcs_url=server.base_url, root_crl_url=server.root_crl_url
            )
        (srv.state / "collateral" / "outside").symlink_to(
            srv.state / "tokens.db" if (srv.state / "tokens.db").exists() else srv.log
        )
        yield srv


def test_manager_lists_and_serves_bytes(provisioned: Server) -> None:
    resp = httpx.get(provisioned.url + "/v1/collateral", headers=provisioned.headers(), timeout=10)
    assert resp.status_code == 200
    files = loads_strict(resp.content)["files"]
    names = [f["name"] for f in files]
    assert f"intel/{TDX.tee}/{TDX_KEY.fmspc.upper()}/tcb_info.json" in names
    assert "outside" not in names  # symbolic links are not served
    first = files[0]
    one = httpx.get(
        provisioned.url + "/v1/collateral/" + first["name"], headers=provisioned.headers(), timeout=10
    )
    data = loads_strict(one.content)["data"]
    assert hashlib.sha256(data).digest() == first["sha256"] and len(data) == first["size"]


@pytest.mark.parametrize(
    "name", ["outside", "intel/../../tokens", "intel/nope.der", ".hidden", "intel/%2e%2e/x"]
)
def test_manager_refuses_names_outside_its_collateral(provisioned: Server, name: str) -> None:
    resp = httpx.get(provisioned.url + "/v1/collateral/" + name, headers=provisioned.headers(), timeout=10)
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith(PROBLEM)


def test_manager_collateral_needs_a_token(provisioned: Server) -> None:
    assert httpx.get(provisioned.url + "/v1/collateral", timeout=10).status_code == 401


def test_fetch_from_host_then_verify(provisioned: Server, tmp_path: Path) -> None:
    args = [
        "--cache",
        str(tmp_path),
        "--from-host",
        provisioned.url,
        "--token-file",
        str(provisioned.token_file),
    ]
    proc = cli("fetch", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {f["action"] for f in doc["files"]} == {"stored"}
    collateral = PcsClient(tmp_path / "intel").collateral(TDX_KEY, TDX.verify_at, offline=True)
    verified = verify_quote(TDX.quote, collateral, TDX.verify_at, allow_trailing=TDX.trailing_nonzero)
    assert verified.claims.tcb_status == TDX.overall
    again = json.loads(cli("fetch", *args, "--json").stdout)
    assert {f["action"] for f in again["files"]} == {"kept"}


def test_from_host_refuses_what_is_not_collateral(provisioned: Server, tmp_path: Path) -> None:
    bad = provisioned.state / "collateral" / "intel" / "pck_crl_bogus.der"
    bad.write_bytes(b"not a CRL")
    try:
        proc = cli(
            "fetch",
            "--cache",
            str(tmp_path),
            "--from-host",
            provisioned.url,
            "--token-file",
            str(provisioned.token_file),
        )
        line = one_line_error(proc, 114)
        assert "intel/pck_crl_bogus.der is not collateral" in line
    finally:
        bad.unlink()


def test_from_host_without_a_token_is_a_usage_error(
    provisioned: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STOCKADE_TOKEN", raising=False)
    assert "no API token" in one_line_error(
        cli("fetch", "--cache", str(tmp_path), "--from-host", provisioned.url), 2
    )


def test_store_refuses_names_outside_it(tmp_path: Path) -> None:
    store = CollateralStore(tmp_path)
    for name in ("../x", "/etc/passwd", "a/../b", ".tmp-x", ""):
        assert not valid_name(name)
        with pytest.raises(CollateralUnavailable, match="not a collateral file name"):
            store.put(name, b"x")
    with pytest.raises(CollateralUnavailable, match="over"):
        store.put("intel/big.der", bytes(MAX_FILE_BYTES + 1))


def _with_next_update(body: bytes, year: str) -> bytes:
    """TCB info with its nextUpdate year changed (the signature no longer
    matches: describe() does not check it, verification would)."""
    return re.sub(rb'("nextUpdate"\s*:\s*")\d{4}', rb"\g<1>" + year.encode(), body, count=1)


def test_older_host_collateral_does_not_replace_newer_local(provisioned: Server, tmp_path: Path) -> None:
    from stockade.client.provision import pull_from_host
    from stockade.client.remote import ManagerClient

    store = CollateralStore(tmp_path)
    name = f"intel/{TDX.tee}/{TDX_KEY.fmspc.upper()}/tcb_info.json"
    with ManagerClient(provisioned.url, provisioned.token) as client:
        pull_from_host(client, store)
        served = store.read(name)
        store.put(name, _with_next_update(served, "2099"))  # newer here: kept
        assert {p.entry.name: p.action for p in pull_from_host(client, store)}[name] == "kept"
        assert store.read(name) != served
        store.put(name, _with_next_update(served, "2001"))  # older here: replaced by the host's
        assert {p.entry.name: p.action for p in pull_from_host(client, store)}[name] == "replaced"
        assert store.read(name) == served


def test_fetch_help_lists_the_options() -> None:
    out = cli("fetch", "--help").stdout
    for option in (
        "--kds-url",
        "--pcs-url",
        "--from-host",
        "--chip-id",
        "--fmspc",
        "--snp-product",
        "--cache",
    ):
        assert option in out
