"""The journal's ingest failing for real (another program holds SQLite's lock past the busy
timeout): told once at ERROR, the acknowledged rows kept in the row log, told again when the
commits resume, and then every instance is in the journal and each callback ran once."""

from __future__ import annotations

import collections
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pydicom
from conftest import (
    HOST,
    SCP_AET,
    SCU_AET,
    TIMEOUT,
    dcmtk_tool,
    make_dataset,
    run_tool,
    send,
    statuses,
    write_file,
)

from dicom_inlet import delivery

# SQLite's busy timeout (10 s) passes before the first commit fails, then a retry each
# second waits as long again.
PATIENCE = TIMEOUT
# Holds the database's write lock until its stdin closes.
HOLD_LOCK = """
import sqlite3, sys
database = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
database.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
database.execute("ROLLBACK")
"""


class Watch(logging.Handler):
    """Sets ``seen`` once a record of ``level`` containing ``text`` is emitted."""

    def __init__(self, text: str, level: int) -> None:
        super().__init__(level)
        self.text = text
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == self.level and self.text in record.getMessage():
            self.seen.set()


def test_a_locked_journal_is_told_once_then_resumes_with_every_row(
    server_factory, data_dir, tmp_path, caplog
):
    caplog.set_level(logging.WARNING, logger="dicom_inlet")
    study = pydicom.uid.generate_uid()
    source = tmp_path / "src"
    paths = [
        write_file(make_dataset(study_uid=study, rows=8, columns=8), source / f"{i}.dcm")
        for i in range(21)
    ]
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}
    calls: collections.Counter[str] = collections.Counter()
    all_called = threading.Event()
    counted = threading.Lock()

    def callback(dataset):
        with counted:
            calls[dataset.SOPInstanceUID] += 1
            if set(calls) == uids:
                all_called.set()

    failing = Watch("cannot commit", logging.ERROR)
    resumed = Watch("commits resumed", logging.WARNING)
    logger = logging.getLogger("dicom_inlet")
    logger.addHandler(failing)
    logger.addHandler(resumed)
    try:
        server = server_factory(callbacks=[callback])
        # The first instance reserves the node's block of row ids (a commit of its own).
        assert statuses(send(server.port, paths[:1])) == [0]
        server.scp.sync_journal()
        # From another process: SQLite's locks do not part two copies of the library in one.
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(data_dir / ".journal" / "journal.sqlite")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
            sent = run_tool(
                dcmtk_tool("storescu"),
                "-aet",
                SCU_AET,
                "-aec",
                SCP_AET,
                HOST,
                str(server.port),
                *[str(p) for p in paths[1:]],
            )
            # Acknowledged while nothing can be committed: the rows are in the row log.
            assert sent.returncode == 0, sent.stderr
            assert failing.seen.wait(PATIENCE)
            assert len(delivery.instances(data_dir)) == 1
        finally:
            holder.communicate(timeout=TIMEOUT)
        assert holder.returncode == 0
        assert resumed.seen.wait(PATIENCE)
        server.scp.sync_journal()
        assert all_called.wait(TIMEOUT)
    finally:
        logger.removeHandler(failing)
        logger.removeHandler(resumed)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    error = errors[0]
    journal_file = str(data_dir.resolve() / ".journal" / "journal.sqlite")
    assert journal_file in error and "database is locked" in error, error
    assert "acknowledged row" in error and "safe" in error, error
    assert str(Path(".journal") / "log") in error, error
    (line,) = [r.getMessage() for r in caplog.records if "commits resumed" in r.getMessage()]
    assert "20 rows caught up" in line, line
    assert {e.sop_instance_uid for e in delivery.instances(data_dir)} == uids
    assert dict(calls) == dict.fromkeys(uids, 1)
