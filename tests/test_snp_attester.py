"""The snp attester against fake kernel interfaces (stockade.testing.configfs).

No SEV-SNP hardware here: configfs-tsm is a fake kernel over a temporary
tree, /dev/sev-guest a fake ioctl that reads and writes the request
structures at the addresses the attester put in them. Reports are signed by
the sim chip, so the happy paths end in the real verifier.
"""

from __future__ import annotations

import errno
import hashlib
import struct
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stockade.errors import MalformedEvidence
from stockade.evidence.sim.chip import SimChip, load_chip
from stockade.evidence.snp import attester as snp
from stockade.evidence.snp.abi import AttestationReport, Product
from stockade.evidence.snp.attester import SnpAttester, SnpGuestError
from stockade.evidence.snp.certtable import VCEK_GUID, build_cert_table
from stockade.evidence.snp.verify import TrustAnchor, verify_report
from stockade.evidence.tsm import OsConfigfs
from stockade.testing.configfs import FakeSevGuest, FakeTsm, encode_cert_table, sim_signer
from stockade.wire.evidence import EvidenceBundle

REPORT_DATA = hashlib.sha512(b"nonce and key").digest()


@pytest.fixture(scope="module")
def chip(state_dir: Path) -> SimChip:
    return load_chip(state_dir)


@pytest.fixture
def tsm(tmp_path: Path, chip: SimChip) -> FakeTsm:
    return FakeTsm(root=tmp_path / "config" / "tsm" / "report", sign=sim_signer(chip))


@pytest.fixture
def device(tmp_path: Path) -> Path:
    path = tmp_path / "dev" / "sev-guest"
    path.parent.mkdir()
    path.write_bytes(b"")  # a regular file: open() works, the fake does the ioctl
    return path


def attester(tsm: FakeTsm, tmp_path: Path, **kw: object) -> SnpAttester:
    return SnpAttester(tsm_root=tsm.root, device=tmp_path / "no-sev-guest", fs=tsm, **kw)  # type: ignore[arg-type]


def verified(bundle: EvidenceBundle, chip: SimChip):
    vcek, ask = bundle.cert("vcek"), bundle.cert("ask")
    assert vcek is not None and ask is not None
    anchor = TrustAnchor("sim", Product.MILAN, chip.ark_der)
    return verify_report(bundle.report, vcek, ask, [anchor], datetime.now(UTC)).claims


# --- configfs-tsm --------------------------------------------------------------------


def test_configfs_happy_path_verifies_and_binds_report_data(
    tsm: FakeTsm, tmp_path: Path, chip: SimChip
) -> None:
    a = attester(tsm, tmp_path)
    bundle = a.evidence(REPORT_DATA)
    assert a.interface == "configfs-tsm"
    assert bundle.platform == "snp"
    assert [name for name, _ in bundle.certs] == ["ark", "ask", "vcek"]
    assert bundle.cert("ark") == chip.ark_der
    claims = verified(bundle, chip)
    assert claims.report_data == REPORT_DATA
    assert claims.platform == "sim"
    ops = [(op, name) for op, name in tsm.log if op != "mkdir" and op != "rmdir"]
    assert ops == [
        ("read", "provider"),
        ("read", "generation"),
        ("write", "inblob"),
        ("read", "outblob"),
        ("read", "auxblob"),
        ("read", "generation"),
    ]
    assert [op for op, _ in tsm.log].count("mkdir") == 1
    assert tsm.log[-1][0] == "rmdir"
    assert tsm.live_entries() == []


def test_configfs_each_request_gets_a_fresh_entry(tsm: FakeTsm, tmp_path: Path, chip: SimChip) -> None:
    a = attester(tsm, tmp_path)
    first, second = a.evidence(REPORT_DATA), a.evidence(bytes(64))
    assert verified(second, chip).report_data == bytes(64)
    assert first.report != second.report
    created = [name for op, name in tsm.log if op == "mkdir"]
    assert len(set(created)) == 2
    assert tsm.live_entries() == []


def test_configfs_vmpl_is_written_to_privlevel(tsm: FakeTsm, tmp_path: Path, chip: SimChip) -> None:
    bundle = attester(tsm, tmp_path, vmpl=2).evidence(REPORT_DATA)
    assert ("write", "privlevel") in tsm.log
    assert verified(bundle, chip).vmpl == 2


