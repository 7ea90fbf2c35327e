"""Prometheus metrics (`metrics.listen`): what admins watch from their existing tools.

Decisions are counted as the audit log writes them (by protocol, outcome, reason and,
for RADIUS, the configured client name: never an address, so the label set stays
bounded). RADIUS packet counters are read from the listener when scraped; users by
state and enrollment deadlines due within 7 days are read from the store when scraped,
where its other calls run (`store/worker.py`: off the reactor for PostgreSQL), and the
page is then rendered in the reactor's thread. `mfa_bridge_store_up` says whether the
store answered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from bridge import __version__
from bridge.core.types import Decision, State
from bridge.store import RecordStore, StoreError
from bridge.store.worker import StoreWorker
from bridge.workers import Sample, add_samples, counter_samples, sample_key

WEEK = 7 * 86_400
_STATES = ("grace", "pending", "active", "locked")
_USERS_BY_STATE = (
    "SELECT CASE WHEN state IN ('grace', 'pending') AND deadline IS NOT NULL"
    " AND deadline <= ? THEN 'locked' ELSE state END, count(*) FROM users GROUP BY 1"
)
_DUE_SOON = (
    "SELECT count(*) FROM users WHERE state IN ('grace', 'pending')"
    " AND deadline > ? AND deadline <= ?"
)


class Metrics:
    """The daemon's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.page = self.registry  # what the page shows: with workers, their counters added
        self.before_scrape: list[Callable[[], Deferred[None]]] = []  # reads done first
        # The standard process_* (CPU, memory, file descriptors, start time) and
        # python_info, as every Prometheus client exports them; and which build this is.
        self.registry.register(PROCESS_COLLECTOR)
        self.registry.register(PLATFORM_COLLECTOR)
        Info(
            "mfa_bridge_build", "The running mfa-bridge: its version", registry=self.registry
        ).info({"version": __version__})
        self.decisions = Counter(
            "mfa_bridge_decisions",
            "Login decisions, by protocol, RADIUS client name, outcome and reason",
            ("protocol", "client", "outcome", "reason"),
            registry=self.registry,
        )
        self.lockouts = Counter(
            "mfa_bridge_lockouts",
            "Users locked by a login (too many wrong codes, or the enrollment period ended)",
            ("reason",),
            registry=self.registry,
        )
        self.directory_seconds = Histogram(
            "mfa_bridge_directory_seconds",
            "Time the directory took to check a password (search, if any, and bind)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.directory_failovers = Counter(
            "mfa_bridge_directory_failovers",
            "Times a directory server was given up for the next (unreachable, timed out)",
            ("server",),
            registry=self.registry,
        )

    def decision(self, decision: Decision, protocol: str, client_name: str) -> None:
        """Count one decision (called by the audit log for every line it writes)."""
        outcome, reason = decision.outcome.value, decision.reason.value
        self.decisions.labels(protocol, client_name, outcome, reason).inc()
        if decision.state_after is State.LOCKED and decision.state_before is not State.LOCKED:
            lock = decision.lock_reason.value if decision.lock_reason else "unknown"
            self.lockouts.labels(lock).inc()

    def samples(self) -> list[Sample]:
        """This process's counters, for the main process to add (a worker's answer)."""
        return counter_samples(self.registry.collect())

    def add_workers(self, counters: Callable[[], Deferred[list[Sample]]]) -> None:
        """Show the workers' counters added to this process's (asked before each page)."""
        merged = _WithWorkers(self.registry)

        def ask() -> Deferred[None]:
            return counters().addCallback(merged.use)

        self.before_scrape.append(ask)
        self.page = CollectorRegistry(auto_describe=False)
        self.page.register(merged)

    def watch_radius(self, counters: Mapping[str, int]) -> None:
        """Export the RADIUS listener's packet counters (read when scraped)."""
        self.registry.register(_RadiusCollector(counters))

    def watch_eap(self, rounds: Mapping[str, int], dropped: Mapping[str, int]) -> None:
        """Export EAP's counters: rounds answered and conversations ended, and the
        unfinished conversations dropped (expired, evicted), read when scraped."""
        self.registry.register(_EapCollector(rounds, dropped))

    def watch_store(
        self, store: RecordStore, clock: Callable[[], float], worker: StoreWorker
    ) -> None:
        """Export users by state and deadlines due within 7 days (read when scraped)."""
        collector = _StoreCollector(store, clock, worker)
        self.registry.register(collector)
        self.before_scrape.append(collector.refresh)


