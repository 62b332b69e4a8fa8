"""Sealing keys (ADR 0023): the sim PSP's MSG_KEY_REQ, the Keep-side
request through SimAttester, and the SEV-SNP SNP_GET_DERIVED_KEY ioctl
structs (tested against the layout only: UNTESTED ON REAL HARDWARE)."""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import threading
from pathlib import Path

import pytest

from stockade.errors import ProtocolError
from stockade.evidence.sim import chip as simchip
from stockade.evidence.sim.attester import SimAttester
from stockade.evidence.sim.channel import KeyRequest, KeyResponse
from stockade.evidence.sim.psp import SimPsp, serve_reports
from stockade.evidence.snp import abi
from stockade.evidence.snp import attester as snp

MEASUREMENT = bytes(range(48))
OTHER_MEASUREMENT = bytes(48)


@pytest.fixture(scope="module")
def chip(state_dir: Path) -> simchip.SimChip:
    return simchip.load_chip(state_dir)


def _request(chip: simchip.SimChip, **kw: int) -> KeyRequest:
    fields = {"field_select": abi.SEALING_FIELDS, "tcb_version": chip.reported_tcb.raw, **kw}
    return KeyRequest(**fields)


def test_key_is_stable_for_one_keep_and_32_bytes(chip: simchip.SimChip) -> None:
    one = SimPsp(chip, MEASUREMENT).derive_key(_request(chip)).key
    again = SimPsp(chip, MEASUREMENT).derive_key(_request(chip)).key  # another PSP process, same Keep
    assert one == again
    assert len(one) == 32


def test_another_measurement_gets_another_key(chip: simchip.SimChip) -> None:
    assert (
        SimPsp(chip, MEASUREMENT).derive_key(_request(chip)).key
        != SimPsp(chip, OTHER_MEASUREMENT).derive_key(_request(chip)).key
    )


def test_without_the_measurement_field_the_key_does_not_depend_on_it(chip: simchip.SimChip) -> None:
    fields = abi.SEALING_FIELDS & ~abi.FIELD_MEASUREMENT
    a = SimPsp(chip, MEASUREMENT).derive_key(_request(chip, field_select=fields)).key
    b = SimPsp(chip, OTHER_MEASUREMENT).derive_key(_request(chip, field_select=fields)).key
    assert a == b
    assert a != SimPsp(chip, MEASUREMENT).derive_key(_request(chip)).key  # the selection itself counts


def test_another_chip_gets_another_key(chip: simchip.SimChip, tmp_path: Path) -> None:
    simchip.ensure_chip(tmp_path)
    other = simchip.load_chip(tmp_path)
    assert (
        SimPsp(chip, MEASUREMENT).derive_key(_request(chip)).key
        != SimPsp(other, MEASUREMENT).derive_key(_request(other)).key
    )


def test_a_lower_tcb_gets_another_key_and_a_higher_one_is_refused(chip: simchip.SimChip) -> None:
    psp = SimPsp(chip, MEASUREMENT)
    committed = chip.reported_tcb.raw
    lower = committed - 1 if committed & 0xFF else committed - (1 << 56)
    assert psp.derive_key(_request(chip, tcb_version=lower)).key != psp.derive_key(_request(chip)).key
    for byte in range(8):
        higher = committed + (1 << (8 * byte)) if (committed >> (8 * byte)) & 0xFF < 0xFF else None
        if higher is None:
            continue
        with pytest.raises(ProtocolError, match="exceeds the committed TCB"):
            psp.derive_key(_request(chip, tcb_version=higher))


