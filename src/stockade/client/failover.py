"""Trying placement's candidates in order until one runs the deploy
(``stockade deploy --fleet``, docs/fleet.md "Placement").

The retry boundary is the release (:class:`stockade.client.deploy.
ReleaseMark`): a failure before it that :func:`~stockade.client.placement.
retryable` allows moves on to the next candidate; any failure once the
release has begun, or one that would be the same on every host, ends the
deploy with its own error. When every candidate tried failed, the error is
:func:`~stockade.client.placement.final_error` (every host's reason).
What one attempt does (create, attest, run) is the caller's function; this
module holds the loop, so that the command only prints.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

from stockade.client.deploy import ReleaseMark
from stockade.client.placement import Attempt, Candidate, final_error, retryable
from stockade.errors import ManagerError, StockadeError, UsageError

if TYPE_CHECKING:
    from stockade.client.remote import ManagerClient

T = TypeVar("T")

#: ``run(candidate, mark, created)``: one deploy on ``candidate``; it
#: passes ``mark.mark`` as the deploy's ``on_release`` and appends the id of
#: the Keep it created to ``created``; returns (Keep id, result).
AttemptFn = Callable[[Candidate, ReleaseMark, list[str]], tuple[str, T]]


def manager_for(
    url: str, token: str, cacert: str | os.PathLike[str] | None, allow_insecure_http: bool
) -> ManagerClient:
    """A client of a manager placement chose. A URL the client refuses to
    send the token to (plain http off loopback without --insecure-http) is
    that host's failure (the fleet chose it), not the deployer's usage
    error: a :class:`ManagerError`, so the next candidate is tried."""
    from stockade.client.remote import ManagerClient

    try:
        return ManagerClient(url, token, cacert=cacert, allow_insecure_http=allow_insecure_http)
    except UsageError as err:
        raise ManagerError(f"not tried: {err.detail}") from None


@contextlib.contextmanager
def kill_unless_released(client: ManagerClient, created: list[str], mark: ReleaseMark) -> Iterator[None]:
    """On a failure before release, ask the host to kill the Keep it made
    (best effort: the Keep also ends when its connection closes, and the
    host is untrusted anyway)."""
    try:
        yield
    except StockadeError:
        if created and not mark.released:
            with contextlib.suppress(StockadeError):
                client.kill(created[0])
        raise


def run_with_failover(
    candidates: Sequence[Candidate],
    limit: int,
    run: AttemptFn[T],
    attempts: list[Attempt],
    *,
    on_start: Callable[[int, int, Candidate], None] = lambda number, total, candidate: None,
    on_failed: Callable[[Attempt], None] = lambda attempt: None,
) -> tuple[Candidate, T]:
    """Run the deploy on the first of ``candidates[:limit]`` that takes it;
    every attempt is appended to ``attempts`` (the caller reports them,
    also when this raises). ``on_start(number, total, candidate)`` before
    each attempt, ``on_failed(attempt)`` after each failed one."""
    tried = candidates[:limit]
    for number, candidate in enumerate(tried, 1):
        on_start(number, len(tried), candidate)
        mark = ReleaseMark()
        created: list[str] = []
        try:
            keep_id, result = run(candidate, mark, created)
        except StockadeError as err:
            failed = Attempt(candidate, err, created[0] if created else "", mark.released)
            attempts.append(failed)
            on_failed(failed)
            if mark.released or not retryable(err):
                raise
            continue
        attempts.append(Attempt(candidate, None, keep_id, True))
        return candidate, result
    raise final_error(attempts, len(candidates) - len(tried))