def test_configfs_privlevel_below_floor_is_refused(tsm: FakeTsm, tmp_path: Path) -> None:
    tsm.privlevel_floor = 1
    with pytest.raises(SnpGuestError, match=r"privlevel failed: .*errno 22"):
        attester(tsm, tmp_path, vmpl=0).evidence(REPORT_DATA)
    assert tsm.live_entries() == []


def test_configfs_provider_mismatch(tsm: FakeTsm, tmp_path: Path) -> None:
    tsm.provider = "tdx_guest"
    with pytest.raises(SnpGuestError, match=r"provider is 'tdx_guest', not 'sev_guest'"):
        attester(tsm, tmp_path).evidence(REPORT_DATA)
    assert ("write", "inblob") not in tsm.log
    assert tsm.live_entries() == []


def test_configfs_generation_changed_once_is_retried(tsm: FakeTsm, tmp_path: Path, chip: SimChip) -> None:
    tsm.conflicts = 1
    bundle = attester(tsm, tmp_path).evidence(REPORT_DATA)
    assert verified(bundle, chip).report_data == REPORT_DATA
    assert [op for op, _ in tsm.log].count("mkdir") == 2
    assert tsm.live_entries() == []


def test_configfs_generation_always_changing_is_refused(tsm: FakeTsm, tmp_path: Path) -> None:
    tsm.conflicts = 100
    with pytest.raises(SnpGuestError, match=r"during each of 3 attempts \(last: generation 2, expected 1\)"):
        attester(tsm, tmp_path).evidence(REPORT_DATA)
    assert [op for op, _ in tsm.log].count("mkdir") == 3
    assert tsm.live_entries() == []


def test_configfs_missing_outblob(tsm: FakeTsm, tmp_path: Path) -> None:
    tsm.omit = frozenset({"outblob"})
    with pytest.raises(SnpGuestError, match=r"outblob does not exist"):
        attester(tsm, tmp_path).evidence(REPORT_DATA)
    assert tsm.live_entries() == []


@pytest.mark.parametrize("cut", [1, 0x2A0, 0x4A0])
def test_configfs_short_outblob(tsm: FakeTsm, tmp_path: Path, cut: int) -> None:
    tsm.outblob_hook = lambda report: report[:-cut]
    with pytest.raises(
        MalformedEvidence, match=rf"configfs-tsm returned {0x4A0 - cut} bytes, an SNP report has 1184"
    ):
        attester(tsm, tmp_path).evidence(REPORT_DATA)


def test_configfs_report_for_other_report_data_is_refused(
    tsm: FakeTsm, tmp_path: Path, chip: SimChip
) -> None:
    other = sim_signer(chip)(bytes(64), 0)[0]
    tsm.outblob_hook = lambda _report: other
    with pytest.raises(MalformedEvidence, match="report for other report data"):
        attester(tsm, tmp_path).evidence(REPORT_DATA)


def test_configfs_garbage_outblob_is_malformed(tsm: FakeTsm, tmp_path: Path) -> None:
    tsm.outblob_hook = lambda report: b"\xff" * len(report)
    with pytest.raises(MalformedEvidence, match="unsupported SNP report version"):
        attester(tsm, tmp_path).evidence(REPORT_DATA)


def test_configfs_without_certificates(tsm: FakeTsm, tmp_path: Path) -> None:
    tsm.auxblob_hook = lambda _aux: b""
    assert attester(tsm, tmp_path).evidence(REPORT_DATA).certs == ()
    tsm.omit = frozenset({"auxblob"})
    assert attester(tsm, tmp_path).evidence(REPORT_DATA).certs == ()


def test_configfs_truncated_certificate_table(tsm: FakeTsm, tmp_path: Path) -> None:
    tsm.auxblob_hook = lambda aux: aux[:-1]
    with pytest.raises(MalformedEvidence, match="past the"):
        attester(tsm, tmp_path).evidence(REPORT_DATA)


def test_configfs_unusable_falls_back_to_the_device(tsm: FakeTsm, device: Path, chip: SimChip) -> None:
    tsm.mkdir_errno = errno.EACCES
    fake = FakeSevGuest(sign=sim_signer(chip))
    a = SnpAttester(tsm_root=tsm.root, device=device, fs=tsm, ioctl=fake.ioctl)
    bundle = a.evidence(REPORT_DATA)
    assert a.interface == str(device)
    assert verified(bundle, chip).report_data == REPORT_DATA
    assert [c[0] for c in fake.calls] == [snp.SNP_GET_EXT_REPORT]


