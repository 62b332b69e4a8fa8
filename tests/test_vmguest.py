"""The guest side of a VM Keep (stockade.keep.vmguest), without a VM:
virtio-serial ports found by name in a fake sysfs, the port-to-socket
relay over a pseudo-terminal standing in for the port's device node, and
the RAM budget of the workload."""

from __future__ import annotations

import os
import tty
from pathlib import Path

import pytest

from stockade.keep import vmguest


def _fake_ports(tmp_path: Path, names: dict[str, str]) -> Path:
    ports = tmp_path / "virtio-ports"
    for entry, name in names.items():
        (ports / entry).mkdir(parents=True)
        (ports / entry / "name").write_text(name + "\n")
    return ports


def test_find_port_by_name(tmp_path: Path) -> None:
    ports = _fake_ports(tmp_path, {"vport0p1": "stockade.conn", "vport0p2": "stockade.psp"})
    assert vmguest.find_port("stockade.psp", ports=ports, dev=Path("/dev"), wait=0) == Path("/dev/vport0p2")
    with pytest.raises(FileNotFoundError, match="no virtio-serial port named 'other'"):
        vmguest.find_port("other", ports=ports, wait=0.05)
    with pytest.raises(FileNotFoundError):
        vmguest.find_port("stockade.conn", ports=tmp_path / "absent", wait=0)


def test_port_socket_relays_both_ways_and_passes_eof(tmp_path: Path) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    dev = Path(os.ttyname(slave))
    ports = _fake_ports(tmp_path, {dev.name: "stockade.conn"})
    sock = vmguest.port_socket("stockade.conn", ports=ports, dev=dev.parent, wait=0)
    try:
        sock.settimeout(5)
        os.write(master, b"from the host")
        got = b""
        while len(got) < 13:
            got += sock.recv(100)
        assert got == b"from the host"
        sock.sendall(b"from the Keep")
        back = b""
        while len(back) < 13:
            back += os.read(master, 100)
        assert back == b"from the Keep"
        # The host side goes away: the Keep's socket reads end of stream.
        os.close(master)
        master = -1
        assert sock.recv(100) == b""
    finally:
        sock.close()
        if master >= 0:
            os.close(master)
        os.close(slave)


def test_ram_budget_is_available_memory_less_the_runtime_reserve(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  1000000 kB\nMemFree: 800000 kB\nMemAvailable:  700000 kB\n")
    assert vmguest.ram_budget(meminfo) == 700000 * 1024 - vmguest.RUNTIME_RESERVE
    meminfo.write_text("MemAvailable: 1000 kB\n")
    assert vmguest.ram_budget(meminfo) == 0
    meminfo.write_text("MemTotal: 5 kB\n")
    assert vmguest.ram_budget(meminfo) is None
    assert vmguest.ram_budget(tmp_path / "none") is None


def test_a_guest_without_tsm_has_no_provider(tmp_path: Path) -> None:
    assert vmguest.tsm_provider(tmp_path / "absent") is None
    plain = tmp_path / "report"  # a directory that is not configfs: no provider file appears
    plain.mkdir()
    assert vmguest.tsm_provider(plain) is None
    assert list(plain.iterdir()) == []  # the probe entry is removed


def test_a_guest_with_neither_tee_nor_sim_port_says_it_cannot_attest(tmp_path: Path) -> None:
    ports = _fake_ports(tmp_path, {"vport0p1": "stockade.conn"})
    with pytest.raises(FileNotFoundError, match=r"no TEE interface .* and no sim PSP port 'stockade\.psp'"):
        vmguest.attester(
            "stockade.psp", tsm_root=tmp_path / "tsm", sev_guest=tmp_path / "sev-guest", ports=ports, wait=0
        )
