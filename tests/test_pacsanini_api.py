"""pacsanini 0.2.1's API to the letter: module path, positional order, DicomNode coercions,
dcm2dict/dict2dcm shapes (checked against what pacsanini documents and does)."""

from __future__ import annotations

import copy
import json
import queue

import pydicom
import pytest
from conftest import HOST, TIMEOUT, make_dataset, patient_layout, send, statuses, write_file

from dicom_inlet.convert import dcm2dict, dict2dcm
from dicom_inlet.models import DicomNode, StorageSortKey


def test_pacsanini_module_path():
    import dicom_inlet.net
    import dicom_inlet.server
    from dicom_inlet.net.storescp import StoreSCPServer, run_server

    assert StoreSCPServer is dicom_inlet.net.StoreSCPServer is dicom_inlet.server.StoreSCPServer
    assert run_server is dicom_inlet.net.run_server


def test_positional_order_node_data_dir_sort_by_db_session_callbacks(tmp_path):
    from dicom_inlet.net.storescp import StoreSCPServer

    received: queue.Queue = queue.Queue()
    node = {"aetitle": "POSITIONAL", "port": 0, "ip": HOST}
    data_dir = tmp_path / "d"
    with StoreSCPServer(node, str(data_dir), StorageSortKey.PATIENT, None, [received.put]) as s:
        ds = make_dataset()
        assert statuses(send(s.port, [write_file(ds, tmp_path / "a.dcm")])) == [0]
        assert received.get(timeout=TIMEOUT).SOPInstanceUID == ds.SOPInstanceUID
    assert (data_dir / patient_layout(ds)).is_file()


def test_recording_in_a_callback_records_what_pacsanini_records(tmp_path):
    """pacsanini's db_session records an image after save_as and before its callbacks and the
    answer; a store it refuses (cannot decode 0xC215, cannot write 0xC216) is never recorded.
    With dicom-inlet the same recording is a callback in pacsanini's order: done when the
    sender hears success, and never for a refused store."""
    import sqlite3

    from dicom_inlet.net.storescp import StoreSCPServer

    db = sqlite3.connect(tmp_path / "images.sqlite", check_same_thread=False)
    db.execute("CREATE TABLE images (sop_instance_uid TEXT, filepath TEXT)")

    def record(ds: pydicom.Dataset) -> None:
        db.execute("INSERT INTO images VALUES (?, ?)", (ds.SOPInstanceUID, ds.filename))
        db.commit()

    def recorded() -> list[str]:
        return [uid for (uid,) in db.execute("SELECT sop_instance_uid FROM images")]

    node = {"aetitle": "RECORDING", "port": 0, "ip": HOST}
    small, large = make_dataset(), make_dataset(rows=256, columns=256)
    paths = [write_file(ds, tmp_path / f"{i}.dcm") for i, ds in enumerate([small, large])]
    data_dir = tmp_path / "d"
    with StoreSCPServer(
        node,
        str(data_dir),
        StorageSortKey.PATIENT,
        None,
        [record],
        callbacks_before_response=True,
        duplicates="reject",
        max_instance_size=64 * 1024,
    ) as s:
        assert statuses(send(s.port, [paths[0]])) == [0x0000]
        # Recorded by the time the sender hears success, as with pacsanini.
        assert recorded() == [small.SOPInstanceUID]
        # Refused: a duplicate (0x0111) and one over the size limit (0xA700).
        assert statuses(send(s.port, [paths[0], paths[1]])) == [0x0111, 0xA700]
    assert recorded() == [small.SOPInstanceUID]
    assert [p.name for p in data_dir.rglob("*.dcm")] == [f"{small.SOPInstanceUID}.dcm"]


