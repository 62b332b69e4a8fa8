"""Text from the host must not drive the user's terminal (issue 13, item 6).

A hostile keep manager (a stub on a free loopback port) answers every
request with strings that carry a carriage return, OSC 0 (window title),
OSC 8 (hyperlink), CSI sequences, an 8-bit CSI, a bidi override and rich
markup. The real CLI (``deploy``, ``keeps ls/wait/kill/logs``) prints none
of those bytes raw; problems relayed from a Keep reach the user through the
same ``fail`` and are checked here directly.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cbor2
import pytest

from stockade.commands._output import MAX_TEXT, json_option, safe_text
from stockade.errors import KeepDied, StockadeError, WorkloadTrapped
from stockade.wire.messages import PD_DETAIL, PD_TITLE, PD_TYPE

HELLO = Path(__file__).resolve().parent.parent / "examples" / "hello" / "hello.wasm"
#: Overwrite the line with a fake verdict, set the window title, hide a
#: link, clear the screen, colour, reverse the text, 8-bit CSI, markup.
HOSTILE = (
    "\r\x1b[2K\x1b]0;pwned\x07\x1b]8;;https://evil.example/\x1b\\"
    "stockade: Keep attested and verified\x1b]8;;\x1b\\\x1b[2J\x1b[31m"
    "\u202eevil\u202c\u2066x\u2069 \x9b1m \x08\x7f [bold]markup[/bold] [red]x[/red]"
)
RAW = (b"\x1b", b"\r", b"\x07", b"\x08", b"\x7f", b"\xc2\x9b", "\u202e".encode(), "\u2066".encode())
PROBLEM = "application/concise-problem-details+cbor"


def assert_clean(out: bytes) -> None:
    for raw in RAW:
        assert raw not in out, (raw, out)


class _Hostile(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, ctype: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _problem(self) -> None:
        body = cbor2.dumps(
            {PD_TITLE: "busy" + HOSTILE, PD_DETAIL: HOSTILE, PD_TYPE: "busy\x1b[5m"}, canonical=True
        )
        self._send(503, PROBLEM, body)

    def _keep(self) -> dict[str, object]:
        return {
            "id": "k1\x1b[2J",
            "state": "failed\r" + HOSTILE,
            "backend": "sim\x1b]0;t\x07",
            "pid": 7,
            "exit_status": 1,
            "created_at": "2026\x1b[1A",
            "detail": HOSTILE,
            "timed_out": False,
        }

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/v1/keeps":
            self._send(200, "application/cbor", cbor2.dumps({"keeps": [self._keep()]}, canonical=True))
        elif path.endswith("/wait"):
            self._send(200, "application/cbor", cbor2.dumps(self._keep(), canonical=True))
        elif path.endswith("/logs"):
            offset = int(self.path.partition("offset=")[2] or 0) if "offset=" in self.path else 0
            log = ("line one\n" + HOSTILE + "\nend\n").encode()
            self._send(200, "text/plain", log[offset:], {"Stockade-Log-Offset": str(offset)})
        else:
            self._problem()

    def do_POST(self) -> None:
        self._problem()

    def do_DELETE(self) -> None:
        self._send(200, "application/cbor", cbor2.dumps(self._keep(), canonical=True))


@pytest.fixture(scope="module")
def hostile() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def env() -> dict[str, str]:
    return {**os.environ, "STOCKADE_TOKEN": "stk_test", "COLUMNS": "300", "TERM": "xterm"}


def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "stockade", *args], capture_output=True, timeout=60, env=env(), check=False
    )


def test_safe_text_escapes_controls_escapes_and_bidi() -> None:
    out = safe_text(HOSTILE)
    assert_clean(out.encode())
    assert "\n" not in out
    assert "\\x1b]0;pwned\\x07" in out and "\\x0d" in out and "\\u202e" in out and "\\x9b" in out
    assert "[bold]markup[/bold]" in out  # markup is rich's business (Text / escape), not this one's
    assert safe_text("plain ascii and é 日本") == "plain ascii and é 日本"
    assert safe_text("a\nb\tc\r", multiline=True) == "a\nb\tc\\x0d"
    assert safe_text("a\nb") == "a\\x0ab"
    long = safe_text("x" * (MAX_TEXT + 10))
    assert long.startswith("x" * MAX_TEXT) and long.endswith("… (10 more characters)")


def _through_the_boundary(err: StockadeError, as_json: bool) -> tuple[int, bytes]:
    """Exit code and output of a command that raises ``err``, under the
    CLI's error boundary."""
    import click
    from click.testing import CliRunner

    from stockade.cli import StockadeGroup

    @click.group(cls=StockadeGroup)
    def root() -> None:
        pass

    @root.command()
    @json_option("JSON.")
    def raises(as_json: bool) -> None:
        raise err

    result = CliRunner().invoke(root, ["raises", *(["--json"] if as_json else [])])
    return result.exit_code, result.stdout_bytes + result.stderr_bytes


