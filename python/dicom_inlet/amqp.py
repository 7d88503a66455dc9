"""Instance and study events to RabbitMQ (AMQP 0-9-1), confirmed before a row counts as delivered.

:class:`AmqpSink` publishes one JSON message per stored instance and per study (optionally
series) completion event on a durable topic exchange, persistent, with publisher confirms
(a RabbitMQ extension to AMQP 0-9-1) and ``mandatory`` set: the journal row is marked
delivered only once the broker confirmed the message. A broker that is down, refuses
(``basic.nack``) or has no queue bound for the routing key (``basic.return``) leaves the row
pending: the sink tries again with the server's doubling ``retry_backoff`` (capped at
:data:`MAX_RETRY_PAUSE`), never parks it, and what is still unconfirmed at shutdown is
published after the next start. Imported only when a server has ``events`` (it needs the
``pika`` package: ``pip install "dicom-inlet[amqp]"``).

Routing keys, for binding (topic exchange: ``*`` one word, ``#`` any):
``instance.<calling AE>.<modality>``, ``study.<modalities>``, ``series.<modality>``; a word
is made of the value with ``.``, ``*``, ``#`` and blanks turned into ``_`` (``none`` when
empty); a study's modalities are joined with ``+`` (``study.CT+SR``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pika  # type: ignore[import-untyped]
import pika.exceptions  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicom_inlet import _core
    from dicom_inlet.delivery import Completion

__all__ = ["DEFAULT_EXCHANGE", "MAX_RETRY_PAUSE", "AmqpSink", "PublishStats"]

logger = logging.getLogger("dicom_inlet")

#: The exchange events go to unless told otherwise.
DEFAULT_EXCHANGE = "dicom-inlet"
#: The longest pause between two attempts while the broker is down or refusing: an operator
#: who brings it back expects the backlog to move within half a minute.
MAX_RETRY_PAUSE = 30.0
#: Messages per JSON ``format`` field; bumped when a field changes meaning.
FORMAT = 1

_NOT_A_WORD = re.compile(r"[.*#\s]")


def _word(value: str) -> str:
    """One word of a routing key: topic bindings split keys on dots."""
    return _NOT_A_WORD.sub("_", value.strip()) or "none"


@dataclass
class PublishStats:
    """What the sink did since it started, for ``/metrics``."""

    published: int = 0
    confirmed: int = 0
    #: Attempts that failed: broker unreachable, connection lost, nack, unroutable.
    failed: int = 0


@dataclass
class _Message:
    routing_key: str
    body: bytes
    message_id: str
    kind: str
    #: Called on the sink's thread once the broker confirmed the message.
    confirmed: Callable[[], None]


class AmqpSink:
    """Publish instance and study events to a RabbitMQ exchange, confirmed.

    Give it as ``StoreSCPServer(events=AmqpSink(...))`` (or ``events="amqp://..."`` for the
    defaults). It runs beside the user's callbacks: an instance's event is published once
    its callbacks returned, and its journal row is marked delivered once the broker
    confirmed; a study's event after its study callbacks, and it counts as done once
    confirmed.

    Args:
        url: The broker, as a pika URL: ``amqp://user:password@host:5672/vhost`` (``amqps://``
            for TLS; query parameters such as ``heartbeat`` or ``blocked_connection_timeout``
            as pika documents them).
        exchange: The durable topic exchange, declared if missing.
        mandatory: Publish with ``mandatory``: a message no queue is bound for comes back
            and its row waits (and blocks those after it) until a queue is bound. False: the
            broker drops such messages and confirms them.
        series: Also publish series completion events.
        buffer: Events waiting for the broker in memory before the dispatcher (and then the
            associations) wait for it; the journal keeps them all the same.

    Raises:
        ValueError: ``url`` is not an ``amqp://`` or ``amqps://`` URL pika can read, or
            ``exchange`` or ``buffer`` is unusable.
    """

    def __init__(
        self,
        url: str,
        *,
        exchange: str = DEFAULT_EXCHANGE,
        mandatory: bool = True,
        series: bool = False,
        buffer: int = 10_000,
    ) -> None:
        scheme = urlsplit(url).scheme
        if scheme not in ("amqp", "amqps"):
            raise ValueError(f"events: {url!r} is not an amqp:// or amqps:// URL")
        try:
            self._parameters = pika.URLParameters(url)
        except Exception as error:
            raise ValueError(f"events: cannot read {url!r}: {error}") from None
        if not exchange or len(exchange) > 255:
            raise ValueError("events: the exchange name must have 1 to 255 characters")
        if buffer < 1:
            raise ValueError("events: buffer must be at least 1")
        self.url = url
        self.exchange = exchange
        self.mandatory = mandatory
        self.series = series
        self.stats = PublishStats()
        self._where = f"{self._parameters.host}:{self._parameters.port}"
        self._queue: queue.Queue[_Message] = queue.Queue(buffer)
        self._buffer = buffer
        self._connection: Any = None
        self._channel: Any = None
        self._thread: threading.Thread | None = None
        self._node_id = ""
        self._data_dir = ""
        self._backoff = 1.0
        self._stop = threading.Event()
        self._closing = threading.Event()
        # Set when the sink gave up at shutdown: the rest stays pending for the next start.
        self._abandoned = threading.Event()
        self._full_warned = False
        # The message being published (taken from the queue, not yet confirmed).
        self._in_flight = 0

    def __repr__(self) -> str:
        return f"AmqpSink({self._where!r}, exchange={self.exchange!r})"

    # The server's side ---------------------------------------------------------------------

    def start(self, node_id: str, data_dir: str, backoff: float, stop: threading.Event) -> None:
        """Start publishing on a thread of its own. ``stop`` is the server's shutdown: once
        set, the first failure ends the attempts."""
        if self._thread is not None:
            raise RuntimeError(f"{self!r} is already serving a server")
        self._node_id = node_id
        self._data_dir = data_dir
        self._backoff = backoff
        self._stop = stop
        self._closing.clear()
        self._abandoned.clear()
        pika_logger = logging.getLogger("pika")
        if pika_logger.level == logging.NOTSET:
            # pika logs each refused connection with a traceback; ours says it in one line.
            pika_logger.setLevel(logging.CRITICAL)
        self._thread = threading.Thread(target=self._run, name="dicom-inlet-amqp", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Publish what is waiting (while the broker takes it), then disconnect."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def instance(self, scp: _core.Server, stored: _core.StoredInstance, dataset: Dataset) -> None:
        """Queue the event of a stored instance; its row is marked delivered once confirmed."""
        journal_id = stored.journal_id
        modality = str(dataset.get("Modality", "") or "")
        path = os.fspath(stored.path)
        body = {
            "format": FORMAT,
            "event": "instance",
            "node": self._node_id,
            "journal_id": journal_id,
            "sop_class_uid": stored.sop_class_uid,
            "sop_instance_uid": stored.sop_instance_uid,
            "study_instance_uid": str(dataset.get("StudyInstanceUID", "") or ""),
            "series_instance_uid": str(dataset.get("SeriesInstanceUID", "") or ""),
            "patient_id": str(dataset.get("PatientID", "") or ""),
            "accession_number": str(dataset.get("AccessionNumber", "") or ""),
            "modality": modality,
            "transfer_syntax_uid": stored.transfer_syntax_uid,
            "path": os.path.relpath(path, self._data_dir),
            "file": path,
            "bytes": stored.bytes,
            "calling_ae": stored.calling_ae,
            "called_ae": stored.called_ae,
            "peer": f"{stored.peer_host}:{stored.peer_port}",
        }

        def confirmed() -> None:
            if journal_id is not None:
                scp.delivered(journal_id)

        self._submit(
            _Message(
                f"instance.{_word(stored.calling_ae)}.{_word(modality)}",
                json.dumps(body).encode(),
                f"instance:{journal_id}",
                "instance",
                confirmed,
            )
        )

    def completion(self, scp: _core.Server, event: _core.Completed, completion: Completion) -> None:
        """Queue a study (series) event; it counts as done once confirmed."""
        if completion.level == "series" and not self.series:
            scp.completed(event, True)
            return
        modalities = sorted({s.modality for s in completion.series if s.modality})
        key = "+".join(_word(m) for m in modalities) or "none"
        body = {
            "format": FORMAT,
            "event": completion.level,
            "node": self._node_id,
            "uid": completion.uid,
            "study_instance_uid": completion.study_instance_uid,
            "patient_id": completion.patient_id,
            "revision": completion.revision,
            "modalities": modalities,
            "series_count": len(completion.series),
            "instance_count": len(completion.instances),
            "series": [
                {
                    "series_instance_uid": s.series_instance_uid,
                    "modality": s.modality,
                    "instances": [
                        {
                            "sop_instance_uid": i.sop_instance_uid,
                            "sop_class_uid": i.sop_class_uid,
                            "path": os.path.relpath(i.path, self._data_dir),
                            "file": os.fspath(i.path),
                        }
                        for i in s.instances
                    ],
                }
                for s in completion.series
            ],
        }
        self._submit(
            _Message(
                f"{completion.level}.{key}",
                json.dumps(body).encode(),
                f"{completion.level}:{completion.uid}:{completion.revision}",
                completion.level,
                lambda: scp.completed(event, True),
            )
        )

    def waiting(self) -> int:
        """Events queued or being published, not yet confirmed."""
        return self._queue.qsize() + self._in_flight

    def _submit(self, message: _Message) -> None:
        while not self._abandoned.is_set():
            try:
                self._queue.put(message, timeout=1.0)
                return
            except queue.Full:
                if not self._full_warned:
                    self._full_warned = True
                    logger.warning(
                        "events: %d events wait for the broker at %s; new instances wait "
                        "for room (the senders are slowed down)",
                        self._buffer,
                        self._where,
                    )
        # Given up at shutdown: its row stays pending and is published after the next start.

    # The sink's thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException:
            # Not expected; said loudly: what it had stays pending for the next start.
            logger.exception("events: the publisher to %s stopped", self._where)
            self._give_up(self._in_flight)
        finally:
            self._disconnect()

    def _serve(self) -> None:
        while True:
            try:
                message = self._queue.get(timeout=1.0)
            except queue.Empty:
                if self._closing.is_set():
                    return
                self._idle()
                continue
            self._in_flight = 1
            delivered = self._deliver(message)
            self._in_flight = 0
            if not delivered:
                self._give_up(1)
                return

    def _deliver(self, message: _Message) -> bool:
        """Publish until confirmed; False when shutdown ended the attempts."""
        attempt = 0
        while True:
            failure = self._publish(message)
            if failure is None:
                if attempt:
                    logger.info("events: the broker at %s takes them again", self._where)
                self._full_warned = False
                message.confirmed()
                return True
            self.stats.failed += 1
            attempt += 1
            pause = min(MAX_RETRY_PAUSE, max(self._backoff, 0.05) * 2 ** (attempt - 1))
            if attempt == 1:
                logger.warning(
                    "events: %s %s not published (%s); it waits in the journal, trying again "
                    "every %s s at most",
                    message.kind,
                    message.message_id,
                    failure,
                    f"{MAX_RETRY_PAUSE:g}",
                )
            if self._stop.is_set():
                return False
            # A retry's pause, cut short by shutdown; not a synchronisation.
            self._stop.wait(pause)

    def _publish(self, message: _Message) -> str | None:
        """One attempt; None once confirmed, else why not."""
        try:
            channel = self._connect()
            self.stats.published += 1
            channel.basic_publish(
                exchange=self.exchange,
                routing_key=message.routing_key,
                body=message.body,
                properties=pika.BasicProperties(
                    content_type="application/json",
                    delivery_mode=pika.DeliveryMode.Persistent,
                    message_id=message.message_id,
                    type=message.kind,
                    app_id="dicom-inlet",
                    timestamp=int(time.time()),
                ),
                mandatory=self.mandatory,
            )
        except pika.exceptions.UnroutableError:
            return f"no queue is bound for routing key {message.routing_key!r}"
        except pika.exceptions.NackError:
            return "the broker refused it (basic.nack)"
        except pika.exceptions.ChannelClosedByBroker as error:
            self._disconnect()
            return f"the broker closed the channel: {error.reply_code} {error.reply_text}"
        except (pika.exceptions.AMQPError, OSError) as error:
            self._disconnect()
            return f"broker at {self._where} unavailable: {type(error).__name__} {error}".strip()
        except Exception as error:
            # pika in a state it did not expect (a connection torn down mid-call): start over
            # on a new connection rather than lose the thread.
            logger.debug("events: publishing failed", exc_info=True)
            self._disconnect()
            return f"publishing failed: {type(error).__name__} {error}".strip()
        self.stats.confirmed += 1
        return None

    def _connect(self) -> Any:
        if self._channel is not None:
            return self._channel
        connection = pika.BlockingConnection(self._parameters)
        try:
            channel = connection.channel()
            channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
            channel.confirm_delivery()
        except BaseException:
            _quietly_close(connection)
            raise
        self._connection, self._channel = connection, channel
        logger.info(
            "events: publishing to exchange %r at %s, confirmed", self.exchange, self._where
        )
        return channel

    def _idle(self) -> None:
        """Answer the broker's heartbeats while nothing is to publish."""
        if self._connection is None:
            return
        try:
            self._connection.process_data_events(time_limit=0)
        except (pika.exceptions.AMQPError, OSError):
            self._disconnect()

    def _disconnect(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            _quietly_close(connection)

    def _give_up(self, left: int) -> None:
        self._abandoned.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            left += 1
        logger.warning(
            "events: %d not confirmed by the broker at %s; they stay in the journal and are "
            "published after the next start",
            left,
            self._where,
        )


def _quietly_close(connection: Any) -> None:
    try:
        if connection.is_open:
            connection.close()
    except (pika.exceptions.AMQPError, OSError):
        pass


def sink_of(events: str | AmqpSink) -> AmqpSink:
    """The sink for a server's ``events``: a URL with the defaults, or the sink given."""
    if isinstance(events, AmqpSink):
        return events
    if not isinstance(events, str):
        raise TypeError(f"events must be an amqp:// URL or an AmqpSink, got {events!r}")
    return AmqpSink(events)