def test_configfs_unusable_and_no_device(tsm: FakeTsm, tmp_path: Path) -> None:
    tsm.mkdir_errno = errno.EACCES
    with pytest.raises(SnpGuestError) as info:
        attester(tsm, tmp_path).evidence(REPORT_DATA)
    assert "Permission denied" in str(info.value)
    assert "no-sev-guest does not exist" in str(info.value)


def test_neither_interface_exists(tmp_path: Path) -> None:
    a = SnpAttester(tsm_root=tmp_path / "tsm" / "report", device=tmp_path / "sev-guest")
    with pytest.raises(SnpGuestError) as info:
        a.evidence(REPORT_DATA)
    message = str(info.value)
    assert f"{tmp_path / 'tsm' / 'report'} does not exist" in message
    assert f"{tmp_path / 'sev-guest'} does not exist" in message
    assert info.value.exit_code == 1


def test_report_data_must_be_64_bytes(tsm: FakeTsm, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        attester(tsm, tmp_path).evidence(bytes(32))
    assert tsm.log == []


def test_real_file_operations_do_not_create_missing_attributes(tmp_path: Path) -> None:
    ops = OsConfigfs()
    with pytest.raises(FileNotFoundError):
        ops.write(tmp_path / "privlevel", b"0\n")
    assert not (tmp_path / "privlevel").exists()
    (tmp_path / "outblob").write_bytes(b"x" * 100_000)
    assert ops.read(tmp_path / "outblob") == b"x" * 100_000


# --- /dev/sev-guest ------------------------------------------------------------------


def device_attester(device: Path, fake: FakeSevGuest, **kw: object) -> SnpAttester:
    return SnpAttester(tsm_root=device.parent / "no-tsm", device=device, ioctl=fake.ioctl, **kw)  # type: ignore[arg-type]


def test_device_happy_path(device: Path, chip: SimChip) -> None:
    fake = FakeSevGuest(sign=sim_signer(chip))
    bundle = device_attester(device, fake, vmpl=1).evidence(REPORT_DATA)
    claims = verified(bundle, chip)
    assert claims.report_data == REPORT_DATA
    assert claims.vmpl == 1
    assert fake.calls == [(snp.SNP_GET_EXT_REPORT, 1, snp.CERTS_BUFFER_SIZE)]
    assert [name for name, _ in bundle.certs] == ["ark", "ask", "vcek"]


def test_device_host_without_certificates(device: Path, chip: SimChip) -> None:
    fake = FakeSevGuest(sign=sim_signer(chip), certs=False)
    assert device_attester(device, fake).evidence(REPORT_DATA).certs == ()


def test_device_plain_report_request(device: Path, chip: SimChip) -> None:
    fake = FakeSevGuest(sign=sim_signer(chip))
    bundle = device_attester(device, fake, certificates=False).evidence(REPORT_DATA)
    assert fake.calls == [(snp.SNP_GET_REPORT, 0, 0)]
    assert bundle.certs == ()
    assert AttestationReport.from_bytes(bundle.report).report_data == REPORT_DATA


def test_device_firmware_status(device: Path, chip: SimChip) -> None:
    fake = FakeSevGuest(sign=sim_signer(chip), status=0x16)
    with pytest.raises(SnpGuestError, match=r"status 0x16 \(INVALID_PARAM\)"):
        device_attester(device, fake).evidence(REPORT_DATA)


def test_device_ioctl_failure_names_errors(device: Path, chip: SimChip) -> None:
    fake = FakeSevGuest(sign=sim_signer(chip), fail_errno=errno.EIO, fw_error=0x27)
    with pytest.raises(
        SnpGuestError, match=r"SNP_GET_EXT_REPORT on .* failed: .*errno 5, firmware error 0x27"
    ):
        device_attester(device, fake).evidence(REPORT_DATA)
    assert len(fake.calls) == 1  # never retried: the driver may have wiped the VMPCK


def test_device_certificates_too_large(device: Path, chip: SimChip) -> None:
    fake = FakeSevGuest(sign=sim_signer(chip), needed_certs_len=0x5000)
    with pytest.raises(SnpGuestError, match=r"need 20480 bytes, more than the driver's maximum of 16384"):
        device_attester(device, fake).evidence(REPORT_DATA)


def test_device_that_cannot_be_opened(tmp_path: Path, chip: SimChip) -> None:
    path = tmp_path / "sev-guest"
    path.mkdir()  # exists, but open(O_RDWR) fails with EISDIR
    fake = FakeSevGuest(sign=sim_signer(chip))
    with pytest.raises(SnpGuestError, match=r"cannot open .*sev-guest"):
        device_attester(path, fake).evidence(REPORT_DATA)
    assert fake.calls == []


# --- structure encodings (include/uapi/linux/sev-guest.h) ----------------------------


def test_ioctl_numbers_match_the_uapi_header() -> None:
    # _IOWR('S', nr, struct snp_guest_request_ioctl): go-sev-guest linux_abi.go
    # builds the same from (3 << 30) | ('S' << 8) | (32 << 16) | nr.
    assert snp.SNP_GET_REPORT == 0xC0205300
    assert snp.SNP_GET_EXT_REPORT == 0xC0205302


def test_struct_sizes() -> None:
    assert snp.REPORT_REQ.size == 96
    assert snp.EXT_REPORT_REQ.size == 112
    assert snp.GUEST_REQUEST.size == 32
    assert snp.REPORT_RESP_HEADER.size == 0x20


def test_report_req_layout() -> None:
    req = snp.encode_report_req(bytes(range(64)), 3)
    assert req[:64] == bytes(range(64))
    assert req[64:68] == b"\x03\x00\x00\x00"
    assert req[68:] == bytes(28)


def test_ext_report_req_layout() -> None:
    req = snp.encode_ext_report_req(b"\xaa" * 64, 1, 0x1122334455667788, 0x4000)
    assert req[:64] == b"\xaa" * 64
    assert struct.unpack_from("<I", req, 64) == (1,)
    assert req[68:96] == bytes(28)
    assert struct.unpack_from("<Q", req, 96) == (0x1122334455667788,)
    assert struct.unpack_from("<I", req, 104) == (0x4000,)
    assert req[108:] == bytes(4)
    assert snp.ext_report_certs_len(req) == 0x4000


def test_guest_request_layout_and_exitinfo2() -> None:
    g = snp.encode_guest_request(0xAAAA, 0xBBBB)
    assert g[0] == 1 and g[1:8] == bytes(7)
    assert struct.unpack_from("<QQQ", g, 8) == (0xAAAA, 0xBBBB, 0)
    after = g[:24] + struct.pack("<II", 0x27, 1)  # fw_error low half, vmm_error high half
    assert snp.decode_exitinfo2(after) == (0x27, 1)


def test_request_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        snp.encode_report_req(bytes(63), 0)
    with pytest.raises(ValueError, match="VMPL"):
        snp.encode_ext_report_req(bytes(64), 4, 0, 0)


def test_report_resp_decoding(chip: SimChip) -> None:
    report = sim_signer(chip)(REPORT_DATA, 0)[0]
    resp = struct.pack("<II24s", 0, 0x4A0, bytes(24)) + report
    assert snp.decode_report_resp(resp.ljust(4000, b"\0")) == report
    with pytest.raises(SnpGuestError, match=r"status 0x27 \(INVALID_KEY\)"):
        snp.decode_report_resp(struct.pack("<II24s", 0x27, 0, bytes(24)))
    with pytest.raises(MalformedEvidence, match="says the report has 1183 bytes"):
        snp.decode_report_resp(struct.pack("<II24s", 0, 0x49F, bytes(24)) + report)
    with pytest.raises(MalformedEvidence, match="shorter than its header"):
        snp.decode_report_resp(bytes(8))


# --- certificate table (parsed by snp/certtable.py; its own tests are in test_snp_collateral.py)


def test_bundle_certs_keeps_the_named_certificates() -> None:
    certs = (("vlek", b"L" * 10), ("ask", b"A" * 3), ("ark", b"R" * 5))
    assert snp.bundle_certs(encode_cert_table(certs)) == tuple(sorted(certs))
    crl_guid = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea")
    table = build_cert_table([(crl_guid, b"crl"), (VCEK_GUID, b"V")])
    assert snp.bundle_certs(table) == (("vcek", b"V"),)
    assert snp.bundle_certs(b"") == ()
    assert snp.bundle_certs(bytes(4096)) == ()  # the device's zeroed buffer: no certificates


def test_bundle_certs_refuses_a_malformed_table() -> None:
    with pytest.raises(MalformedEvidence, match="no terminating"):
        snp.bundle_certs(bytes(23))
    with pytest.raises(MalformedEvidence, match="past the"):
        snp.bundle_certs(encode_cert_table((("ark", b"R"),))[:-1])
