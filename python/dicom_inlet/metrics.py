"""Prometheus metrics, ``/healthz`` and ``/readyz`` for a :class:`~dicom_inlet.StoreSCPServer`.

Imported only when a server has a ``metrics_port`` (it needs the ``prometheus_client``
package: ``pip install "dicom-inlet[metrics]"``). Everything counted here comes from what the
core reports anyway: its running totals (``stats()``), one record per association and one event
per refused C-STORE; a stored instance costs nothing more unless callbacks are timed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from dicom_inlet import _core

if TYPE_CHECKING:
    from dicom_inlet.amqp import AmqpSink

__all__ = ["MAX_CALLING_AES", "Metrics"]

#: Calling AE titles get a label value each up to this many; later ones are counted as
#: ``calling_ae="other"``: the titles come from the network, and each value is a series kept
#: for the process's lifetime.
MAX_CALLING_AES = 200

#: How the core words the outcome of a failed TLS handshake in an association record.
_TLS_FAILED = "TLS handshake failed"

#: Callbacks run from microseconds (a counter) to seconds (an upload).
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _LiveTotals(Collector):
    """The core's running totals, read at each scrape: they move while associations are open,
    where the per calling AE counters move when an association ends."""

    def __init__(self, stats: Callable[[], _core.ServerStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        stats = self._stats()
        open_now = GaugeMetricFamily(
            "dicom_inlet_associations_open", "Associations being served now."
        )
        stored = CounterMetricFamily(
            "dicom_inlet_live_instances_stored",
            "Instances stored since the server started, counted as each completes.",
        )
        failed = CounterMetricFamily(
            "dicom_inlet_live_instances_failed",
            "C-STORE requests refused since the server started, counted as each is answered.",
        )
        received = CounterMetricFamily(
            "dicom_inlet_live_received_bytes",
            "Data set bytes received since the server started.",
        )
        if stats is not None:
            open_now.add_metric([], stats.associations)
            stored.add_metric([], stats.instances)
            failed.add_metric([], stats.failures)
            received.add_metric([], stats.bytes)
        yield from (open_now, stored, failed, received)


class _Delivery(Collector):
    """The journal's rows waiting for delivery and the broker's counts, read at each scrape:
    a backlog that grows, or an oldest row that ages, is what an operator alerts on."""

    def __init__(
        self, backlog: Callable[[], tuple[int, float | None]] | None, sink: AmqpSink | None
    ) -> None:
        self._backlog = backlog
        self._sink = sink

    def collect(self) -> Iterator[Any]:
        if self._backlog is not None:
            waiting = GaugeMetricFamily(
                "dicom_inlet_journal_backlog",
                "Journal rows acknowledged and not yet delivered (callbacks or broker).",
            )
            lag = GaugeMetricFamily(
                "dicom_inlet_delivery_lag_seconds",
                "Age of the oldest journal row waiting for delivery (0: none waits).",
            )
            up = GaugeMetricFamily(
                "dicom_inlet_journal_up", "1 if the journal answered this scrape, else 0."
            )
            try:
                count, oldest = self._backlog()
            except Exception:
                up.add_metric([], 0)
            else:
                up.add_metric([], 1)
                waiting.add_metric([], count)
                lag.add_metric([], 0.0 if oldest is None else max(0.0, time.time() - oldest))
            yield from (waiting, lag, up)
        sink = self._sink
        if sink is not None:
            labels = ["exchange"]
            published = CounterMetricFamily(
                "dicom_inlet_broker_publishes",
                "Events published to the broker (attempts, retries included).",
                labels=labels,
            )
            confirmed = CounterMetricFamily(
                "dicom_inlet_broker_confirms", "Events the broker confirmed.", labels=labels
            )
            failed = CounterMetricFamily(
                "dicom_inlet_broker_failures",
                "Publish attempts that failed: broker down, connection lost, nack, unroutable.",
                labels=labels,
            )
            waiting_events = GaugeMetricFamily(
                "dicom_inlet_broker_waiting",
                "Events in memory waiting for the broker's confirm.",
                labels=labels,
            )
            stats = sink.stats
            published.add_metric([sink.exchange], stats.published)
            confirmed.add_metric([sink.exchange], stats.confirmed)
            failed.add_metric([sink.exchange], stats.failed)
            waiting_events.add_metric([sink.exchange], sink.waiting())
            yield from (published, confirmed, failed, waiting_events)


class Metrics:
    """The metrics of one server and the HTTP endpoint that serves them.

    Args:
        stats: The running core server's totals (None while it is not running).
        ready: Why the server is not ready (None: ready), asked at each ``/readyz``.
        node_id: This node's id, exported as ``dicom_inlet_node_info``.
        backlog: The journal's waiting rows and the arrival time of the oldest (None: no
            journal).
        sink: The broker sink whose counts to export, if any.
        certificate: The subject and notAfter (seconds since the epoch) of the TLS
            certificate served now, and the earliest nextUpdate of its CRLs (None without),
            if the server serves TLS.
    """

    def __init__(
        self,
        stats: Callable[[], _core.ServerStats | None],
        ready: Callable[[], str | None],
        node_id: str,
        backlog: Callable[[], tuple[int, float | None]] | None = None,
        sink: AmqpSink | None = None,
        certificate: Callable[[], tuple[str, int, int | None] | None] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self._ready = ready
        self._calling_aes: set[str] = set()
        self._lock = threading.Lock()
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.registry.register(_LiveTotals(stats))
        self.registry.register(_Delivery(backlog, sink))
        if certificate is not None:
            self.registry.register(_Certificate(certificate))
        info = GaugeMetricFamily(
            "dicom_inlet_node_info", "This node's id (value 1).", labels=["node_id"]
        )
        info.add_metric([node_id], 1)
        self.registry.register(_Fixed(info))
        ae = ["calling_ae"]
        self.associations = Counter(
            "dicom_inlet_associations",
            "Associations ended, by outcome (released, rejected, aborted, aborted by peer, "
            "connection closed) and calling AE title.",
            ["outcome", *ae],
            registry=self.registry,
        )
        self.stored = Counter(
            "dicom_inlet_instances_stored",
            "Instances stored, by calling AE title, counted when their association ends.",
            ae,
            registry=self.registry,
        )
        self.failed = Counter(
            "dicom_inlet_instances_failed",
            "C-STORE requests refused, by DIMSE status (hex) and calling AE title.",
            ["status", *ae],
            registry=self.registry,
        )
        self.received = Counter(
            "dicom_inlet_received_bytes",
            "Data set bytes received, by calling AE title, counted when their association ends.",
            ae,
            registry=self.registry,
        )
        self.tls_failed = Counter(
            "dicom_inlet_tls_handshakes_failed",
            "TLS handshakes that failed (plain TCP, untrusted or expired certificate, stall).",
            registry=self.registry,
        )
        self.callback_seconds = Histogram(
            "dicom_inlet_callback_seconds",
            "Time each callback took per stored instance (reading the file back excluded).",
            ["callback"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def _ae(self, title: str) -> str:
        with self._lock:
            if title in self._calling_aes:
                return title
            if len(self._calling_aes) < MAX_CALLING_AES:
                self._calling_aes.add(title)
                return title
        return "other"

    def association_ended(self, record: _core.AssociationRecord) -> None:
        ae = self._ae(record.calling_ae)
        self.associations.labels(record.outcome, ae).inc()
        if record.instances:
            self.stored.labels(ae).inc(record.instances)
        if record.bytes:
            self.received.labels(ae).inc(record.bytes)
        if record.detail is not None and record.detail.startswith(_TLS_FAILED):
            self.tls_failed.inc()

    def store_failed(self, failed: _core.FailedStore) -> None:
        self.failed.labels(f"0x{failed.status:04X}", self._ae(failed.calling_ae)).inc()

    def timed(self, callback: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """``callback``, observed in ``dicom_inlet_callback_seconds`` (exceptions too)."""
        histogram = self.callback_seconds.labels(getattr(callback, "__name__", repr(callback)))

        def timed_callback(dataset: Any) -> Any:
            start = time.perf_counter()
            try:
                return callback(dataset)
            finally:
                histogram.observe(time.perf_counter() - start)

        timed_callback.__name__ = getattr(callback, "__name__", repr(callback))
        return timed_callback

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on a thread; returns the bound port.

        Raises:
            OSError: The port cannot be bound.
        """
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz":
                return _text(start_response, "200 OK", "alive\n")
            if path == "/readyz":
                why_not = self._ready()
                if why_not is None:
                    return _text(start_response, "200 OK", "ready\n")
                return _text(start_response, "503 Service Unavailable", f"not ready: {why_not}\n")
            if path == "/metrics":
                return metrics_app(environ, start_response)
            return _text(start_response, "404 Not Found", "try /metrics, /healthz or /readyz\n")

        self._http = make_server(
            host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="dicom-inlet-metrics", daemon=True
        )
        self._thread.start()
        return int(self._http.server_port)

    def close(self) -> None:
        """Stop serving HTTP; idempotent."""
        http, self._http = self._http, None
        if http is not None:
            http.shutdown()
            http.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class _Certificate(Collector):
    """When the served TLS certificate expires, read at each scrape (a reload changes it): an
    expired certificate is an outage, so this is what to alert on, weeks ahead. With CRLs,
    when the next ones are due: past it, certificates revoked since still get in."""

    def __init__(self, certificate: Callable[[], tuple[str, int, int | None] | None]) -> None:
        self._certificate = certificate

    def collect(self) -> Iterator[Any]:
        expiry = GaugeMetricFamily(
            "dicom_inlet_tls_certificate_expiry_timestamp_seconds",
            "When the TLS certificate served now expires (its notAfter), by subject.",
            labels=["subject"],
        )
        due = GaugeMetricFamily(
            "dicom_inlet_tls_crl_next_update_timestamp_seconds",
            "When the CRLs checked against are due for renewal (their earliest nextUpdate).",
        )
        served = self._certificate()
        if served is not None:
            subject, not_after, next_update = served
            expiry.add_metric([subject], not_after)
            if next_update is not None:
                due.add_metric([], next_update)
        yield expiry
        yield due


class _Fixed(Collector):
    """A metric whose value never changes."""

    def __init__(self, family: GaugeMetricFamily) -> None:
        self._family = family

    def collect(self) -> Iterator[Any]:
        yield self._family


def _text(start_response: Callable[..., Any], status: str, body: str) -> list[bytes]:
    data = body.encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))]
    )
    return [data]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """A scrape or a health check that stalls does not hold up the others."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """Health checks come every few seconds: no access log on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass
