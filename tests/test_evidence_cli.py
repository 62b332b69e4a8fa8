"""``stockade evidence verify`` on the real SNP vectors (tests/data)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

VECTORS = Path(__file__).parent / "data" / "vectors" / "snp"
SAMPLES = sorted(p.parent.name for p in VECTORS.glob("*/report.bin"))
AT = "2025-08-01T00:00:00Z"  # inside every sample's certificate validity


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stockade", "evidence", "verify", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("sample", SAMPLES)
def test_every_real_snp_vector_verifies_through_the_cli(sample: str) -> None:
    d = VECTORS / sample
    expected = json.loads((d / "expected.json").read_text())
    proc = run(str(d / "report.bin"), "--certs", str(d), "--at", AT, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["platform"] == "snp"
    assert doc["product"] == expected["product"]
    assert doc["signer"] == expected["endorsement_key"]
    assert doc["measurement"] == expected["fields"]["measurement"]
    assert doc["report_data"] == expected["fields"]["report_data"]
    assert doc["debug"] is (sample == "milan-v2-go-sev-guest")


def test_human_output_is_a_table() -> None:
    d = VECTORS / "milan-v3-oak"
    proc = run(str(d / "report.bin"), "--certs", str(d), "--at", AT)
    assert proc.returncode == 0
    assert "Milan" in proc.stdout and "ECDSA P-384" in proc.stdout


def test_expired_vlek_is_refused_with_exit_110() -> None:
    d = VECTORS / "milan-v3-vlek-aws-trustee"
    proc = run(str(d / "report.bin"), "--certs", str(d), "--at", "2026-06-01T00:00:00Z")
    assert proc.returncode == 110
    assert "expired" in proc.stderr and "Traceback" not in proc.stderr


def test_flipped_byte_is_refused(tmp_path: Path) -> None:
    d = VECTORS / "milan-v3-oak"
    data = bytearray((d / "report.bin").read_bytes())
    data[0x90] ^= 1  # measurement
    bad = tmp_path / "report.bin"
    bad.write_bytes(bytes(data))
    proc = run(str(bad), "--certs", str(d), "--at", AT, "--json")
    assert proc.returncode == 110
    assert json.loads(proc.stdout)["error"]["type"] == "verification-failed"


def test_garbage_is_malformed_evidence(tmp_path: Path) -> None:
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"hello")
    proc = run(str(bad))
    assert proc.returncode == 111
    assert proc.stderr.startswith("stockade: malformed evidence:")


def test_missing_certificates_is_a_usage_error(tmp_path: Path) -> None:
    lonely = tmp_path / "report.bin"
    lonely.write_bytes((VECTORS / "milan-v3-oak" / "report.bin").read_bytes())
    proc = run(str(lonely))
    assert proc.returncode == 2
    assert "--certs" in proc.stderr


def test_bad_time_is_a_usage_error() -> None:
    d = VECTORS / "milan-v3-oak"
    proc = run(str(d / "report.bin"), "--certs", str(d), "--at", "yesterday")
    assert proc.returncode == 2
    assert "ISO 8601" in proc.stderr


# --------------------------------------------------------------------------- Intel

INTEL = [s for s in __import__("intel_support").samples() if s.has_collateral]


@pytest.mark.parametrize("sample", INTEL, ids=lambda s: f"{s.tee}/{s.name}")
def test_every_intel_vector_with_collateral_through_the_cli(sample) -> None:
    args = [str(sample.path / "quote.bin"), "--at", sample.verify_at.isoformat(), "--json"]
    if not sample.has_crls:
        args.append("--no-revocation-check")
    if sample.trailing_nonzero:
        args.append("--allow-trailing-bytes")
    proc = run(*args)
    if sample.expect_not_supported:
        assert proc.returncode == 110, proc.stdout
        assert "not supported" in json.loads(proc.stdout)["error"]["detail"]
        return
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["platform"] == sample.tee
    assert doc["tcb_status"] == sample.overall


def test_trailing_bytes_are_refused_without_the_flag() -> None:
    sample = next(s for s in INTEL if s.trailing_nonzero)
    proc = run(str(sample.path / "quote.bin"), "--at", sample.verify_at.isoformat())
    assert proc.returncode == 111
    assert "trailing" in proc.stderr


def test_missing_crls_are_collateral_unavailable() -> None:
    sample = next(s for s in INTEL if not s.has_crls)
    proc = run(str(sample.path / "quote.bin"), "--at", sample.verify_at.isoformat())
    assert proc.returncode == 114
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- revocation, every platform


def test_revocation_require_applies_to_snp_too() -> None:
    """--revocation means the same on every platform: an SNP report without
    a CRL of its root is refused (114) when CRLs are required."""
    d = VECTORS / SAMPLES[0]
    proc = run(str(d / "report.bin"), "--certs", str(d), "--at", AT, "--revocation", "require", "--json")
    assert proc.returncode == 114, proc.stdout + proc.stderr
    assert "no CRL issued by" in json.loads(proc.stdout)["error"]["detail"]
    ok = run(str(d / "report.bin"), "--certs", str(d), "--at", AT, "--json")
    assert ok.returncode == 0
    assert "revocation NOT checked (no CRL given)" in json.loads(ok.stdout)["checks"]


def test_revocation_skip_on_intel_is_reported() -> None:
    sample = next(s for s in INTEL if s.has_crls and not s.expect_not_supported and not s.trailing_nonzero)
    args = [str(sample.path / "quote.bin"), "--at", sample.verify_at.isoformat(), "--json"]
    checked = json.loads(run(*args).stdout)["checks"]
    assert "root CA and PCK CRLs: signature, validity, revocation" in checked
    proc = run(*args, "--revocation", "skip")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "revocation NOT checked (--revocation skip)" in json.loads(proc.stdout)["checks"]


def test_contradicting_revocation_flags_are_a_usage_error() -> None:
    d = VECTORS / SAMPLES[0]
    proc = run(str(d / "report.bin"), "--certs", str(d), "--revocation", "require", "--no-revocation-check")
    assert proc.returncode == 2 and "contradicts" in proc.stderr
