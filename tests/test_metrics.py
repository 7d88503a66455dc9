"""``/metrics``, ``/healthz`` and ``/readyz``: scraped over HTTP from a running server while
real peers store, are refused, are rejected and fail their TLS handshake; and ``drain()``."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    HOST,
    SCU_AET,
    TIMEOUT,
    echo,
    make_dataset,
    rejection,
    send,
    statuses,
    wait_until,
    write_file,
)
from prometheus_client.parser import text_string_to_metric_families
from test_cli import LISTENING, ServeProcess
from test_tls import (
    Pki,
    _garbage_client_hello,
    _renewed,
    _revoking,
    _served_copy,
    next_update,
    not_after,
    pki,
    server_tls,
)

from dicom_inlet.tls import ServerTLS

__all__ = ["pki"]  # a fixture, used by name


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=TIMEOUT) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, by name and sorted labels."""
    status, text = get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(port: int, name: str, **labels: str) -> float:
    return scrape(port).get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_follow_stores_refusals_rejections_and_callbacks(
    server_factory: Any, tmp_path: Path
):
    seen = threading.Event()

    def on_stored(ds: Any) -> None:
        seen.set()

    server = server_factory(
        metrics_port=0,
        callbacks=[on_stored],
        max_instance_size=100_000,
        require_calling_aet=[SCU_AET, "OTHER"],
        node_id="metrics-node",
    )
    port = server.metrics_port
    assert port
    assert get(port, "/healthz") == (200, "alive\n")
    assert get(port, "/readyz") == (200, "ready\n")
    assert get(port, "/nothing")[0] == 404
    assert value(port, "dicom_inlet_node_info", node_id="metrics-node") == 1

    small = [make_dataset(rows=16, columns=16) for _ in range(3)]
    files = [write_file(ds, tmp_path / "src" / f"{i}.dcm") for i, ds in enumerate(small)]
    large = write_file(make_dataset(rows=512, columns=512), tmp_path / "src" / "large.dcm")
    assert statuses(send(server.port, [*files, large])) == [0, 0, 0, 0xA700]
    assert statuses(send(server.port, files[:1], ae_title="OTHER")) == [0]
    assert rejection(server.port, called_aet="ANY-SCP", calling_aet="STRANGER")[2] == 3
    assert seen.wait(TIMEOUT)

    def counted() -> bool:
        return (
            value(port, "dicom_inlet_associations_total", outcome="rejected", calling_ae="STRANGER")
            == 1
            and value(
                port, "dicom_inlet_associations_total", outcome="released", calling_ae="OTHER"
            )
            == 1
        )

    assert wait_until(counted)
    samples = scrape(port)

    def sample(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert sample("dicom_inlet_associations_total", outcome="released", calling_ae=SCU_AET) == 1
    assert sample("dicom_inlet_instances_stored_total", calling_ae=SCU_AET) == 3
    assert sample("dicom_inlet_instances_stored_total", calling_ae="OTHER") == 1
    assert sample("dicom_inlet_instances_failed_total", status="0xA700", calling_ae=SCU_AET) == 1
    received = sample("dicom_inlet_received_bytes_total", calling_ae=SCU_AET)
    assert received > sum(len(ds.PixelData) for ds in small)
    assert sample("dicom_inlet_live_instances_stored_total") == 4
    assert sample("dicom_inlet_live_instances_failed_total") == 1
    stats = server.scp.stats()
    assert sample("dicom_inlet_live_received_bytes_total") == stats.bytes
    assert sample("dicom_inlet_associations_open") == 0
    # Every stored instance's callback was timed.
    assert sample("dicom_inlet_callback_seconds_count", callback="on_stored") == 4
    assert sample("dicom_inlet_tls_handshakes_failed_total") == 0


def test_calling_ae_labels_are_bounded(server_factory: Any, monkeypatch: pytest.MonkeyPatch):
    import dicom_inlet.metrics

    monkeypatch.setattr(dicom_inlet.metrics, "MAX_CALLING_AES", 2)
    server = server_factory(metrics_port=0)
    for title in ["A1", "A2", "A3", "A4"]:
        assert echo(server.port, ae_title=title) == 0
    port = server.metrics_port

    def released(title: str) -> float:
        return value(port, "dicom_inlet_associations_total", outcome="released", calling_ae=title)

    assert wait_until(lambda: released("other") == 2)
    assert released("A1") == released("A2") == 1
    assert released("A3") == released("A4") == 0


def test_failed_tls_handshakes_are_counted(pki: Pki, server_factory: Any):
    server = server_factory(metrics_port=0, tls=server_tls(pki), tls_port=0)
    _garbage_client_hello(server.tls_port)
    port = server.metrics_port
    assert wait_until(lambda: value(port, "dicom_inlet_tls_handshakes_failed_total") == 1)


def test_the_served_certificates_expiry_is_exported_and_follows_a_reload(
    pki: Pki, server_factory: Any, tmp_path: Path
):
    cert, key = _served_copy(pki, tmp_path)
    server = server_factory(metrics_port=0, tls=ServerTLS(cert, key))
    name = "dicom_inlet_tls_certificate_expiry_timestamp_seconds"
    samples = {k: v for k, v in scrape(server.metrics_port).items() if k[0] == name}
    assert samples == {(name, (("subject", "CN=server"),)): not_after(pki.server[0])}
    _renewed(pki, tmp_path, cert, key)
    assert server.reload_tls()
    assert value(server.metrics_port, name, subject="CN=renewed") == not_after(cert)


def test_when_the_crls_are_due_is_exported(pki: Pki, server_factory: Any, tmp_path: Path):
    name = "dicom_inlet_tls_crl_next_update_timestamp_seconds"
    plain = server_factory(metrics_port=0, tls=server_tls(pki))
    assert not [k for k in scrape(plain.metrics_port) if k[0] == name]
    crl = _revoking(pki, tmp_path / "crl")
    tls = ServerTLS(*pki.server, ca=pki.ca, crl=crl)
    server = server_factory(tmp_path / "with-crl", metrics_port=0, tls=tls)
    assert value(server.metrics_port, name) == next_update(crl)


def test_drain_fails_readyz_first_then_stops(server_factory: Any, tmp_path: Path):
    server = server_factory(metrics_port=0, drain_delay=3600)
    port = server.metrics_port
    drained = threading.Thread(target=server.drain)
    drained.start()
    assert wait_until(lambda: get(port, "/readyz") == (503, "not ready: draining\n"))
    # Still alive, still accepting, until the delay ends (cut short here, as by a second
    # SIGTERM).
    assert get(port, "/healthz")[0] == 200
    src = write_file(make_dataset(rows=8, columns=8), tmp_path / "late.dcm")
    assert statuses(send(server.port, [src])) == [0]
    server._hurry.set()
    drained.join(TIMEOUT)
    assert not drained.is_alive()
    assert echo(server.port) is None
    with pytest.raises(OSError):
        get(port, "/healthz")


def test_backlog_and_lag_follow_undelivered_rows_and_readyz_needs_the_journal(
    server_factory: Any, data_dir: Path, tmp_path: Path
):
    release = threading.Event()
    server = server_factory(metrics_port=0, callbacks=[lambda ds: release.wait(TIMEOUT)])
    port = server.metrics_port
    assert value(port, "dicom_inlet_journal_backlog") == 0
    src = write_file(make_dataset(rows=8, columns=8), tmp_path / "held.dcm")
    assert statuses(send(server.port, [src])) == [0]
    # The callback holds the row undelivered: it waits in the journal, and ages.
    assert value(port, "dicom_inlet_journal_backlog") == 1
    assert wait_until(lambda: value(port, "dicom_inlet_delivery_lag_seconds") > 0)
    release.set()
    assert wait_until(lambda: value(port, "dicom_inlet_journal_backlog") == 0)
    assert value(port, "dicom_inlet_delivery_lag_seconds") == 0
    assert value(port, "dicom_inlet_journal_up") == 1
    # A journal gone (its volume unmounted, say): not ready, and the scrape says so.
    journal = data_dir / ".journal"
    journal.rename(tmp_path / "away")
    try:
        status, text = get(port, "/readyz")
        assert status == 503
        assert text.startswith("not ready: journal unreachable: no journal at "), text
        assert value(port, "dicom_inlet_journal_up") == 0
    finally:
        (tmp_path / "away").rename(journal)
    assert get(port, "/readyz") == (200, "ready\n")


def test_metrics_are_not_imported_without_a_metrics_port(tmp_path: Path):
    code = (
        "import sys\n"
        "from dicom_inlet import StoreSCPServer\n"
        f"s = StoreSCPServer({{'aetitle': 'X', 'port': 0, 'ip': '{HOST}'}}, {str(tmp_path)!r})\n"
        "s.run(); s.shutdown()\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
        "assert 'dicom_inlet.metrics' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=TIMEOUT)


def test_missing_prometheus_client_is_one_line(tmp_path: Path):
    # A blocked import stands for the package not being installed.
    code = (
        "import sys\n"
        "sys.modules['prometheus_client'] = None\n"
        "from dicom_inlet.cli import main\n"
        f"sys.exit(main(['serve', {str(tmp_path)!r}, '--port', '0', '--metrics-port', '0']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode != 0
    assert "metrics_port needs prometheus_client" in result.stderr, result.stderr
    assert "dicom-inlet[metrics]" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_takes_the_keys_from_toml_and_drains_on_sigterm(tmp_path: Path):
    config = tmp_path / "inlet.toml"
    config.write_text(
        f'data_dir = "data"\nhost = "{HOST}"\nport = 0\nnode_id = "toml-node"\n'
        "metrics_port = 0\ndrain_delay = 0.5\n"
    )
    node = ServeProcess(["--config", str(config)], cwd=tmp_path)
    try:
        node.wait_for(LISTENING)
        port = int(node.wait_for(r"node toml-node: metrics on http://\S+:(\d+)/metrics").group(1))
        assert get(port, "/readyz") == (200, "ready\n")
        assert (tmp_path / "data" / ".incoming" / "toml-node").is_dir()
        node.proc.send_signal(signal.SIGTERM)
        node.wait_for(r"draining: /readyz fails, accepting for 0.5 s more")
        assert node.proc.wait(TIMEOUT) == 0
    finally:
        node.kill()