class _WithWorkers(Collector):
    """The main process's registry, its counters and histograms plus the workers'."""

    def __init__(self, own: CollectorRegistry) -> None:
        self._own = own
        self._theirs: list[Sample] = []

    def use(self, samples: list[Sample]) -> None:
        self._theirs = samples

    def describe(self) -> list[Any]:
        return []  # nothing to check at registration: the names are the registry's

    def collect(self) -> Iterator[Any]:
        extra: dict[tuple[str, str], float] = {}
        add_samples(extra, self._theirs)
        for family in self._own.collect():
            if family.type in ("counter", "histogram"):
                family.samples = [
                    sample._replace(
                        value=sample.value + extra.pop(sample_key(sample.name, sample.labels), 0)
                    )
                    for sample in family.samples
                ]
                names = {family.name + suffix for suffix in _SUFFIXES}
                for key in [k for k in extra if k[0] in names]:
                    name, labels = key
                    family.add_sample(name, json.loads(labels), extra.pop(key))
            yield family


_SUFFIXES = ("", "_total", "_bucket", "_count", "_sum")


class _RadiusCollector(Collector):
    def __init__(self, counters: Mapping[str, int]) -> None:
        self._counters = counters

    def collect(self) -> Iterator[Any]:
        packets = CounterMetricFamily(
            "mfa_bridge_radius_packets", "RADIUS datagrams received, by kind", labels=["kind"]
        )
        dropped = CounterMetricFamily(
            "mfa_bridge_radius_dropped", "RADIUS datagrams dropped, by cause", labels=["cause"]
        )
        for name, value in sorted(self._counters.items()):
            if name.startswith("dropped."):
                dropped.add_metric([name.removeprefix("dropped.")], value)
            elif name in ("packets", "access-requests", "status-server", "duplicates"):
                packets.add_metric([name], value)
        yield packets
        yield dropped


class _EapCollector(Collector):
    def __init__(self, counts: Mapping[str, int], dropped: Mapping[str, int]) -> None:
        self._counts = counts
        self._dropped = dropped

    def collect(self) -> Iterator[Any]:
        steps = CounterMetricFamily(
            "mfa_bridge_eap_steps",
            "EAP rounds answered with a challenge, and conversations ended, by kind",
            labels=["kind"],
        )
        for kind in ("rounds", "accepts", "failures"):
            steps.add_metric([kind], self._counts.get(kind, 0))
        dropped = CounterMetricFamily(
            "mfa_bridge_eap_conversations_dropped",
            "Unfinished EAP conversations dropped: expired, or evicted at a bound",
            labels=["cause"],
        )
        for cause in ("expired", "evicted-client", "evicted-total"):
            dropped.add_metric([cause], self._dropped.get(cause, 0))
        yield steps
        yield dropped


class _StoreCollector(Collector):
    def __init__(self, store: RecordStore, clock: Callable[[], float], worker: StoreWorker) -> None:
        self._store = store
        self._clock = clock
        self._worker = worker
        self._counts: dict[str, int] | None = None  # None: the store did not answer
        self._due = 0

    def refresh(self) -> Deferred[None]:
        """Read the figures (where the store's calls run); the scrape then shows them."""

        def read(now: int) -> tuple[dict[str, int], int]:
            counts = dict.fromkeys(_STATES, 0)
            for state, count in self._store.query(_USERS_BY_STATE, (now,)):
                counts[str(state)] = int(count)
            ((due,),) = self._store.query(_DUE_SOON, (now, now + WEEK))
            return counts, int(due)

        def got(figures: tuple[dict[str, int], int]) -> None:
            self._counts, self._due = figures

        def failed(failure: Failure) -> None:
            failure.trap(StoreError)
            self._counts = None

        done = self._worker.run(read, int(self._clock()))
        return done.addCallbacks(got, failed)

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily(
            "mfa_bridge_store_up",
            "1 when the store answered the last scrape's queries, else 0",
            value=int(self._counts is not None),
        )
        if self._counts is None:
            return
        users = GaugeMetricFamily(
            "mfa_bridge_users", "Users the bridge knows, by MFA state", labels=["state"]
        )
        for state in _STATES:
            users.add_metric([state], self._counts[state])
        yield users
        yield GaugeMetricFamily(
            "mfa_bridge_enrollment_deadlines_next_7_days",
            "Users in their enrollment period whose deadline falls in the next 7 days",
            value=self._due,
        )


class MetricsResource(Resource):
    """GET /metrics: the registry in Prometheus's text format."""

    isLeaf = True  # noqa: N815 - Twisted's name

    def __init__(self, metrics: Metrics) -> None:
        Resource.__init__(self)
        self._metrics = metrics

    def render_GET(self, request: Request) -> int:  # noqa: N802 - Twisted's name
        """The page Prometheus scrapes (any path), once the store's figures are read."""
        reads = [refresh() for refresh in self._metrics.before_scrape]

        def render(_: object) -> None:
            if request.finished or request.channel is None:
                return  # the scraper has gone
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
            request.write(generate_latest(self._metrics.page))
            request.finish()

        DeferredList(reads).addCallback(render)
        return NOT_DONE_YET


class _QuietSite(Site):
    def log(self, request: http.Request) -> None:
        """Scrapes are not logged."""


def metrics_site(metrics: Metrics) -> Site:
    """The metrics endpoint as a twisted.web Site (no request log)."""
    return _QuietSite(MetricsResource(metrics))  # type: ignore[no-untyped-call]
