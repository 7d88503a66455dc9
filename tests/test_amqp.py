"""Events to RabbitMQ: a real broker (Debian's rabbitmq-server, tests/services.py) and pika
consuming them. A journal row counts as delivered only once the broker confirmed its event;
a broker that is down, restarts, refuses (nack) or has nowhere to route leaves rows pending,
and they go once it takes them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, SCU_AET, TIMEOUT, make_dataset, send, statuses, wait_until, write_file
from services import RabbitMQ, rabbitmq
from test_metrics import value

from dicom_inlet import StoreSCPServer, delivery

pika = pytest.importorskip("pika")
from dicom_inlet.amqp import AmqpSink  # noqa: E402 (needs pika)

__all__ = ["rabbitmq"]  # a fixture, used by name


class Broker:
    """A test's own exchange and durable queue on the session's broker, and what it holds."""

    def __init__(self, server: RabbitMQ, *, bind: str | None = "#", **arguments: Any) -> None:
        self.server = server
        self.exchange = f"inlet-{uuid.uuid4().hex[:8]}"
        self.queue = f"{self.exchange}-all"
        server.declare(self.exchange, self.queue, bind=bind, **arguments)

    def _channel(self) -> Any:
        broker = self

        class Channel:
            def __enter__(self) -> Any:
                self.connection = pika.BlockingConnection(pika.URLParameters(broker.server.url))
                return self.connection.channel()

            def __exit__(self, *exc: object) -> None:
                self.connection.close()

        return Channel()

    def bind(self, key: str = "#") -> None:
        with self._channel() as channel:
            channel.queue_bind(self.queue, self.exchange, routing_key=key)

    def take(self, limit: int | None = None) -> list[tuple[str, Any, dict[str, Any]]]:
        """The queue's messages (up to ``limit``), acknowledged: (routing key, properties,
        JSON body) each. Confirmed messages are in the queue already: nothing to wait for."""
        messages = []
        with self._channel() as channel:
            while limit is None or len(messages) < limit:
                method, properties, body = channel.basic_get(self.queue, auto_ack=True)
                if method is None:
                    break
                messages.append((method.routing_key, properties, json.loads(body)))
        return messages

    def sink(self, **kwargs: Any) -> AmqpSink:
        return AmqpSink(self.server.url, exchange=self.exchange, **kwargs)


def delivered(data_dir: Path) -> int:
    return len(delivery.instances(data_dir, state="delivered"))


def pending(data_dir: Path) -> int:
    return len(delivery.instances(data_dir, state="pending"))


def files(tmp_path: Path, count: int, **kwargs: Any) -> list[Path]:
    study = kwargs.pop("study_uid", None) or make_dataset().StudyInstanceUID
    series = make_dataset().SeriesInstanceUID
    made = [
        make_dataset(study_uid=study, series_uid=series, instance_number=i + 1, **kwargs)
        for i in range(count)
    ]
    # Named by SOP Instance UID.
    return [write_file(ds, tmp_path / "src" / f"{ds.SOPInstanceUID}.dcm") for ds in made]


def test_instance_and_study_events_arrive_confirmed_as_json_with_routing_keys(
    rabbitmq: RabbitMQ, server_factory: Any, data_dir: Path, tmp_path: Path
):
    broker = Broker(rabbitmq)
    seen: list[str] = []
    server = server_factory(
        callbacks=[lambda ds: seen.append(ds.SOPInstanceUID)],
        events=broker.sink(),
        events_on_release=True,
        node_id="node-a",
    )
    sent = files(tmp_path, 3)
    assert statuses(send(server.port, sent)) == [0, 0, 0]
    assert wait_until(lambda: delivered(data_dir) == 3 and len(delivery.studies(data_dir)) == 1)
    assert wait_until(lambda: delivery.studies(data_dir)[0].events == 1)
    server.shutdown()

    messages = broker.take()
    keys = [key for key, _, _ in messages]
    assert keys == [f"instance.{SCU_AET}.CT"] * 3 + ["study.CT"], keys
    instances = [body for _, _, body in messages[:3]]
    study = messages[3][2]
    rows = {e.sop_instance_uid: e for e in delivery.instances(data_dir)}
    for body, path in zip(instances, sent, strict=True):
        row = rows[body["sop_instance_uid"]]
        assert body["event"] == "instance"
        assert body["journal_id"] == row.id
        assert body["node"] == "node-a"
        assert (body["calling_ae"], body["called_ae"]) == (SCU_AET, "ANY-SCP")
        assert body["peer"].startswith(f"{HOST}:")
        assert body["modality"] == "CT"
        assert body["study_instance_uid"] == study["study_instance_uid"]
        assert body["transfer_syntax_uid"] == row.transfer_syntax_uid
        assert Path(body["file"]) == row.path and (data_dir / body["path"]) == row.path
        assert body["bytes"] == row.bytes
        assert Path(body["file"]).read_bytes()[-row.bytes :] == path.read_bytes()[-row.bytes :]
    assert [b["sop_instance_uid"] for b in instances] == seen
    for _, properties, _ in messages:
        assert properties.delivery_mode == 2
        assert properties.content_type == "application/json"
    assert (study["event"], study["revision"]) == ("study", 0)
    assert (study["instance_count"], study["series_count"]) == (3, 1)
    listed = [i["sop_instance_uid"] for s in study["series"] for i in s["instances"]]
    assert listed == seen
    assert pending(data_dir) == 0


def test_broker_down_at_start_rows_wait_pending_then_all_go(
    rabbitmq: RabbitMQ, server_factory: Any, data_dir: Path, tmp_path: Path
):
    broker = Broker(rabbitmq)
    sink = broker.sink()
    rabbitmq.stop()
    try:
        server = server_factory(events=sink, retry_backoff=0.1, metrics_port=0)
        sent = files(tmp_path, 5)
        # The gateway keeps receiving while the broker is away.
        assert statuses(send(server.port, sent)) == [0] * 5
        assert wait_until(lambda: sink.stats.failed >= 2)
        # Nothing confirmed, so nothing delivered, and nothing parked.
        assert (delivered(data_dir), pending(data_dir)) == (0, 5)
        assert delivery.parked(data_dir) == []
        assert value(server.metrics_port, "dicom_inlet_journal_backlog") == 5
        assert value(server.metrics_port, "dicom_inlet_delivery_lag_seconds") > 0
        failures = "dicom_inlet_broker_failures_total"
        assert value(server.metrics_port, failures, exchange=broker.exchange) >= 2
    finally:
        rabbitmq.start()
    assert wait_until(lambda: delivered(data_dir) == 5, TIMEOUT * 2)
    assert value(server.metrics_port, "dicom_inlet_journal_backlog") == 0
    confirms = "dicom_inlet_broker_confirms_total"
    assert value(server.metrics_port, confirms, exchange=broker.exchange) == 5
    server.shutdown()
    uids = sorted(body["sop_instance_uid"] for _, _, body in broker.take())
    assert uids == sorted(e.sop_instance_uid for e in delivery.instances(data_dir))


def test_a_broker_restart_mid_stream_loses_no_acknowledged_instance(
    rabbitmq: RabbitMQ, server_factory: Any, data_dir: Path, tmp_path: Path
):
    broker = Broker(rabbitmq)
    server = server_factory(events=broker.sink(), retry_backoff=0.1)
    batches = [files(tmp_path, 5) for _ in range(8)]
    acknowledged: set[str] = set()
    halfway = threading.Event()

    def sender() -> None:
        for number, batch in enumerate(batches):
            results = send(server.port, batch)
            for path, status in zip(batch, statuses(results), strict=True):
                if status == 0:
                    acknowledged.add(path.stem)
            if number == 1:
                halfway.set()

    thread = threading.Thread(target=sender)
    thread.start()
    try:
        assert halfway.wait(TIMEOUT)
        rabbitmq.stop()
        rabbitmq.start()
    finally:
        thread.join(TIMEOUT * 4)
    assert len(acknowledged) == 40
    assert wait_until(lambda: delivered(data_dir) == 40, TIMEOUT * 2)
    server.shutdown()
    confirmed = {body["sop_instance_uid"] for _, _, body in broker.take()}
    assert acknowledged <= confirmed


def test_unroutable_events_wait_until_a_queue_is_bound(
    rabbitmq: RabbitMQ, server_factory: Any, data_dir: Path, tmp_path: Path, caplog: Any
):
    broker = Broker(rabbitmq, bind=None)
    sink = broker.sink()
    server = server_factory(events=sink, retry_backoff=0.1)
    assert statuses(send(server.port, files(tmp_path, 2))) == [0, 0]
    assert wait_until(lambda: sink.stats.failed >= 1)
    assert (delivered(data_dir), pending(data_dir)) == (0, 2)
    assert "no queue is bound for routing key" in caplog.text
    broker.bind(f"instance.{SCU_AET}.*")
    assert wait_until(lambda: delivered(data_dir) == 2)
    server.shutdown()
    assert len(broker.take()) == 2


def test_a_nack_leaves_the_row_pending_until_the_broker_takes_it(
    rabbitmq: RabbitMQ, server_factory: Any, data_dir: Path, tmp_path: Path
):
    # A queue full with reject-publish makes RabbitMQ answer basic.nack.
    broker = Broker(rabbitmq, **{"x-max-length": 1, "x-overflow": "reject-publish"})
    sink = broker.sink()
    server = server_factory(events=sink, retry_backoff=0.1)
    assert statuses(send(server.port, files(tmp_path, 2))) == [0, 0]
    assert wait_until(lambda: sink.stats.failed >= 1)
    assert (delivered(data_dir), pending(data_dir)) == (1, 1)
    first = broker.take(1)
    assert wait_until(lambda: delivered(data_dir) == 2)
    server.shutdown()
    second = broker.take()
    assert len(first) == len(second) == 1
    assert first[0][2]["journal_id"] < second[0][2]["journal_id"]


def test_unconfirmed_events_at_shutdown_go_after_the_next_start(
    rabbitmq: RabbitMQ, server_factory: Any, data_dir: Path, tmp_path: Path
):
    broker = Broker(rabbitmq)
    sink = broker.sink()
    rabbitmq.stop()
    try:
        server = server_factory(events=sink, retry_backoff=0.1)
        assert statuses(send(server.port, files(tmp_path, 3))) == [0, 0, 0]
        assert wait_until(lambda: sink.stats.failed >= 1)
        server.shutdown()
        assert pending(data_dir) == 3
    finally:
        rabbitmq.start()
    server = server_factory(events=broker.sink())
    assert wait_until(lambda: delivered(data_dir) == 3)
    server.shutdown()
    assert len(broker.take()) == 3


def test_bad_events_settings_are_one_line_errors(tmp_path: Path):
    node = {"aetitle": "X", "port": 0, "ip": HOST}
    with pytest.raises(ValueError, match=r"events: 'http://broker' is not an amqp:// or amqps"):
        StoreSCPServer(node, data_dir=tmp_path, events="http://broker")
    with pytest.raises(ValueError, match=r"events need the journal"):
        StoreSCPServer(node, data_dir=tmp_path, events="amqp://localhost", journal=False)
    with pytest.raises(TypeError, match=r"events must be an amqp:// URL or an AmqpSink"):
        StoreSCPServer(node, data_dir=tmp_path, events=5)  # type: ignore[arg-type]
    result = subprocess.run(
        [sys.executable, "-m", "dicom_inlet", "serve", str(tmp_path), "--events", "rabbit:5672"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "dicom-inlet serve: error: events: 'rabbit:5672' is not an amqp:// or amqps:// URL"
    ]


def test_pika_is_not_imported_without_events(tmp_path: Path):
    code = (
        "import sys\n"
        "from dicom_inlet import StoreSCPServer\n"
        f"s = StoreSCPServer({{'aetitle': 'X', 'port': 0, 'ip': '{HOST}'}}, {str(tmp_path)!r})\n"
        "s.run(); s.shutdown()\n"
        "assert 'pika' not in sys.modules and 'dicom_inlet.amqp' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=TIMEOUT)


def test_the_deployment_guides_consumer_gets_the_study_event(
    rabbitmq: RabbitMQ, server_factory: Any, tmp_path: Path, capsys: Any
):
    guide = (Path(__file__).parent.parent / "docs" / "deployment.md").read_text()
    section = guide.split("### Consuming the events", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    exchange = f"guide-{uuid.uuid4().hex[:8]}"
    code = (
        match.group(1)
        .replace("amqp://worker:secret@rabbit:5672/%2F", rabbitmq.url)
        .replace('"dicom-inlet"', repr(exchange))
        .replace('"ct-studies"', repr(f"{exchange}-studies"))
        # Consumed below, one turn at a time, rather than for ever.
        .replace("channel.start_consuming()\n", "")
    )
    worker: dict[str, Any] = {}
    exec(compile(code, "docs/deployment.md", "exec"), worker)
    sent = files(tmp_path, 2)
    # Its queue takes study events only: instance events are dropped, not waited for.
    sink = AmqpSink(rabbitmq.url, exchange=exchange, mandatory=False)
    server = server_factory(events=sink, study_timeout=0.5)
    assert statuses(send(server.port, sent)) == [0, 0]
    study = delivery.instances(server.data_dir)[0].study_instance_uid
    printed: list[str] = []

    def consumed() -> bool:
        worker["connection"].process_data_events(time_limit=0.5)
        printed.append(capsys.readouterr().out)
        return bool("".join(printed))

    try:
        assert wait_until(consumed, TIMEOUT * 3)
    finally:
        worker["connection"].close()
    assert "".join(printed) == f"{study} 0 2 files\n"
