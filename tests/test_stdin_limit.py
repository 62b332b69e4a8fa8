"""Stdin in the Release message: how much fits in one frame (a small input
travels whole in it), and which inputs the client streams instead
(issue 18; tests/test_stdin_stream.py runs them)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stockade.client.deploy import INLINE_STDIN, StdinFile
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


def test_small_file_is_read_whole(tmp_path: Path) -> None:
    """At most INLINE_STDIN bytes: read here, it travels in the Release."""
    path = tmp_path / "in"
    path.write_bytes(b"a" * INLINE_STDIN)
    assert read_stdin(_opts(str(path))) == b"a" * INLINE_STDIN


def test_larger_file_is_streamed_not_read(tmp_path: Path) -> None:
    """One byte more: left open as a stream (no size limit, nothing read yet)."""
    path = tmp_path / "in"
    path.write_bytes(b"b" * (INLINE_STDIN + 1))
    got = read_stdin(_opts(str(path)))
    assert isinstance(got, StdinFile)
    try:
        assert os.lseek(got.fd, 0, os.SEEK_CUR) == 0
        assert os.read(got.fd, INLINE_STDIN + 10) == b"b" * (INLINE_STDIN + 1)
    finally:
        os.close(got.fd)


def test_piped_stdin_is_streamed() -> None:
    assert read_stdin(_opts("-")) == StdinFile(0)


def test_no_stdin_and_unreadable_file(tmp_path: Path) -> None:
    assert read_stdin(_opts(None)) == b""
    with pytest.raises(UsageError, match="--stdin: cannot read"):
        read_stdin(_opts(str(tmp_path / "missing")))
    with pytest.raises(UsageError, match=r"--stdin: cannot read .*: Is a directory"):
        read_stdin(_opts(str(tmp_path)))
