"""Prometheus metrics of the keep manager (``GET /metrics``).

Only counts: no Keep ids, token ids, owners or workload data appear in any
label or value. Each app has its own CollectorRegistry (:class:`Metrics`).
"""

from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stockade.host.guard import SHED_REASONS
from stockade.host.registry import STATES


class _KeepStates(Collector):
    """stockade_keeps{state}: Keeps in the registry per state, read at
    scrape time (the scrape runs in a worker thread; the registry is
    thread-safe)."""

    def __init__(self, states: Callable[[], Iterable[str]]) -> None:
        self._states = states

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("stockade_keeps", "Keeps in the registry, by state", labels=["state"])

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        counts: _Tally[str] = _Tally(self._states())
        for state in STATES:
            family.add_metric([state], counts[state])
        yield family


class _VmPool(Collector):
    """stockade_vm_pool_ready and stockade_vm_pool_takes{result}: the warm
    pool of VM Keeps (stockade.host.vmpool), read at scrape time from
    ``stats()`` = (ready, hits, misses)."""

    def __init__(self, stats: Callable[[], tuple[int, int, int]]) -> None:
        self._stats = stats

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from self.collect()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        ready, hits, misses = self._stats()
        yield GaugeMetricFamily(
            "stockade_vm_pool_ready", "VM Keeps started ahead and not handed out", value=ready
        )
        takes = CounterMetricFamily(
            "stockade_vm_pool_takes",
            "VM Keep creates, by whether a warm Keep was ready (hit) or one was booted then (miss)",
            labels=["result"],
        )
        takes.add_metric(["hit"], hits)
        takes.add_metric(["miss"], misses)
        yield takes


class _KeepPool(Collector):
    """stockade_keep_pool_ready{backend}, stockade_keep_pool_takes{result}
    and stockade_keep_pool_retired{reason}: the warm pool of process Keeps
    (stockade.host.keeppool), read at scrape time from ``stats()`` =
    (ready per backend, hits, misses, retired per reason)."""

    def __init__(self, stats: Callable[[], tuple[dict[str, int], int, int, dict[str, int]]]) -> None:
        self._stats = stats

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from self.collect()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        ready, hits, misses, retired = self._stats()
        gauge = GaugeMetricFamily(
            "stockade_keep_pool_ready",
            "Process Keeps forked ahead, not handed out (no owner, no client yet)",
            labels=["backend"],
        )
        for backend, count in ready.items():
            gauge.add_metric([backend], count)
        yield gauge
        takes = CounterMetricFamily(
            "stockade_keep_pool_takes",
            "Process Keep creates, by whether a warm Keep was handed out (hit) or one was forked (miss)",
            labels=["result"],
        )
        takes.add_metric(["hit"], hits)
        takes.add_metric(["miss"], misses)
        yield takes
        gone = CounterMetricFamily(
            "stockade_keep_pool_retired",
            "Pooled Keeps killed without being handed out, by why (dead, aged, stale, closed)",
            labels=["reason"],
        )
        for reason, count in retired.items():
            gone.add_metric([reason], count)
        yield gone


class _Fleet(Collector):
    """stockade_fleet_registered, stockade_fleet_drained,
    stockade_fleet_errors_total and stockade_fleet_last_refresh_seconds:
    this host's fleet registration (stockade.host.fleet), read at scrape
    time from ``stats()`` = (registered, drained, errors, seconds since the
    last successful refresh or None)."""

    def __init__(self, stats: Callable[[], tuple[bool, bool, int, float | None]]) -> None:
        self._stats = stats

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from self.collect()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        registered, drained, errors, age = self._stats()
        yield GaugeMetricFamily(
            "stockade_fleet_registered",
            "1 when this host's fleet record and lease were written at the last attempt",
            value=int(registered),
        )
        yield GaugeMetricFamily(
            "stockade_fleet_drained",
            "1 when an operator drained this host (no new placements)",
            value=int(drained),
        )
        yield CounterMetricFamily(
            "stockade_fleet_errors",
            "Failed fleet registrations or refreshes (etcd unreachable or refusing)",
            value=errors,
        )
        yield GaugeMetricFamily(
            "stockade_fleet_last_refresh_seconds",
            "Seconds since the last successful fleet refresh (NaN: never)",
            value=float("nan") if age is None else age,
        )


class Metrics:
    """The Prometheus metrics of one manager app, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.create_seconds = Histogram(
            "stockade_keep_create_seconds",
            "Time to create and start a Keep (successful creates)",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        )
        self.creates = Counter(
            "stockade_keep_creates",
            "Keep creation attempts, by outcome (ok, quota-exceeded, ports-exhausted, loader-failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.relay_bytes = Counter(
            "stockade_relay_bytes",
            "Bytes relayed between clients and Keeps (TLS ciphertext after the hello)",
            ["direction"],
            registry=self.registry,
        )
        self.evidence = Counter(
            "stockade_evidence_requests",
            "Attestation reports the sim PSP processes signed for Keeps (counted when a Keep ends)",
            ["backend"],
            registry=self.registry,
        )
        self.requests = Counter(
            "stockade_api_requests",
            "API requests, by route template and response status (101: WebSocket accepted)",
            ["route", "status"],
            registry=self.registry,
        )
        self.connections_shed = Counter(
            "stockade_connections_shed",
            "Connections the flood guard closed (stockade.host.guard), by reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in SHED_REASONS:
            self.connections_shed.labels(reason)
        for outcome in ("ok", "quota-exceeded", "ports-exhausted", "loader-failed"):
            self.creates.labels(outcome)
        for direction in ("to_keep", "to_client"):
            self.relay_bytes.labels(direction)
        self.evidence.labels("sim")

    def watch(self, states: Callable[[], Iterable[str]]) -> None:
        """Expose stockade_keeps{state} from ``states()`` (the state of every
        Keep in the registry, read at scrape time)."""
        self.registry.register(_KeepStates(states))

    def watch_pool(self, stats: Callable[[], tuple[int, int, int]]) -> None:
        """Expose the warm pool of VM Keeps from ``stats()`` = (ready, hits, misses)."""
        self.registry.register(_VmPool(stats))

    def watch_keep_pool(self, stats: Callable[[], tuple[dict[str, int], int, int, dict[str, int]]]) -> None:
        """Expose the warm pool of process Keeps (see _KeepPool)."""
        self.registry.register(_KeepPool(stats))

    def watch_fleet(self, stats: Callable[[], tuple[bool, bool, int, float | None]]) -> None:
        """Expose the fleet registration from ``stats()`` (see _Fleet)."""
        self.registry.register(_Fleet(stats))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: count every HTTP and WebSocket request by route
    template (never the concrete path, which holds Keep ids) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        status: int | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if status is None:
                if message["type"] in ("http.response.start", "websocket.http.response.start"):
                    status = int(message["status"])
                elif message["type"] == "websocket.accept":
                    status = 101
                elif message["type"] == "websocket.close":
                    status = 403  # closed before accepting: the server's handshake denial
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            if status is None:
                status = 500
            raise
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) if route is not None else None
            self.metrics.requests.labels(template or "unmatched", str(status or 0)).inc()
