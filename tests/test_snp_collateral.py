"""SNP collateral: KDS URLs (checked against the real vectors and AMD's own
CRL distribution points), the fetcher against the fake KDS on loopback
(faults, retries, timeouts, garbage, cache), and the extended-report
certificate table."""

from __future__ import annotations

import email.utils
import os
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from snp_support import VERIFY_AT, report_samples, sample
from stockade.errors import CollateralUnavailable, MalformedEvidence
from stockade.evidence.pki import der_of, load_der, load_pem_chain
from stockade.evidence.snp.abi import AttestationReport, Product, SigningKey, TcbVersion
from stockade.evidence.snp.certs import read_extensions
from stockade.evidence.snp.collateral import (
    ARK_GUID,
    ASK_GUID,
    VCEK_GUID,
    VLEK_GUID,
    CertTable,
    CollateralCache,
    KdsFetcher,
    build_cert_table,
    cert_chain_url,
    crl_url,
    parse_cert_table,
    vcek_url,
    vcek_url_for_report,
)
from stockade.evidence.snp.verify import amd_anchors, bundled_intermediate, verify_report
from stockade.testing.amd import FakeAmdPki, FakeEndorsement
from stockade.testing.kds import FakeKds

KDS = "https://kdsintf.amd.com"

# --- URLs -------------------------------------------------------------------------------------


def expected_vcek_url(s: Any) -> str:
    """The KDS URL from expected.json alone (the collector's own parse)."""
    fields, tcb = s.expected["fields"], s.expected["decoded"]["reported_tcb"]
    product = s.expected["product"]
    hwid = fields["chip_id"][: 16 if product == "Turin" else 128]
    url = (
        f"{KDS}/vcek/v1/{product}/{hwid}?blSPL={tcb['bootloader']}&teeSPL={tcb['tee']}"
        f"&snpSPL={tcb['snp']}&ucodeSPL={tcb['microcode']}"
    )
    return url + (f"&fmcSPL={tcb['fmc']}" if product == "Turin" else "")


VCEK_SAMPLES = [s for s in report_samples() if s.expected["endorsement_key"] == "VCEK"]


@pytest.mark.parametrize("s", VCEK_SAMPLES, ids=lambda s: s.name)
def test_vcek_url_of_each_real_report(s: Any) -> None:
    report = AttestationReport.from_bytes(s.report)
    url = vcek_url_for_report(report, s.product)
    assert url == expected_vcek_url(s)
    # The hwID in the URL is the one in the VCEK that KDS returned for it.
    ext = read_extensions(load_der(s.vcek_der, s.name))
    assert ext.hwid is not None and f"/{ext.hwid.hex()}?" in url
    if report.version >= 3:
        assert vcek_url_for_report(report) == url  # CPUID gives the product


def test_pinned_urls() -> None:
    turin = AttestationReport.from_bytes(sample("turin-v5-oak").report)
    assert vcek_url_for_report(turin) == (
        "https://kdsintf.amd.com/vcek/v1/Turin/3b42092f69c656d3?blSPL=1&teeSPL=0&snpSPL=2&ucodeSPL=71&fmcSPL=0"
    )
    genoa = AttestationReport.from_bytes(sample("genoa-v3-azure-trustee").report)
    assert vcek_url_for_report(genoa, base_url="http://mirror.example/").startswith(
        "http://mirror.example/vcek/v1/Genoa/0506ffba875e939c"
    )
    assert vcek_url_for_report(genoa).endswith("?blSPL=10&teeSPL=0&snpSPL=23&ucodeSPL=84")
    assert cert_chain_url(Product.MILAN) == f"{KDS}/vcek/v1/Milan/cert_chain"
    assert cert_chain_url(Product.TURIN, SigningKey.VLEK) == f"{KDS}/vlek/v1/Turin/cert_chain"


@pytest.mark.parametrize("product", list(Product))
@pytest.mark.parametrize("signer", [SigningKey.VCEK, SigningKey.VLEK])
def test_crl_urls_are_amds_crl_distribution_points(product: Product, signer: SigningKey) -> None:
    """AMD's ASK and ASVK certificates name their CRL; ours is the same URL."""
    inter = load_der(bundled_intermediate(product, signer), "bundled intermediate")
    cdp = inter.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    urls = [n.value for dp in cdp for n in (dp.full_name or [])]
    assert urls == [crl_url(product, signer)]


