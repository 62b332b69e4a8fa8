"""The adversarial suite: the host is the adversary (issue 13).

Every test in this directory is marked ``adversarial`` (``pytest -m
adversarial`` runs the suite alone) and ends with a CANARY SWEEP: each test
takes its secrets and stdin from :meth:`Canaries.new` (fixture ``canaries``),
unique random strings; after the test, the sweep looks for each of them, as
bytes and in hex and base64, in:

- files changed since the test began under the places the test used: every
  fixture value that is a Path or has Path attributes named in
  :data:`PATH_ATTRIBUTES` (the session ``state_dir`` with the Keep logs,
  ``tmp_path``, a keep manager ``Server``'s state directory with its
  registry database, and its log), anything registered with
  :meth:`Canaries.sweep_dir`, and ``/dev/shm``, ``/tmp`` and ``$TMPDIR``;
- ``/proc/*/cmdline`` and ``/proc/*/environ`` of every process this user can
  read, at the end of the test and, while the test runs, every
  :data:`canary.PROC_INTERVAL_S` seconds (processes that came and went mid-test).

A hit fails the test (an error in its teardown, naming the canary, its form
and where it was found). The test process itself keeps secrets in memory
only. The client's own files are the one legitimate place for a secret:
write them with :meth:`Canaries.client_file` (e.g. for ``stockade run
--secret NAME=@FILE``), which leaves them out of the sweep. A test that must
let a process of its own hold a canary in its arguments or environment says
so with :meth:`Canaries.allow_pid`.

Usage::

    def test_something(canaries, tmp_path, stockade):
        secret_file, secret = canaries.client_file(tmp_path / "token")
        stdin = canaries.new("stdin")
        ...  # deploy; the sweep runs after the test

Bounds, so that the sweep stays cheap: files larger than
:data:`canary.MAX_FILE_BYTES` and files not changed (ctime) since the test began
are skipped, at most :data:`canary.MAX_FILES` files per directory tree, symbolic
links are not followed, unreadable files and vanished processes are skipped.

This directory is a package (``adversarial``), so that this conftest.py
never shadows ``tests/conftest.py``, which test modules import as
``conftest``. Support modules are imported as ``adversarial.relay`` and
``adversarial.canary``, and those of ``tests/`` as before
(``manager_support``): pytest's default ``prepend`` import mode puts
``tests/`` on ``sys.path``. Test files added here need unique base names
only within the package.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adversarial.canary import Canaries

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.adversarial)


@pytest.fixture
def canaries() -> Canaries:
    """The canaries of this test (see the module docstring)."""
    return Canaries()


#: Attributes of a fixture value that name host-side places to sweep
#: (manager_support.Server: ``state``, ``log``; KeepHandle: ``log_path``, ...).
PATH_ATTRIBUTES = ("state", "state_dir", "log", "log_path", "scratch", "path")


def paths_of(value: object) -> list[Path]:
    """Host-side paths a fixture value names: itself if it is a Path, or its
    Path-valued attributes among PATH_ATTRIBUTES (one level deep)."""
    if isinstance(value, Path):
        return [value]
    found = []
    for name in PATH_ATTRIBUTES:
        attr = getattr(value, name, None) if not isinstance(value, type) else None
        if isinstance(attr, Path):
            found.append(attr)
    return found


@pytest.fixture(autouse=True)
def _canary_sweep(request: pytest.FixtureRequest, canaries: Canaries) -> Iterator[None]:
    yield
    # Every fixture value of the test is still in funcargs here: sweep the
    # directories and files they name (state_dir, tmp_path, a manager's state
    # directory and log, ...).
    extra: list[Path] = []
    for value in getattr(request.node, "funcargs", {}).values():
        extra.extend(paths_of(value))
    findings = canaries.sweep(extra)
    if findings:
        pytest.fail("secret left the client: " + "; ".join(map(str, findings)), pytrace=False)
