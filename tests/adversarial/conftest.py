"""The adversarial suite: the host is the adversary (issue 13).

Every test in this directory is marked ``adversarial`` (``pytest -m
adversarial`` runs the suite alone) and ends with a CANARY SWEEP: each test
takes its secrets and stdin from :meth:`Canaries.new` (fixture ``canaries``),
unique random strings; after the test, the sweep looks for each of them, as
bytes and in hex and base64, in:

- files changed since the test began under the directories the test used
  (the session ``state_dir``: Keep logs, sim chip; ``tmp_path``; any
  directory registered with :meth:`Canaries.sweep_dir`: a keep manager's
  state directory and registry database, ...), ``/dev/shm``, ``/tmp`` and
  ``$TMPDIR``;
- ``/proc/*/cmdline`` and ``/proc/*/environ`` of every process this user can
  read, at the end of the test and, while the test runs, every
  :data:`canary.PROC_INTERVAL_S` seconds (processes that came and went mid-test).

A hit fails the test. The test process itself keeps secrets in memory only;
a test that must let a process of its own hold a canary in its arguments or
environment says so with :meth:`Canaries.allow_pid`.

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


@pytest.fixture(autouse=True)
def _canary_sweep(request: pytest.FixtureRequest, canaries: Canaries) -> Iterator[None]:
    extra: list[Path] = []
    for name in ("state_dir", "tmp_path"):
        if name in request.fixturenames:  # the test uses it: resolve it now, while it is alive
            extra.append(Path(request.getfixturevalue(name)))
    yield
    findings = canaries.sweep(extra)
    if findings:
        pytest.fail("secret left the client: " + "; ".join(map(str, findings)), pytrace=False)