def test_v2_report_needs_a_hint() -> None:
    report = AttestationReport.from_bytes(sample("milan-v2-go-sev-guest").report)
    with pytest.raises(MalformedEvidence, match=r"no CPUID fields and no product hint"):
        vcek_url_for_report(report)


def test_no_vcek_url_for_a_vlek_report() -> None:
    report = AttestationReport.from_bytes(sample("milan-v3-vlek-aws-trustee").report)
    with pytest.raises(CollateralUnavailable, match=r"signed by a VLEK, not a VCEK"):
        vcek_url_for_report(report)


def test_turin_chip_id_must_be_zero_padded() -> None:
    report = AttestationReport.from_bytes(sample("turin-v5-oak").report)
    raw = bytearray(report.raw)
    raw[0x1A0 + 8] = 1
    with pytest.raises(MalformedEvidence, match=r"^Turin CHIP_ID has non-zero bytes after its 8-byte hwID$"):
        vcek_url_for_report(AttestationReport.from_bytes(bytes(raw)))


def test_vcek_url_checks_its_inputs() -> None:
    tcb = TcbVersion.from_components(Product.MILAN, bootloader=1, tee=2, snp=3, microcode=4)
    assert vcek_url(Product.MILAN, bytes(range(64)), tcb).endswith("?blSPL=1&teeSPL=2&snpSPL=3&ucodeSPL=4")
    with pytest.raises(ValueError, match=r"a Turin hwID is 8 bytes, got 64"):
        vcek_url(Product.TURIN, bytes(64), tcb)
    with pytest.raises(MalformedEvidence, match=r"non-zero reserved bytes"):
        vcek_url(Product.MILAN, bytes(64), TcbVersion(tcb.raw | 1 << 16))


# --- fetcher against the fake KDS ---------------------------------------------------------------


