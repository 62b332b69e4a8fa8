"""Every parse error of collateral is a stockade error, on every platform.

Issue 13 item 7: a CRL with a bad version field made ``stockade evidence
verify`` of a TDX quote end in a Python traceback and exit 1. Here every
collateral file kind of real vectors (tests/data/vectors) is corrupted in
several ways (bad version in the DER, truncated DER, garbage, garbage PEM,
bad dates, JSON that is not JSON, has wrong types or misses keys) and
verified through the library and through the CLI (`stockade evidence
verify`, in-process and, for a few, as a subprocess): the outcome is always
MalformedEvidence (exit 111), CollateralUnavailable (114) for a missing
file, or VerificationFailed (110) where the mutation leaves the bytes
parseable but changes signed content; the CLI prints one line and no
traceback.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evidence_support import VECTORS
from intel_support import shared_pck, shared_pki
from stockade.cli import main
from stockade.commands._files import verify_file
from stockade.errors import (
    CollateralUnavailable,
    MalformedEvidence,
    StockadeError,
    UsageError,
    VerificationFailed,
)
from stockade.evidence.intel.verify import Collateral, verify_quote

pytestmark = pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")

# --- mutations ---------------------------------------------------------------------


def _pem_blocks(pem: bytes) -> list[tuple[bytes, bytes]]:
    """(label, DER) of each PEM block."""
    out = []
    for part in pem.split(b"-----BEGIN ")[1:]:
        label, rest = part.split(b"-----", 1)
        body = rest.split(b"-----END", 1)[0]
        out.append((label, base64.b64decode(b"".join(body.split()))))
    return out


def _pem(label: bytes, der: bytes) -> bytes:
    b64 = base64.encodebytes(der).replace(b"\n", b"")
    lines = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return b"-----BEGIN " + label + b"-----\n" + lines + b"\n-----END " + label + b"-----\n"


def der_bad_version(der: bytes) -> bytes:
    """The version INTEGER of the TBS part set to 5: a CRL's ``02 01 01``,
    a certificate's ``a0 03 02 01 02``."""
    buf = bytearray(der)
    cert = buf.find(b"\xa0\x03\x02\x01")
    if 0 <= cert < 16:
        buf[cert + 4] = 5
        return bytes(buf)
    crl = buf.find(b"\x02\x01\x01")
    assert 0 <= crl < 16, "no TBS version near the start"
    buf[crl + 2] = 5
    return bytes(buf)


def der_bad_date(der: bytes) -> bytes:
    """The first UTCTime's month set to 13."""
    buf = bytearray(der)
    at = buf.find(b"\x17\x0d")
    assert at > 0, "no UTCTime"
    buf[at + 4 : at + 6] = b"13"
    return bytes(buf)


def der_bad_length(der: bytes) -> bytes:
    """The outer SEQUENCE claims more content than there is."""
    buf = bytearray(der)
    assert buf[1] == 0x82, "expected a two-byte length"
    buf[2] = 0x7F
    return bytes(buf)


