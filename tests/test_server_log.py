"""What the SCP's own log says about failures: WARNING lines with status, Error Comment, SOP
Instance UID, rejection reasons in words, unidentified peers and C-ECHO-only associations."""

from __future__ import annotations

import logging
import socket

import pytest
from conftest import (
    CT_IMAGE_STORAGE,
    HOST,
    SCU_AET,
    associate,
    echo,
    make_dataset,
    rejection,
    send,
    statuses,
    write_file,
)
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="dicom_inlet")
    return caplog


def lines(log: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in log.records if r.levelno == level]


def test_refused_store_is_a_warning_with_status_comment_and_uid(server, log, tmp_path):
    ds = make_dataset()
    announced = generate_uid()
    path = write_file(ds, tmp_path / "bad.dcm", media_sop_instance_uid=announced)
    assert statuses(send(server.port, [path])) == [0xA900]
    server.shutdown()  # every event logged once this returns

    [failure] = [line for line in lines(log, logging.WARNING) if "C-STORE" in line]
    assert "0xA900" in failure
    assert "SOP Instance UID: data set " in failure
    assert f"(SOP Instance UID {announced})" in failure
    assert SCU_AET in failure and HOST in failure
    [summary] = [line for line in lines(log, logging.WARNING) if line.startswith("association")]
    assert "0 instances, 1 failed" in summary


def test_rejection_is_a_warning_in_words(server_factory, log):
    server = server_factory(require_calling_aet=["ALLOWED"])
    assert rejection(server.port, called_aet="ANY", calling_aet="STRANGER") == (1, 1, 3)
    server.shutdown()

    [line] = lines(log, logging.WARNING)
    assert "STRANGER" in line
    assert "rejected: permanent, calling AE title not recognized" in line
    assert "[result 1, source 1, reason 3]" in line


def test_unidentified_peer_is_said_as_such(server, log):
    with socket.create_connection((HOST, server.port)) as sock:
        # Not a PDU type of PS3.8: A-ABORT, and no AE titles were ever given.
        sock.sendall(b"\x09\x00\x00\x00\x00\x02ab")
        assert sock.recv(100)[:1] == b"\x07"
    server.shutdown()

    [line] = lines(log, logging.WARNING)
    assert "unidentified peer" in line
    assert "unknown PDU type 0x09" in line
    assert "?" not in line


def test_echo_only_association_says_so(server, log):
    assert echo(server.port) == 0x0000
    server.shutdown()

    [line] = [r for r in lines(log, logging.INFO) if r.startswith("association")]
    assert "C-ECHO only (1 C-ECHO)" in line
    assert "instances" not in line
    assert lines(log, logging.WARNING) == []


def test_startup_line_shows_durability_and_limits(server_factory, log):
    server_factory(durable=True, maximum_associations=3, maximum_pdu_size=65536, dimse_timeout=7)
    [line] = [r for r in lines(log, logging.INFO) if r.startswith("listening")]
    assert "durable: fsync before each success" in line
    assert "3 associations" in line
    assert "max PDU 65536" in line
    assert "DIMSE 7 s" in line and "ACSE 30 s" in line and "network 60 s" in line
    assert "shutdown 10 s" in line


def test_abort_by_the_peer_is_a_warning(server, log):
    with associate(server.port, [(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])]) as assoc:
        assoc.abort()
    server.shutdown()

    [line] = lines(log, logging.WARNING)
    assert line.startswith(f"association {HOST}:")
    assert f"{SCU_AET} -> " in line
    assert "(aborted by peer)" in line
