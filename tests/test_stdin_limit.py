"""Stdin travels in the one Release message: how much fits in one frame,
and the client's refusal of more, before anything is sent (issue 18)."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stockade.client.plan import read_stdin
from stockade.errors import ProtocolError, UsageError
from stockade.wire import framing
from stockade.wire.framing import encode_frame
from stockade.wire.messages import Release, release_stdin_room

SECRETS = (("api_key", b"k" * 40), ("token", b"t" * 300))


#: Frame sizes around the byte string's head sizes (1, 2, 3 and 5 bytes:
#: stdin lengths 23/24, 255/256, 65535/65536) with and without secrets.
FRAMES = [600, 800, 1000, *range(65_536 + 20, 65_536 + 40), *range(65_536 + 380, 65_536 + 420), 200_000]


@pytest.mark.parametrize("max_frame", FRAMES)
@pytest.mark.parametrize("secrets", [(), SECRETS], ids=["no secrets", "secrets"])
def test_room_is_exactly_what_fits(max_frame: int, secrets: tuple[tuple[str, bytes], ...]) -> None:
    room = release_stdin_room(secrets, max_frame)
    assert room > 0
    fits = Release(secrets=secrets, stdin=b"x" * room).to_cbor()
    assert len(fits) <= max_frame
    encode_frame(fits, max_frame)
    too_big = Release(secrets=secrets, stdin=b"x" * (room + 1)).to_cbor()
    assert len(too_big) > max_frame
    with pytest.raises(ProtocolError, match="frame limit"):
        encode_frame(too_big, max_frame)


@pytest.mark.parametrize("stdin_len", [20, 23, 24, 250, 255, 256, 65_535, 65_536])
def test_room_at_the_head_boundaries(stdin_len: int) -> None:
    """A frame exactly as large as a Release with that much stdin: the room
    is exactly that much."""
    max_frame = len(Release(stdin=b"x" * stdin_len).to_cbor())
    assert release_stdin_room((), max_frame) == stdin_len


def test_no_room_when_the_message_alone_does_not_fit() -> None:
    assert release_stdin_room(SECRETS, 100) == 0


def test_room_under_the_real_frame_limit() -> None:
    room = release_stdin_room((), framing.MAX_FRAME)
    # A 5-byte byte-string head and the message's other bytes.
    assert framing.MAX_FRAME - 64 < room < framing.MAX_FRAME


def _opts(stdin: str | None) -> Any:
    return SimpleNamespace(stdin=stdin)


@pytest.fixture()
def small_frames(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(framing, "MAX_FRAME", 1000)
    return release_stdin_room((), 1000)


def test_file_that_fits_is_read_whole(small_frames: int, tmp_path: Path) -> None:
    path = tmp_path / "in"
    path.write_bytes(b"a" * small_frames)
    assert read_stdin(_opts(str(path))) == b"a" * small_frames


def test_file_one_byte_too_large_is_refused(small_frames: int, tmp_path: Path) -> None:
    path = tmp_path / "in"
    path.write_bytes(b"a" * (small_frames + 1))
    with pytest.raises(UsageError, match=rf"--stdin: more than {small_frames} bytes; .* at most 1000 bytes"):
        read_stdin(_opts(str(path)))


def test_secrets_take_room_from_stdin(small_frames: int, tmp_path: Path) -> None:
    path = tmp_path / "in"
    path.write_bytes(b"a" * small_frames)
    with pytest.raises(UsageError, match="--stdin: more than"):
        read_stdin(_opts(str(path)), SECRETS)


def test_piped_stdin_too_large_is_refused(small_frames: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(b"b" * (small_frames + 1))))
    with pytest.raises(UsageError, match="--stdin: more than"):
        read_stdin(_opts("-"))


def test_piped_stdin_that_fits(small_frames: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(b"b" * small_frames)))
    assert read_stdin(_opts("-")) == b"b" * small_frames


def test_no_stdin_and_unreadable_file(tmp_path: Path) -> None:
    assert read_stdin(_opts(None)) == b""
    with pytest.raises(UsageError, match="--stdin: cannot read"):
        read_stdin(_opts(str(tmp_path / "missing")))


@pytest.mark.slow
def test_run_refuses_too_large_stdin_before_sending(stockade, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A sparse file one byte larger than a release can carry: a one-line
    usage error (exit 2), no traceback."""
    path = tmp_path / "big"
    with open(path, "wb") as f:
        f.truncate(release_stdin_room((), framing.MAX_FRAME) + 1)
    hello = Path(__file__).resolve().parent.parent / "examples" / "hello" / "hello.wasm"
    proc = stockade("run", "--allow-sim", "-q", "--stdin", str(path), str(hello))
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert "usage error: --stdin: more than" in stderr
    assert proc.stdout == b""