@pytest.mark.parametrize("as_json", [False, True])
def test_problems_relayed_from_a_keep_are_printed_escaped(as_json: bool) -> None:
    for err in (KeepDied(HOSTILE), WorkloadTrapped("trap: " + HOSTILE)):
        code, out = _through_the_boundary(err, as_json)
        assert code == err.exit_code
        assert_clean(out)
        assert b"Keep attested and verified" in out  # shown, as the text it is, on the same line
        assert out.count(b"\n") == 1


def test_deploy_prints_a_hostile_manager_problem_escaped(hostile: str) -> None:
    proc = cli("deploy", "--host", hostile, str(HELLO))
    assert proc.returncode == 1, proc.stderr
    assert_clean(proc.stdout + proc.stderr)
    assert proc.stderr.count(b"\n") == 1 and b"Traceback" not in proc.stderr
    assert b"\\x1b]0;pwned\\x07" in proc.stderr and b"[bold]markup[/bold]" in proc.stderr
    doc = cli("deploy", "--host", hostile, "--json", str(HELLO))
    assert doc.returncode == 1
    assert_clean(doc.stdout + doc.stderr)


def test_keeps_ls_escapes_fields_and_markup(hostile: str) -> None:
    proc = cli("keeps", "ls", "--host", hostile)
    assert proc.returncode == 0, proc.stderr
    assert_clean(proc.stdout + proc.stderr)
    text = proc.stdout.decode()
    # rich did not interpret the host's markup: it is printed as text.
    assert "[bold]markup[/bold] [red]x[/red]" in text
    assert "k1\\x1b[2J" in text
    js = cli("keeps", "ls", "--host", hostile, "--json")
    assert js.returncode == 0
    assert_clean(js.stdout)  # JSON escapes control characters (\u001b) by itself


def test_keeps_wait_and_kill_escape_fields(hostile: str) -> None:
    wait = cli("keeps", "wait", "k1", "--host", hostile, "--timeout", "1")
    assert wait.returncode == 115, wait.stderr
    assert_clean(wait.stdout + wait.stderr)
    assert wait.stdout.count(b"\n") == 1
    kill = cli("keeps", "kill", "k1", "--host", hostile)
    assert kill.returncode == 0, kill.stderr
    assert_clean(kill.stdout + kill.stderr)


def test_keeps_logs_into_a_pipe_are_the_exact_bytes(hostile: str) -> None:
    proc = cli("keeps", "logs", "k1", "--host", hostile)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ("line one\n" + HOSTILE + "\nend\n").encode()


def _run_on_a_terminal(args: list[str], seconds: float = 60) -> tuple[int, bytes]:
    """Run the CLI with stdout on a pseudo-terminal; its exit code and output."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdout=slave, stderr=subprocess.PIPE, env=env())
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
        os.close(master)
    return code, bytes(out)


def test_keeps_logs_on_a_terminal_are_escaped(hostile: str) -> None:
    code, out = _run_on_a_terminal(
        [sys.executable, "-m", "stockade", "keeps", "logs", "k1", "--host", hostile]
    )
    assert code == 0
    # The terminal turns \n into \r\n (onlcr): those are the terminal's own.
    out = out.replace(b"\r\n", b"\n")
    assert_clean(out)
    assert out.startswith(b"line one\n") and out.endswith(b"\nend\n")
    assert b"\\x0d\\x1b[2K\\x1b]0;pwned\\x07" in out


def test_policy_check_of_a_hostile_claims_file_prints_no_raw_escape(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from stockade.cli import main
    from stockade.testing.claims import make_claims

    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps(make_claims(product="Milan" + HOSTILE).to_json()))
    milan = tmp_path / "milan.toml"
    milan.write_text('version = 1\nplatforms = ["snp"]\n\n[snp]\nproducts = ["Milan"]\n')
    result = CliRunner().invoke(
        main, ["policy", "check", "--policy", str(milan), "--claims", str(claims)], env={"COLUMNS": "400"}
    )
    assert result.exit_code == 112, result.output
    out = result.stdout_bytes + result.stderr_bytes
    assert_clean(out)
    assert b"[bold]markup[/bold]" in out  # shown as text, not parsed as markup