def test_vmrk_and_a_higher_guest_svn_are_refused(chip: simchip.SimChip) -> None:
    psp = SimPsp(chip, MEASUREMENT)
    with pytest.raises(ProtocolError, match="no VMRK"):
        psp.derive_key(_request(chip, root_key_select=abi.ROOT_VMRK))
    with pytest.raises(ProtocolError, match="GUEST_SVN"):
        psp.derive_key(_request(chip, guest_svn=1))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("field_select", 0x40),
        ("field_select", -1),
        ("vmpl", 4),
        ("root_key_select", 2),
        ("tcb_version", 1 << 64),
        ("guest_svn", 1 << 32),
    ],
)
def test_malformed_key_requests_are_refused(field: str, value: int) -> None:
    import cbor2

    m = cbor2.loads(KeyRequest(field_select=abi.SEALING_FIELDS, tcb_version=0).to_cbor())
    m[field] = value
    with pytest.raises(ProtocolError):
        KeyRequest.from_cbor(cbor2.dumps(m))


def test_key_response_must_hold_32_bytes() -> None:
    import cbor2

    m = cbor2.loads(KeyResponse(key=bytes(32)).to_cbor())
    m["key"] = bytes(31)
    with pytest.raises(ProtocolError, match="32-byte key"):
        KeyResponse.from_cbor(cbor2.dumps(m))


def _serve(signer: object) -> tuple[socket.socket, threading.Thread]:
    host_end, keep_end = socket.socketpair()

    def run() -> None:
        with host_end:
            serve_reports(host_end, signer)  # type: ignore[arg-type]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return keep_end, thread


def test_keep_gets_its_key_through_the_channel_after_its_report(chip: simchip.SimChip) -> None:
    psp = SimPsp(chip, MEASUREMENT)
    sock, thread = _serve(psp)
    with sock:
        attester = SimAttester(sock, "sim")
        assert attester.sealing_key() is None  # no report yet: no TCB to ask for
        attester.evidence(bytes(64))
        key = attester.sealing_key()
    thread.join(5)
    assert key == psp.derive_key(_request(chip)).key
    assert psp.served == 1  # key requests are not reports


def test_psp_refusal_reaches_the_keep_as_a_protocol_error(chip: simchip.SimChip) -> None:
    class NoKeys:
        served = 0

        def report(self, request: object) -> object:  # pragma: no cover - not asked
            raise AssertionError

    sock, thread = _serve(NoKeys())
    with sock:
        attester = SimAttester(sock, "sim")
        attester._report = SimPsp(chip, MEASUREMENT).report(snp_report_request()).report
        with pytest.raises(ProtocolError, match="derives no keys"):
            attester.sealing_key()
    thread.join(5)


def snp_report_request() -> object:
    from stockade.evidence.sim.channel import ReportRequest

    return ReportRequest(report_data=bytes(64))


def test_sim_tdx_keep_has_no_sealing_key(state_dir: Path) -> None:
    a, b = socket.socketpair()
    with a, b:
        attester = SimAttester(a, "sim-tdx")
        attester._report = b"anything"
        assert attester.sealing_key() is None  # TDX: no sealing key, no cache


def test_sim_tdx_qe_refuses_key_requests(state_dir: Path) -> None:
    from stockade.evidence.sim import tdx_chip
    from stockade.wire.framing import FrameDecoder, encode_frame

    tdx_chip.ensure_tdx_chip(state_dir)
    qe = tdx_chip.SimQe(tdx_chip.load_tdx_chip(state_dir), bytes(48))
    sock, thread = _serve(qe)
    with sock:
        sock.sendall(encode_frame(KeyRequest(field_select=abi.SEALING_FIELDS, tcb_version=0).to_cbor()))
        frames: list[bytes] = []
        decoder = FrameDecoder(max_frame=1 << 16)
        while not frames:
            frames = decoder.feed(sock.recv(65536))
        with pytest.raises(ProtocolError, match="TDX offers no sealing key"):
            KeyResponse.from_cbor(frames[0])
    thread.join(5)


# --- SEV-SNP: SNP_GET_DERIVED_KEY (struct layout only; UNTESTED ON HARDWARE) ------------------