class Sleeps(list[float]):
    """A sleep() that records instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture(scope="module")
def chips(milan: FakeAmdPki, turin: FakeAmdPki) -> dict[Product, FakeEndorsement]:
    return {Product.MILAN: milan.vcek(), Product.TURIN: turin.vcek()}


@pytest.fixture
def kds(milan: FakeAmdPki, turin: FakeAmdPki, chips: dict[Product, FakeEndorsement]) -> Iterator[FakeKds]:
    with FakeKds() as server:
        server.add_pki(milan)
        server.add_pki(turin)
        for chip in chips.values():
            server.add_vcek(chip)
        yield server


def fetcher(kds: FakeKds, **kw: Any) -> KdsFetcher:
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("timeout", 2.0)
    return KdsFetcher(kds.base_url, **kw)


@pytest.mark.parametrize("product", [Product.MILAN, Product.TURIN])
def test_fetch_everything_then_verify(
    kds: FakeKds,
    milan: FakeAmdPki,
    turin: FakeAmdPki,
    chips: dict[Product, FakeEndorsement],
    product: Product,
) -> None:
    pki, chip = (milan, chips[product]) if product is Product.MILAN else (turin, chips[product])
    report = pki.report(chip)
    with fetcher(kds) as f:
        got = f.collateral(report)
    assert got.endorsement == chip.der
    assert (got.intermediate, got.ark) == (pki.ask_der, pki.ark_der)
    assert got.crl is not None
    result = verify_report(
        report, got.endorsement, got.intermediate, [pki.anchor()], pki.now, crls=[got.crl], require_crl=True
    )
    assert result.revocation_checked and result.product is product
    paths = [r.path for r in kds.requests]
    assert paths == [
        f"/vcek/v1/{product.value}/{chip.hwid.hex()}",
        f"/vcek/v1/{product.value}/cert_chain",
        f"/vcek/v1/{product.value}/crl",
    ]
    expected_query = "blSPL={bootloader}&teeSPL={tee}&snpSPL={snp}&ucodeSPL={microcode}".format(**chip.tcb)
    if product is Product.TURIN:
        expected_query += f"&fmcSPL={chip.tcb['fmc']}"
    assert kds.requests[0].query == expected_query


def test_vlek_collateral_is_chain_and_crl(kds: FakeKds, milan: FakeAmdPki) -> None:
    vlek = milan.vlek()
    with fetcher(kds) as f:
        got = f.collateral(milan.report(vlek))
    assert got.endorsement is None and got.intermediate == milan.asvk_der and got.crl is not None
    assert [r.path for r in kds.requests] == ["/vlek/v1/Milan/cert_chain", "/vlek/v1/Milan/crl"]
    assert verify_report(
        milan.report(vlek), vlek.der, got.intermediate, [milan.anchor()], milan.now, crls=[got.crl]
    ).revocation_checked


def test_404_is_not_retried(kds: FakeKds, milan: FakeAmdPki) -> None:
    unknown_chip = milan.vcek()  # not published
    with fetcher(kds) as f, pytest.raises(CollateralUnavailable) as info:
        f.vcek(milan.report(unknown_chip))
    message = str(info.value)
    assert message.startswith(f"{kds.base_url}/vcek/v1/Milan/{unknown_chip.hwid.hex()}?blSPL=4")
    assert message.endswith(": HTTP 404 Not Found")
    assert kds.count() == 1
    assert info.value.exit_code == 114


def test_programmed_404(kds: FakeKds) -> None:
    kds.fail(404, path="/vcek/v1/Milan/cert_chain")
    with fetcher(kds) as f:
        with pytest.raises(CollateralUnavailable, match=r"/vcek/v1/Milan/cert_chain: HTTP 404"):
            f.cert_chain(Product.MILAN)
        assert f.cert_chain(Product.MILAN)[0]  # the fault was for one request
    assert kds.count() == 2


def test_429_with_retry_after_then_success(kds: FakeKds) -> None:
    kds.fail(429, path="/vcek/v1/Milan/crl", times=2, retry_after=3)
    sleeps = Sleeps()
    with fetcher(kds, sleep=sleeps) as f:
        crl = f.crl(Product.MILAN)
    assert x509.load_der_x509_crl(crl).issuer.rfc4514_string().endswith("CN=ARK-Milan")
    assert sleeps == [3.0, 3.0]
    assert kds.count("/vcek/v1/Milan/crl") == 3


def test_retry_after_as_an_http_date(kds: FakeKds) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    when = email.utils.format_datetime(now + timedelta(seconds=7), usegmt=True)
    kds.fail(503, times=1, retry_after=when)
    sleeps = Sleeps()
    with fetcher(kds, sleep=sleeps, now=lambda: now) as f:
        f.cert_chain(Product.TURIN)
    assert sleeps == [7.0]


def test_retry_budget_exhausted(kds: FakeKds) -> None:
    kds.fail(429, times=None, retry_after=1)
    sleeps = Sleeps()
    with (
        fetcher(kds, sleep=sleeps, retries=3) as f,
        pytest.raises(
            CollateralUnavailable,
            match=r"/vcek/v1/Milan/cert_chain: HTTP 429 Too Many Requests; gave up after 4 attempts$",
        ),
    ):
        f.cert_chain(Product.MILAN)
    assert kds.count() == 4 and sleeps == [1.0, 1.0, 1.0]


def test_retry_after_longer_than_the_cap_fails_at_once(kds: FakeKds) -> None:
    kds.fail(429, times=None, retry_after=3600)
    sleeps = Sleeps()
    with (
        fetcher(kds, sleep=sleeps, max_retry_after=30) as f,
        pytest.raises(
            CollateralUnavailable, match=r"retry after 3600 s, longer than the 30 s this fetcher waits"
        ),
    ):
        f.crl(Product.MILAN)
    assert kds.count() == 1 and sleeps == []


def test_server_errors_back_off_exponentially(kds: FakeKds) -> None:
    kds.fail(503, times=3)
    sleeps = Sleeps()
    with fetcher(kds, sleep=sleeps, backoff=0.25, retries=3) as f:
        f.cert_chain(Product.MILAN)
    assert sleeps == [0.25, 0.5, 1.0]
    kds.fail(500, times=None)
    with (
        fetcher(kds, sleep=Sleeps(), retries=0) as f,
        pytest.raises(
            CollateralUnavailable, match=r"HTTP 500 Internal Server Error; gave up after 1 attempt$"
        ),
    ):
        f.cert_chain(Product.MILAN)


def test_timeout(kds: FakeKds) -> None:
    kds.delay(5.0, times=None)
    with (
        fetcher(kds, timeout=0.2, retries=1) as f,
        pytest.raises(
            CollateralUnavailable, match=r"/vcek/v1/Milan/crl: timed out after 0.2 s; gave up after 2"
        ),
    ):
        f.crl(Product.MILAN)
    assert kds.count() == 2


def test_one_slow_answer_then_success(kds: FakeKds) -> None:
    kds.delay(5.0, times=1)
    sleeps = Sleeps()
    with fetcher(kds, timeout=0.2, retries=1, sleep=sleeps) as f:
        assert f.crl(Product.MILAN)
    assert kds.count() == 2 and len(sleeps) == 1


def test_nothing_listening() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        KdsFetcher(f"http://127.0.0.1:{port}", retries=1, sleep=Sleeps()) as f,
        pytest.raises(CollateralUnavailable, match=r"cert_chain: request failed \(ConnectError"),
    ):
        f.cert_chain(Product.MILAN)


@pytest.mark.parametrize(
    ("call", "path", "kind"),
    [
        ("vcek", "/vcek/v1/Milan/", "a DER certificate"),
        ("cert_chain", "/vcek/v1/Milan/cert_chain", "a PEM certificate chain"),
        ("crl", "/vcek/v1/Milan/crl", "a DER CRL"),
    ],
)
def test_garbage_body(
    kds: FakeKds,
    milan: FakeAmdPki,
    chips: dict[Product, FakeEndorsement],
    tmp_path: Path,
    call: str,
    path: str,
    kind: str,
) -> None:
    """A 200 with a body that is not what the endpoint serves: the source is
    broken, so CollateralUnavailable (not MalformedEvidence: the evidence is
    fine); nothing is cached, the next fetch goes to the network again."""
    kds.garbage(b"<html>maintenance</html>", path=path)
    cache = CollateralCache(tmp_path)
    args: dict[str, tuple[Any, ...]] = {
        "vcek": (milan.report(chips[Product.MILAN]),),
        "cert_chain": (Product.MILAN,),
        "crl": (Product.MILAN,),
    }
    with fetcher(kds, cache=cache) as f:
        with pytest.raises(CollateralUnavailable, match=rf"{path}.*: HTTP 200 but the body is not {kind} \("):
            getattr(f, call)(*args[call])
        assert list(tmp_path.iterdir()) == []
        assert getattr(f, call)(*args[call])
    assert kds.count() == 2


def test_chain_with_one_certificate_is_garbage(kds: FakeKds, milan: FakeAmdPki) -> None:
    kds.garbage(
        milan.cert_chain_pem().split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    )
    with fetcher(kds) as f, pytest.raises(CollateralUnavailable, match=r"expected 2 certificates"):
        f.cert_chain(Product.MILAN)


def test_oversized_body(kds: FakeKds) -> None:
    kds.garbage(bytes(5000))
    with (
        fetcher(kds, max_body=4096) as f,
        pytest.raises(CollateralUnavailable, match=r"larger than 4096 bytes"),
    ):
        f.crl(Product.MILAN)


# --- cache -------------------------------------------------------------------------------------------


def test_cache_hit_avoids_the_network(
    kds: FakeKds, milan: FakeAmdPki, chips: dict[Product, FakeEndorsement], tmp_path: Path
) -> None:
    report = milan.report(chips[Product.MILAN])
    with fetcher(kds, cache=CollateralCache(tmp_path / "c")) as f:
        first = f.collateral(report)
        assert kds.count() == 3
        assert f.collateral(report) == first
        assert kds.count() == 3
    # A new fetcher (another process) on the same directory: still no request.
    with fetcher(kds, cache=CollateralCache(tmp_path / "c")) as f:
        assert f.collateral(report) == first
    assert kds.count() == 3
    files = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert len(files) == 3 and not any(name.startswith(".tmp") for name in files)
    assert oct((tmp_path / "c").stat().st_mode & 0o777) == "0o700"


def test_cache_is_keyed_by_url(kds: FakeKds, tmp_path: Path) -> None:
    cache = CollateralCache(tmp_path)
    with fetcher(kds, cache=cache) as f:
        f.cert_chain(Product.MILAN)
        f.cert_chain(Product.TURIN)
        f.cert_chain(Product.MILAN, SigningKey.VLEK)
    assert kds.count() == 3
    assert cache.get(cert_chain_url(Product.TURIN, base_url=kds.base_url)) is not None
    assert cache.get(cert_chain_url(Product.TURIN)) is None  # another base URL is another key


def test_corrupted_cache_entry_is_fetched_again(kds: FakeKds, tmp_path: Path) -> None:
    cache = CollateralCache(tmp_path)
    url = crl_url(Product.MILAN, base_url=kds.base_url)
    cache.put(url, b"half a CRL")
    with fetcher(kds, cache=cache) as f:
        crl = f.crl(Product.MILAN)
    assert kds.count() == 1 and cache.get(url) == crl


def test_cached_crl_is_refreshed_after_next_update(kds: FakeKds, milan: FakeAmdPki, tmp_path: Path) -> None:
    cache = CollateralCache(tmp_path)
    old = milan.crl(number=1)
    kds.set_crl(Product.MILAN, old)
    next_update = x509.load_der_x509_crl(old).next_update_utc
    assert next_update is not None
    clock = {"now": next_update - timedelta(minutes=1)}
    with fetcher(kds, cache=cache, now=lambda: clock["now"]) as f:
        assert f.crl(Product.MILAN) == old
        assert f.crl(Product.MILAN) == old
        assert kds.count() == 1
        new = milan.crl(number=2, this_update=next_update - timedelta(hours=1))
        kds.set_crl(Product.MILAN, new)
        clock["now"] = next_update + timedelta(seconds=1)
        assert f.crl(Product.MILAN) == new
        assert kds.count() == 2
        assert cache.get(crl_url(Product.MILAN, base_url=kds.base_url)) == new
        # A stale cached CRL is never served when KDS is unreachable.
        clock["now"] = next_update + timedelta(days=30)
        kds.fail(503, times=None)
        with pytest.raises(CollateralUnavailable, match=r"HTTP 503"):
            f.crl(Product.MILAN)


def test_cache_writes_are_atomic(tmp_path: Path) -> None:
    cache = CollateralCache(tmp_path / "c")
    cache.put("https://example/a", b"one")
    path = cache.path("https://example/a")
    inode = path.stat().st_ino
    cache.put("https://example/a", b"two")
    assert cache.get("https://example/a") == b"two"
    assert path.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert sorted(os.listdir(tmp_path / "c")) == [path.name]


# --- certificate table -----------------------------------------------------------------------------


def real_chain() -> tuple[bytes, bytes, bytes]:
    s = sample("milan-v3-oak")
    return s.vcek_der, s.ask_der, der_of(s.ark)


def test_guids_are_pinned_as_bytes() -> None:
    assert VCEK_GUID.bytes == bytes.fromhex("63da758de6644564adc5f4b93be8accd")
    assert VLEK_GUID.bytes == bytes.fromhex("a8074bc2a25a483eaae639c045a0b8a1")
    assert ASK_GUID.bytes == bytes.fromhex("4ab7b379bbac4fe4a02f05aef327c782")
    assert ARK_GUID.bytes == bytes.fromhex("c0b406a4a803495297433fb6014cd0ae")


def test_cert_table_round_trip_with_real_certificates() -> None:
    vcek, ask, ark = real_chain()
    blob = build_cert_table([(VCEK_GUID, vcek), (ASK_GUID, ask), (ARK_GUID, ark)])
    assert blob[:16] == VCEK_GUID.bytes
    assert blob[16:24] == (96).to_bytes(4, "little") + len(vcek).to_bytes(4, "little")
    assert blob[72:96] == bytes(24)  # terminator
    table = parse_cert_table(blob)
    assert (table.vcek, table.ask, table.ark, table.vlek, table.others) == (vcek, ask, ark, None, ())
    assert table.endorsement == vcek
    assert build_cert_table(table.entries()) == blob
    # Hosts hand out page-sized buffers: zero padding after the data is fine.
    assert parse_cert_table(blob + bytes(16384 - len(blob))) == table
    # The certificates from a table verify the real report like any others.
    s = sample("milan-v3-oak")
    assert table.vcek is not None and table.ask is not None
    verify_report(s.report, table.vcek, table.ask, amd_anchors(), VERIFY_AT)


def test_cert_table_vlek_and_unknown_guids() -> None:
    s = sample("milan-v3-vlek-aws-trustee")
    extra = uuid.UUID("ecae0c0f-9502-43b1-afa2-0ae2e0d565b6")
    table = parse_cert_table(
        build_cert_table([(VLEK_GUID, s.vcek_der), (ASK_GUID, s.ask_der), (extra, b"\x01\x02")])
    )
    assert (table.vlek, table.vcek, table.ask) == (s.vcek_der, None, s.ask_der)
    assert table.others == ((extra, b"\x01\x02"),)
    assert table.endorsement == s.vcek_der


def test_empty_cert_table() -> None:
    assert parse_cert_table(b"") == CertTable()
    # An entry of length 0 is an empty slot: no certificate, not an error.
    assert parse_cert_table(entry(VLEK_GUID, 0, 0) + END) == CertTable()
    assert parse_cert_table(bytes(24)) == CertTable()
    assert parse_cert_table(bytes(4096)) == CertTable()


def entry(guid: uuid.UUID, offset: int, length: int) -> bytes:
    return guid.bytes + offset.to_bytes(4, "little") + length.to_bytes(4, "little")


END = bytes(24)
MALFORMED = [
    (
        "no terminator",
        entry(VCEK_GUID, 48, 4) + b"cert",
        r"no terminating all-zero entry within its 28 bytes",
    ),
    ("truncated entry", entry(VCEK_GUID, 48, 4)[:20], r"no terminating all-zero entry"),
    (
        "points into the table",
        entry(VCEK_GUID, 24, 4) + END + b"cert",
        r"entry 0 \(vcek\) starts at 24, inside the 48-byte table",
    ),
    (
        "past the end",
        entry(VCEK_GUID, 48, 5) + END + b"cert",
        r"entry 0 \(vcek\) ends at 53, past the 52 bytes of data",
    ),
    (
        "huge offset",
        entry(ASK_GUID, 0xFFFFFFFF, 0xFFFFFFFF) + END,
        r"entry 0 \(ask\) ends at 8589934590, past",
    ),
    (
        "overlap",
        entry(VCEK_GUID, 72, 8) + entry(ASK_GUID, 76, 8) + END + bytes(12),
        r"entries 0 and 1 overlap",
    ),
    (
        "same range twice",
        entry(VCEK_GUID, 72, 4) + entry(ARK_GUID, 72, 4) + END + b"cert",
        r"entries 0 and 1 overlap",
    ),
    (
        "twice the same GUID",
        entry(ARK_GUID, 72, 2) + entry(ARK_GUID, 74, 2) + END + b"arar",
        r"lists ark twice",
    ),
    (
        "empty slot listed twice",
        entry(VCEK_GUID, 0, 0) + entry(VCEK_GUID, 72, 4) + END + b"cert",
        r"lists vcek twice",
    ),
    (
        "null GUID with a range",
        entry(uuid.UUID(int=0), 48, 4) + END + b"cert",
        r"entry 0 has a null GUID but a range",
    ),
]


@pytest.mark.parametrize(
    ("blob", "message"), [(b, m) for _, b, m in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_cert_tables(blob: bytes, message: str) -> None:
    with pytest.raises(MalformedEvidence, match=message):
        parse_cert_table(blob)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_cert_table_parser_never_raises_anything_else(blob: bytes) -> None:
    try:
        table = parse_cert_table(blob)
    except MalformedEvidence:
        return
    for _, cert in table.entries():
        assert cert and len(cert) <= len(blob)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.uuids(), st.binary(min_size=1, max_size=40)), max_size=6, unique_by=lambda e: e[0])
)
def test_cert_table_round_trip_property(entries: list[tuple[uuid.UUID, bytes]]) -> None:
    entries = [(g, b) for g, b in entries if g.int != 0]
    table = parse_cert_table(build_cert_table(entries))
    assert sorted(table.entries()) == sorted(entries)


def test_kds_chain_parses_like_the_bundled_one(milan: FakeAmdPki) -> None:
    certs = load_pem_chain(milan.cert_chain_pem(), "fake chain")
    assert [c.subject.rfc4514_string().split(",")[-1] for c in certs] == ["CN=SEV-Milan", "CN=ARK-Milan"]
