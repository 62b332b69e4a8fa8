"""The one collateral fetcher and the one on-disk collateral cache of every
platform (AMD KDS, Intel PCS); the KDS and PCS modules add URL builders and
parsers.

:class:`HttpFetcher`: httpx, per-request timeout plus an overall deadline per
attempt, bounded retries on 429, 5xx, timeouts and connection errors,
honouring Retry-After up to a cap (a server asking for a longer wait fails
the fetch at once rather than burning the budget), no retry on other
statuses, a cap on the body. Every failure is CollateralUnavailable naming
the URL and what happened.

An entry is found by a key: a URL (stored under the SHA-256 of the URL, as
the KDS fetcher keys its responses) or a relative file name (stored under
that name, for layouts a person reads, as the PCS cache's
``tdx/<FMSPC>/tcb_info.json``). Writes are atomic (temporary file in the
same directory, fsync, rename), so readers see a whole old or a whole new
entry, and the directory is private (0700). Expiry comes from the collateral
itself: :meth:`CollateralCache.fresh` serves an entry only while the
``next_update`` read from its own bytes (a CRL's nextUpdate, TCB info's
nextUpdate) is after ``now``; an entry that does not parse is a miss.
Nothing here verifies a signature: verification does, at verification time.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from stockade.errors import CollateralUnavailable, MalformedEvidence

if TYPE_CHECKING:
    import httpx

#: Statuses worth another attempt: rate limiting and server-side trouble.
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` by rename (never rewritten in place)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class CollateralCache:
    """A directory of collateral entries (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        if "://" in key:
            return self.directory / (hashlib.sha256(key.encode()).hexdigest() + ".bin")
        relative = Path(key)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"cache key {key!r} is not a relative name inside the cache")
        return self.directory / relative

    def get(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path(key), data)

    def discard(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def fresh(self, key: str, next_update: Callable[[bytes], datetime], now: datetime) -> bytes | None:
        """The cached entry while its own next update is after ``now``; None
        when absent, expired or unparsable."""
        data = self.get(key)
        if data is None:
            return None
        try:
            return data if next_update(data) > now else None
        except MalformedEvidence:
            return None


def _retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


class HttpFetcher:
    """GET collateral over HTTP(S) (see the module docstring).

    ``timeout``: seconds per attempt (connect, each read, and the whole
    response). ``retries``: extra attempts after a retryable failure.
    ``max_retry_after``: the longest wait honoured (Retry-After, or the
    exponential backoff from ``backoff`` seconds). ``client``: an httpx
    client to use (not closed here); else one is made. ``sleep`` and ``now``
    are injectable for tests.
    """

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        max_retry_after: float = 30.0,
        backoff: float = 0.5,
        client: httpx.Client | None = None,
        max_body: int = 1 << 20,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if retries < 0 or timeout <= 0 or max_retry_after < 0:
            raise ValueError("retries and max_retry_after must be >= 0 and timeout > 0")
        self.timeout = timeout
        self.retries = retries
        self.max_retry_after = max_retry_after
        self.backoff = backoff
        self.max_body = max_body
        self._sleep = sleep
        self._now = now
        self._own_client = client is None
        if client is None:
            import httpx  # lazily: importing this module must stay cheap

            client = httpx.Client(
                timeout=httpx.Timeout(timeout),
                follow_redirects=True,
                headers={"User-Agent": "stockade"},
            )
        self._client = client

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> HttpFetcher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _attempt(self, url: str) -> tuple[int, str, Mapping[str, str], bytes]:
        """One GET: (status, reason, headers, body); raises httpx errors
        and CollateralUnavailable for an oversized body."""
        import httpx

        deadline = time.monotonic() + self.timeout
        with self._client.stream("GET", url) as response:
            body = bytearray()
            if response.status_code == 200:
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.max_body:
                        raise CollateralUnavailable(f"{url}: response larger than {self.max_body} bytes")
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("response took too long", request=response.request)
            return response.status_code, response.reason_phrase, response.headers, bytes(body)

    def fetch(self, url: str) -> tuple[bytes, Mapping[str, str]]:
        """Body and headers of a 200 answer for ``url``, after at most
        ``retries`` retries; else CollateralUnavailable naming the URL and
        the failure."""
        import httpx

        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                status, reason, headers, body = self._attempt(url)
            except httpx.TimeoutException:
                failure = f"timed out after {self.timeout:g} s"
            except httpx.HTTPError as exc:
                failure = f"request failed ({type(exc).__name__}: {exc})"
            else:
                if status == 200:
                    return body, headers
                failure = f"HTTP {status} {reason}".rstrip()
                if status not in RETRYABLE_STATUS:
                    raise CollateralUnavailable(f"{url}: {failure}")
                retry_after = _retry_after(headers.get("Retry-After"), self._now())
            if attempt >= self.retries:
                tries = "attempt" if attempt == 0 else "attempts"
                raise CollateralUnavailable(f"{url}: {failure}; gave up after {attempt + 1} {tries}")
            if retry_after is not None and retry_after > self.max_retry_after:
                raise CollateralUnavailable(
                    f"{url}: {failure}; the server asks to retry after {retry_after:g} s, "
                    f"longer than the {self.max_retry_after:g} s this fetcher waits"
                )
            delay = retry_after if retry_after is not None else self.backoff * 2**attempt
            self._sleep(min(delay, self.max_retry_after))
            attempt += 1

    def get(self, url: str) -> bytes:
        """The body of a 200 answer for ``url`` (see :meth:`fetch`)."""
        return self.fetch(url)[0]


__all__ = ["RETRYABLE_STATUS", "CollateralCache", "HttpFetcher", "write_atomic"]