def test_derived_key_ioctl_number_and_struct_layout() -> None:
    # _IOWR('S', 0x1, struct snp_guest_request_ioctl): include/uapi/linux/sev-guest.h
    assert snp.SNP_GET_DERIVED_KEY == 0xC0205301
    # struct snp_derived_key_req: u32 root_key_select @0, u32 rsvd @4,
    # u64 guest_field_select @8, u32 vmpl @16, u32 guest_svn @20, u64 tcb_version @24.
    req = snp.encode_derived_key_req(0x29, 0x1122334455667788, vmpl=2, guest_svn=7)
    assert len(req) == 32
    assert struct.unpack_from("<I", req, 0) == (0,)
    assert req[4:8] == bytes(4)
    assert struct.unpack_from("<Q", req, 8) == (0x29,)
    assert struct.unpack_from("<I", req, 16) == (2,)
    assert struct.unpack_from("<I", req, 20) == (7,)
    assert struct.unpack_from("<Q", req, 24) == (0x1122334455667788,)
    # MSG_KEY_RSP in struct snp_derived_key_resp (64 bytes): status @0, key @0x20.
    key = bytes(range(32))
    assert snp.decode_derived_key_resp(bytes(32) + key) == key


def test_derived_key_request_refuses_reserved_bits() -> None:
    with pytest.raises(ValueError, match="reserved"):
        snp.encode_derived_key_req(0x40, 0)
    with pytest.raises(ValueError):
        snp.encode_derived_key_req(abi.SEALING_FIELDS, 0, vmpl=4)


def test_derived_key_response_status_and_size_are_checked() -> None:
    from stockade.errors import MalformedEvidence

    with pytest.raises(snp.SnpGuestError, match="status 0x16"):
        snp.decode_derived_key_resp(struct.pack("<I", 0x16) + bytes(60))
    with pytest.raises(MalformedEvidence):
        snp.decode_derived_key_resp(bytes(63))


class FakeKeyDevice:
    """/dev/sev-guest answering SNP_GET_DERIVED_KEY from the request it reads."""

    def __init__(self, status: int = 0, fail: int | None = None) -> None:
        self.status = status
        self.fail = fail
        self.requests: list[tuple[int, ...]] = []

    def ioctl(self, fd: int, request: int, buf: bytearray) -> int:
        del fd
        version, req_addr, resp_addr, _ = snp.GUEST_REQUEST.unpack(bytes(buf))
        assert request == snp.SNP_GET_DERIVED_KEY and version == snp.MSG_VERSION
        self.requests.append(snp.DERIVED_KEY_REQ.unpack(ctypes.string_at(req_addr, 32)))
        if self.fail is not None:
            buf[:] = snp.GUEST_REQUEST.pack(version, req_addr, resp_addr, 0x27)
            raise OSError(self.fail, "fake")
        body = struct.pack("<I", self.status) + bytes(28) + bytes(range(100, 132))
        ctypes.memmove(resp_addr, body, 64)
        return 0


def test_device_derived_key_sends_the_request_and_reads_the_key(tmp_path: Path) -> None:
    device = tmp_path / "sev-guest"
    device.write_bytes(b"")
    fake = FakeKeyDevice()
    key = snp.device_derived_key(device, abi.SEALING_FIELDS, 0x0123, vmpl=1, ioctl=fake.ioctl)
    assert key == bytes(range(100, 132))
    assert fake.requests == [(abi.ROOT_VCEK, 0, abi.SEALING_FIELDS, 1, 0, 0x0123)]


def test_device_derived_key_failure_names_the_errors(tmp_path: Path) -> None:
    device = tmp_path / "sev-guest"
    device.write_bytes(b"")
    with pytest.raises(snp.SnpGuestError, match=r"SNP_GET_DERIVED_KEY .* firmware error 0x27"):
        snp.device_derived_key(device, abi.SEALING_FIELDS, 0, ioctl=FakeKeyDevice(fail=errno.EIO).ioctl)
    with pytest.raises(snp.SnpGuestError, match="refused the key request"):
        snp.device_derived_key(device, abi.SEALING_FIELDS, 0, ioctl=FakeKeyDevice(status=0x16).ioctl)
    with pytest.raises(snp.SnpGuestError, match="cannot open"):
        snp.device_derived_key(tmp_path / "absent", abi.SEALING_FIELDS, 0, ioctl=FakeKeyDevice().ioctl)