def test_db_session_is_refused_clearly(tmp_path):
    from dicom_inlet.net.storescp import StoreSCPServer

    node = {"aetitle": "X", "port": 0}
    with pytest.raises(NotImplementedError, match=r"db_session.*pacsanini's database tables"):
        StoreSCPServer(node, str(tmp_path), StorageSortKey.PATIENT, object())
    # Callbacks where pacsanini has its session (dicom-inlet's earlier order) say so.
    with pytest.raises(NotImplementedError, match=r"callbacks=\[\.\.\.\]"):
        StoreSCPServer(node, str(tmp_path), StorageSortKey.PATIENT, [print])


def test_dicomnode_coercions_as_pacsanini():
    node = DicomNode(aetitle="MY_AE", ip="10.0.0.1", port="11112")
    assert node.aetitle == b"MY_AE"
    assert node.ae_title == "MY_AE"
    assert node.port == 11112
    assert node.has_net_info and node.has_port()
    assert DicomNode(aetitle=b"BYTES_AE", port=104).aetitle == b"BYTES_AE"
    no_net = DicomNode(aetitle="A", ip="", port=None)
    assert (no_net.ip, no_net.port, no_net.has_net_info, no_net.has_port()) == (
        None,
        None,
        False,
        False,
    )
    assert not DicomNode(aetitle="A", port=104).has_net_info  # no ip
    assert DicomNode(aetitle="A", port="").port is None
    for bad in (42, None, ["A"]):
        with pytest.raises(ValueError, match="aetitle must be a str or bytes"):
            DicomNode(aetitle=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        DicomNode(aetitle="A", port="eleven")


def test_server_needs_a_port(tmp_path):
    from dicom_inlet.net import StoreSCPServer

    for node in ({"aetitle": "A"}, {"aetitle": "A", "port": ""}, DicomNode(aetitle="A")):
        with pytest.raises(ValueError, match="needs a port"):
            StoreSCPServer(node, str(tmp_path))


@pytest.fixture
def stored(tmp_path):
    return write_file(make_dataset(), tmp_path / "a.dcm")


def test_dcm2dict_shape_from_dataset_bytes_and_path(stored):
    ds = pydicom.dcmread(stored)
    before = copy.deepcopy(ds)
    from_dataset = dcm2dict(ds)
    assert ds == before and ds.PixelData == before.PixelData  # not mutated
    assert dcm2dict(stored.read_bytes()) == from_dataset
    assert dcm2dict(str(stored)) == from_dataset
    assert dcm2dict(stored) == from_dataset
    # pacsanini's shape: to_json_dict() plus a Name per element, PixelData without value.
    assert from_dataset["00100020"] == {"vr": "LO", "Value": ["PAT001"], "Name": "PatientId"}
    assert from_dataset["00080018"]["Name"] == "SopInstanceUid"
    assert from_dataset["7FE00010"] == {"vr": "OW", "Name": "PixelData"}
    item = from_dataset["00081032"]["Value"][0]  # Procedure Code Sequence, first item
    assert item["00080100"]["Name"] == "CodeValue"
    (modifiers,) = [v for v in item.values() if v["Name"] == "ModifierCodeSequence"]
    assert modifiers["Value"][0]["00080100"]["Name"] == "CodeValue"
    json.dumps(from_dataset)


def test_dcm2dict_include_pixels_and_deferred_pixels_stay_unread(stored):
    with_pixels = dcm2dict(pydicom.dcmread(stored), include_pixels=True)
    assert with_pixels["7FE00010"]["Name"] == "PixelData"
    assert "InlineBinary" in with_pixels["7FE00010"]
    lazy = pydicom.dcmread(stored, defer_size=16)
    dcm2dict(lazy)
    assert lazy.get_item("PixelData", keep_deferred=True).value is None


def test_dict2dcm_round_trip_without_mutating(stored):
    ds = pydicom.dcmread(stored)
    as_dict = dcm2dict(ds)
    kept = copy.deepcopy(as_dict)
    back = dict2dcm(as_dict)
    assert as_dict == kept
    assert back.PatientID == ds.PatientID
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert back.ProcedureCodeSequence[0].CodeValue == "CTHEAD"
    assert "PixelData" in back and not back.PixelData
