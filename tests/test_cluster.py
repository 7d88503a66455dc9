"""Several ``dicom-inlet serve`` nodes on one data_dir: each spools in its own area, held by
a lock for its lifetime; a node starting removes only the areas of nodes that are gone.
Real subprocesses, a raw peer stalled mid data set, and SIGKILL."""

from __future__ import annotations

from pathlib import Path

from conftest import HOST, TIMEOUT, dataset_bytes, make_dataset, patient_layout
from raw_peer import CT_CONTEXT, RawPeer, data_set_bytes, p_data, pdv
from test_cli import LISTENING, ServeProcess
from test_faults import store_partially


def start_node(data_dir: Path, cwd: Path, *args: str) -> tuple[ServeProcess, int]:
    node = ServeProcess([str(data_dir), "--host", HOST, "--port", "0", *args], cwd=cwd)
    return node, int(node.wait_for(LISTENING).group(2))


def spool_files(data_dir: Path, node_id: str) -> list[Path]:
    return sorted((data_dir / ".incoming" / node_id).glob("*.part"))


def test_a_starting_node_keeps_a_live_nodes_spool_and_removes_a_killed_ones(tmp_path: Path):
    data_dir = tmp_path / "shared"
    first, first_port = start_node(data_dir, tmp_path, "--node-id", "first")
    others: list[ServeProcess] = [first]
    try:
        ds = make_dataset(rows=128, columns=128)
        data = data_set_bytes(ds)
        with RawPeer(first_port) as peer:
            peer.associate()
            sent = store_partially(peer, ds.SOPInstanceUID, data, data_dir)
            assert len(spool_files(data_dir, "first")) == 1

            second, _ = start_node(data_dir, tmp_path, "--node-id", "second")
            others.append(second)
            assert (data_dir / ".incoming" / "second").is_dir()
            # The second node's start left the first one's instance under way alone ...
            assert len(spool_files(data_dir, "first")) == 1
            peer.send(p_data(pdv(CT_CONTEXT, data[sent:], command=False, last=True)))
            assert peer.response().status == 0x0000
            peer.release()
        # ... and it completed, byte for byte.
        assert dataset_bytes(data_dir / patient_layout(ds)) == data
        assert spool_files(data_dir, "first") == []

        # A node killed mid-instance leaves its spool file and its lock file behind.
        stalled = make_dataset(rows=128, columns=128)
        with RawPeer(first_port) as peer:
            peer.associate()
            store_partially(peer, stalled.SOPInstanceUID, data_set_bytes(stalled), data_dir)
            first.kill()
        assert len(spool_files(data_dir, "first")) == 1
        assert (data_dir / ".incoming" / "first.lock").exists()

        # The next node to start removes them; the live second node's area stays.
        third, _ = start_node(data_dir, tmp_path)
        others.append(third)
        assert not (data_dir / ".incoming" / "first").exists()
        assert not (data_dir / ".incoming" / "first.lock").exists()
        assert (data_dir / ".incoming" / "second").is_dir()
        assert not (data_dir / patient_layout(stalled)).exists()
        # Its default id: host name and process id.
        areas = [p.name for p in (data_dir / ".incoming").iterdir() if p.is_dir()]
        assert any(a.endswith(f"-{third.proc.pid}") for a in areas), areas
    finally:
        for node in others:
            node.kill()


def test_a_node_id_in_use_is_refused_in_one_line(tmp_path: Path):
    data_dir = tmp_path / "shared"
    running, _ = start_node(data_dir, tmp_path, "--node-id", "twin")
    try:
        twin = ServeProcess(
            [str(data_dir), "--host", HOST, "--port", "0", "--node-id", "twin"], cwd=tmp_path
        )
        assert twin.proc.wait(TIMEOUT) != 0
        twin.reader.join(TIMEOUT)
        assert 'node id "twin" is in use by another running node' in twin.text(), twin.text()
        assert "Traceback" not in twin.text()
        # The running node was not disturbed.
        assert running.proc.poll() is None
    finally:
        running.kill()


def test_bad_node_ids_are_named(tmp_path: Path):
    for bad in ["../up", ".hidden", "with space"]:
        node = ServeProcess([str(tmp_path / "d"), "--port", "0", "--node-id", bad], cwd=tmp_path)
        assert node.proc.wait(TIMEOUT) != 0
        node.reader.join(TIMEOUT)
        assert "node_id may hold letters" in node.text(), node.text()
        assert "Traceback" not in node.text()
    assert not (tmp_path / "up").exists()