DER_MUTATIONS: dict[str, Callable[[bytes], bytes]] = {
    "bad-version": der_bad_version,
    "bad-date": der_bad_date,
    "bad-length": der_bad_length,
    "truncated": lambda d: d[: len(d) // 2],
    "one-byte": lambda d: d[:1],
    "empty": lambda d: b"",
    "garbage": lambda d: b"this is not DER at all\n" * 3,
    "trailing-junk": lambda d: d + b"\x00junk",
    "garbage-pem": lambda d: b"-----BEGIN X509 CRL-----\n@@@not base64@@@\n-----END X509 CRL-----\n",
    "pem-of-garbage": lambda d: _pem(b"X509 CRL", b"\x30\x03\x02\x01\x01"),
}


def _pem_first(mutate: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    def apply(pem: bytes) -> bytes:
        blocks = _pem_blocks(pem)
        label, der = blocks[0]
        return _pem(label, mutate(der)) + b"".join(_pem(lb, d) for lb, d in blocks[1:])

    return apply


PEM_MUTATIONS: dict[str, Callable[[bytes], bytes]] = {
    "cert-bad-version": _pem_first(der_bad_version),
    "cert-bad-date": _pem_first(der_bad_date),
    "cert-truncated": _pem_first(lambda d: d[: len(d) // 2]),
    "truncated-text": lambda p: p[: len(p) // 4],  # inside the first certificate
    "empty": lambda p: b"",
    "garbage": lambda p: b"no PEM here\n",
    "bad-base64": lambda p: b"-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n",
    "binary": lambda p: bytes(range(256)),
}


def _json_edit(edit: Callable[[dict[str, Any]], Any]) -> Callable[[bytes], bytes]:
    def apply(body: bytes) -> bytes:
        doc = json.loads(body)
        result = edit(doc)
        return json.dumps(doc if result is None else result).encode()

    return apply


def _inner(doc: dict[str, Any]) -> dict[str, Any]:
    return next(v for k, v in doc.items() if k != "signature")


JSON_MUTATIONS: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda b: b"",
    "not-json": lambda b: b"<html>502 Bad Gateway</html>",
    "truncated": lambda b: b[: len(b) // 2],
    "not-ascii": lambda b: b.replace(b"{", "{\u00e9".encode(), 1),
    "array": lambda b: b"[" + b + b"]",
    "deep-nesting": lambda b: b"[" * 100_000 + b"]" * 100_000,
    "trailing-data": lambda b: b + b"{}",
    "nan": lambda b: b'{"tcbInfo": NaN, "signature": "00"}',
    "no-signature": _json_edit(lambda d: d.pop("signature") and None),
    "signature-number": _json_edit(lambda d: d.update(signature=12)),
    "signature-bad-hex": _json_edit(lambda d: d.update(signature="zz" * 64)),
    "signature-short": _json_edit(lambda d: d.update(signature="00" * 10)),
    "extra-key": _json_edit(lambda d: d.update(extra=1)),
    "inner-not-object": _json_edit(lambda d: {k: ([] if k != "signature" else v) for k, v in d.items()}),
    # the signed inner object changed: parseable, the signature no longer holds (110)
    "inner-version-string": _json_edit(lambda d: _inner(d).update(version="3")),
    "inner-missing-levels": _json_edit(lambda d: _inner(d).pop("tcbLevels") and None),
    "inner-bad-date": _json_edit(lambda d: _inner(d).update(nextUpdate="2025-13-45T00:00:00Z")),
}
SIGNED_CONTENT = {"inner-version-string", "inner-missing-levels", "inner-bad-date"}

# --- the samples -------------------------------------------------------------------

TDX = VECTORS / "tdx" / "v4-50806f-trustee"
TDX_AT = "2023-06-19T00:00:00Z"
SGX = VECTORS / "sgx" / "v3-00a067-dcap-qvl"
SGX_AT = "2025-06-20T00:00:00Z"
SNP = VECTORS / "snp" / "milan-v3-oak"
SNP_AT = "2025-08-01T00:00:00Z"

INTEL_FILES = {
    "pck_crl.der": DER_MUTATIONS,
    "root_ca_crl.der": DER_MUTATIONS,
    "tcb_signing_chain.pem": PEM_MUTATIONS,
    "tcb_info.json": JSON_MUTATIONS,
    "qe_identity.json": JSON_MUTATIONS,
}
INTEL_REQUIRED = ("tcb_info.json", "qe_identity.json", "tcb_signing_chain.pem")


def _snp_crl() -> bytes:
    """A well-formed DER CRL naming the Milan ARK as issuer (signed by another
    key, so it parses and then fails its signature check)."""
    ark = x509.load_pem_x509_certificates((SNP / "ask_ark.pem").read_bytes())[-1]
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime(2025, 7, 1, tzinfo=UTC)
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ark.subject)
        .last_update(now)
        .next_update(now + timedelta(days=30))
        .sign(key, hashes.SHA384(), rsa_padding=padding.PSS(padding.MGF1(hashes.SHA384()), 48))
        .public_bytes(serialization.Encoding.DER)
    )


SNP_FILES: dict[str, dict[str, Callable[[bytes], bytes]]] = {
    "vcek.der": DER_MUTATIONS,
    "ask_ark.pem": PEM_MUTATIONS,
    "ask.der": DER_MUTATIONS,  # used instead of ask_ark.pem when that is absent
    "ark.crl": DER_MUTATIONS,
}


def _expected(mutation: str) -> tuple[int, ...]:
    if mutation in SIGNED_CONTENT:
        return (VerificationFailed.exit_code,)
    return (MalformedEvidence.exit_code,)


def _cases() -> list[tuple[str, str, str]]:
    out = []
    for platform, files in (("tdx", INTEL_FILES), ("sgx", INTEL_FILES), ("snp", SNP_FILES)):
        for name, mutations in files.items():
            out.extend((platform, name, m) for m in mutations)
    return out


CASES = _cases()


def _sample(platform: str) -> tuple[Path, str]:
    return {"tdx": (TDX, TDX_AT), "sgx": (SGX, SGX_AT), "snp": (SNP, SNP_AT)}[platform]


def _copy(platform: str, tmp: Path) -> tuple[Path, Path, str]:
    """(evidence file, the directory of the collateral, --at) in a copy."""
    src, at = _sample(platform)
    dst = tmp / platform
    shutil.copytree(src, dst)
    if platform == "snp":
        (dst / "ark.crl").write_bytes(_snp_crl())
        return dst / "report.bin", dst, at
    return dst / "quote.bin", dst / "collateral", at


def _mutate(platform: str, name: str, mutation: str, tmp: Path) -> tuple[Path, str]:
    evidence, coll, at = _copy(platform, tmp)
    files = SNP_FILES if platform == "snp" else INTEL_FILES
    path = coll / name
    if name == "ask.der":
        pem = coll / "ask_ark.pem"
        path.write_bytes(_pem_blocks(pem.read_bytes())[0][1])
        pem.unlink()
    path.write_bytes(files[name][mutation](path.read_bytes()))
    return evidence, at


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _cli_args(evidence: Path, at: str) -> list[str]:
    return ["evidence", "verify", str(evidence), "--at", at]


def _assert_one_line(stderr: str) -> None:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stockade: "), stderr


# --- the baselines: each unmutated sample verifies (SNP: its CRL is not AMD's) ---------


@pytest.mark.parametrize("platform", ["tdx", "sgx", "snp"])
def test_unmutated_samples(platform: str, tmp_path: Path) -> None:
    evidence, coll, at = _copy(platform, tmp_path)
    if platform == "snp":
        with pytest.raises(VerificationFailed, match="CRL signature does not verify"):
            verify_file(evidence, _at(at))
        (coll / "ark.crl").unlink()
    assert verify_file(evidence, _at(at)).claims.platform == platform


# --- library and in-process CLI, every case ------------------------------------------


@pytest.mark.parametrize(("platform", "name", "mutation"), CASES)
def test_library_gives_a_stockade_error(platform: str, name: str, mutation: str, tmp_path: Path) -> None:
    evidence, at = _mutate(platform, name, mutation, tmp_path)
    with pytest.raises(StockadeError) as info:
        verify_file(evidence, _at(at))
    assert info.value.exit_code in _expected(mutation), info.value
    assert "\n" not in info.value.detail


@pytest.mark.parametrize(("platform", "name", "mutation"), CASES)
def test_cli_exits_with_the_code_and_one_line(
    platform: str, name: str, mutation: str, tmp_path: Path
) -> None:
    evidence, at = _mutate(platform, name, mutation, tmp_path)
    result = CliRunner().invoke(main, _cli_args(evidence, at))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in _expected(mutation), result.stderr
    _assert_one_line(result.stderr)


@pytest.mark.parametrize("platform", ["tdx", "sgx"])
@pytest.mark.parametrize("name", ["pck_crl.der", "root_ca_crl.der", *INTEL_REQUIRED])
def test_missing_intel_collateral_is_unavailable(platform: str, name: str, tmp_path: Path) -> None:
    evidence, coll, at = _copy(platform, tmp_path)
    (coll / name).unlink()
    result = CliRunner().invoke(main, _cli_args(evidence, at))
    assert result.exit_code == CollateralUnavailable.exit_code, result.stderr
    _assert_one_line(result.stderr)
    named = {"pck_crl.der": "no PCK CRL", "root_ca_crl.der": "no root CA CRL"}.get(name, f"has no {name}")
    assert named in result.stderr


def test_the_unused_pck_crl_issuer_chain_is_not_parsed(tmp_path: Path) -> None:
    """The PCK CRL is checked with the PCK CA of the quote's chain; the
    issuer chain file is kept, never trusted, so its content does not matter."""
    evidence, coll, at = _copy("tdx", tmp_path)
    (coll / "pck_crl_issuer_chain.pem").write_bytes(b"garbage")
    assert verify_file(evidence, _at(at)).claims.platform == "tdx"


def test_ask_der_alone_verifies(tmp_path: Path) -> None:
    evidence, coll, at = _copy("snp", tmp_path)
    (coll / "ark.crl").unlink()
    (coll / "ask.der").write_bytes(_pem_blocks((coll / "ask_ark.pem").read_bytes())[0][1])
    (coll / "ask_ark.pem").unlink()
    assert verify_file(evidence, _at(at)).claims.platform == "snp"


@pytest.mark.parametrize(
    "mutation", ["cert-bad-version", "cert-bad-date", "cert-truncated", "truncated-text", "bad-base64"]
)
def test_a_malformed_sim_root_is_a_usage_error(mutation: str, tmp_path: Path) -> None:
    """A PEM sim root that does not parse is a bad local input file given on
    the command line (`--sim-root`): a usage error naming the file and what
    was expected, like every other `--sim-root` defect (read_sim_root)."""
    evidence, coll, at = _copy("snp", tmp_path)
    (coll / "ark.crl").unlink()
    ark = _pem_blocks((coll / "ask_ark.pem").read_bytes())[-1][1]
    root = tmp_path / "sim_root.pem"
    root.write_bytes(PEM_MUTATIONS[mutation](_pem(b"CERTIFICATE", ark)))
    assert root.read_bytes().startswith(b"-----")
    with pytest.raises(UsageError, match=r"--sim-root .*: .*expected the sim root certificate"):
        verify_file(evidence, _at(at), sim_root=root)


# --- as a subprocess: the reported case and one per platform ---------------------------


@pytest.mark.parametrize(
    ("platform", "name", "mutation"),
    [
        ("tdx", "pck_crl.der", "bad-version"),  # the finding of issue 13
        ("tdx", "root_ca_crl.der", "bad-version"),
        ("sgx", "tcb_signing_chain.pem", "cert-bad-version"),
        ("sgx", "qe_identity.json", "deep-nesting"),
        ("snp", "ark.crl", "bad-version"),
        ("snp", "ask_ark.pem", "cert-bad-version"),
    ],
)
def test_cli_subprocess(platform: str, name: str, mutation: str, tmp_path: Path) -> None:
    evidence, at = _mutate(platform, name, mutation, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "stockade", *_cli_args(evidence, at)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == MalformedEvidence.exit_code, proc.stderr
    _assert_one_line(proc.stderr)
    proc = subprocess.run(
        [sys.executable, "-m", "stockade", *_cli_args(evidence, at), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == MalformedEvidence.exit_code
    assert json.loads(proc.stdout)["error"]["type"] == "malformed-evidence"
    assert "Traceback" not in proc.stderr


# --- signed (fake PKI) collateral whose content is wrong: the parser is reached --------


def _fake_case() -> tuple[bytes, Collateral, datetime]:
    pki, pck = shared_pki(), shared_pck()
    return pki.quote("tdx", pck), pki.collateral("tdx", pck), pki.now


@pytest.mark.parametrize(
    ("which", "edit"),
    [
        ("tcb", lambda i: i.update(version="3")),
        ("tcb", lambda i: i.pop("fmspc")),
        ("tcb", lambda i: i.update(issueDate="2026-02-30T00:00:00Z")),
        ("tcb", lambda i: i.update(nextUpdate=20260101)),
        ("tcb", lambda i: i.update(fmspc="zzzzzzzzzzzz")),
        ("tcb", lambda i: i.update(tcbLevels={"not": "a list"})),
        ("tcb", lambda i: i["tcbLevels"][0].update(tcb=[1, 2])),
        ("tcb", lambda i: i["tcbLevels"][0]["tcb"].update(sgxtcbcomponents=[{"svn": -1}] * 16)),
        ("tcb", lambda i: i["tdxModuleIdentities"][0].update(tcbLevels=[None])),
        ("qe", lambda i: i.update(isvprodid=None)),
        ("qe", lambda i: i.pop("mrsigner")),
        ("qe", lambda i: i.update(miscselect="0000")),
        ("qe", lambda i: i["tcbLevels"][0].update(tcbDate="yesterday")),
        ("qe", lambda i: i["tcbLevels"][0].update(tcbStatus=7)),
    ],
)
def test_signed_collateral_with_wrong_content_is_malformed(which: str, edit: Callable[[Any], Any]) -> None:
    pki, pck = shared_pki(), shared_pck()
    quote, _, now = _fake_case()
    info, qe = pki.tcb_info_json("tdx", pck.spec), pki.qe_identity_json("tdx")
    edit(info if which == "tcb" else qe)
    collateral = pki.collateral("tdx", pck, tcb_info=info, qe_identity=qe)
    with pytest.raises(MalformedEvidence):
        verify_quote(quote, collateral, now, root_der=pki.root_der)


# --- random bytes in place of each collateral file (bounded) --------------------------

_FIELDS = ("tcb_info", "qe_identity", "tcb_signing_chain", "root_ca_crl", "pck_crl")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from(_FIELDS),
    data=st.one_of(
        st.binary(max_size=600),
        st.builds(lambda b: b"-----BEGIN X509 CRL-----\n" + b + b"\n-----END X509 CRL-----\n", st.binary()),
        st.builds(lambda b: b"\x30\x82" + b, st.binary(max_size=300)),
        st.builds(lambda t: t.encode(), st.text(alphabet='{}[]":,0123456789abcdefTZ-tcbInfo', max_size=200)),
    ),
)
def test_random_collateral_bytes_give_stockade_errors(field: str, data: bytes) -> None:
    quote, collateral, now = _fake_case()
    with pytest.raises(StockadeError):
        verify_quote(quote, replace(collateral, **{field: data}), now, root_der=shared_pki().root_der)


@settings(max_examples=40, deadline=None)
@given(pos=st.integers(min_value=0), mask=st.integers(min_value=1, max_value=255))
def test_byte_flips_in_a_crl_give_stockade_errors_or_pass(pos: int, mask: int) -> None:
    """A flipped byte of the PCK CRL: refused with a stockade error (or, where
    the flip is in a byte pyca does not read, the CRL's signature catches it)."""
    quote, collateral, now = _fake_case()
    crl = bytearray(collateral.pck_crl or b"")
    crl[pos % len(crl)] ^= mask
    with pytest.raises(StockadeError):
        verify_quote(quote, replace(collateral, pck_crl=bytes(crl)), now, root_der=shared_pki().root_der)
