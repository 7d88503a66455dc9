"""At-least-once delivery from the journal, study and series completion events, and the
journal read as an index of what has arrived.

The Rust core journals every acknowledged instance before its C-STORE-RSP leaves. The
:class:`Dispatcher` runs the callbacks of each, in arrival order, retries the ones that raise
with a doubling backoff, parks an instance whose callbacks keep failing (with the traceback),
and marks it delivered once they returned; what a crash interrupts is delivered at the next
start. Study (series) events come once the study has been quiet for ``study_timeout``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import traceback
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from dicom_inlet import _core

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicom_inlet.amqp import AmqpSink
    from dicom_inlet.part10 import StoredDataset

__all__ = [
    "CompletedInstance",
    "CompletedSeries",
    "Completion",
    "Dispatcher",
    "JournalEntry",
    "ParkedEvent",
    "SeriesSummary",
    "StudySummary",
    "instances",
    "parked",
    "parked_events",
    "replay",
    "run_command",
    "series",
    "status_table",
    "studies",
]

logger = logging.getLogger("dicom_inlet")

# Events taken per hand-over from the core: enough to catch up after a slow callback in a few
# GIL acquisitions, few enough that delivered marks (given per batch) follow closely.
_BATCH = 64

StudySummary: TypeAlias = _core.StudySummary
SeriesSummary: TypeAlias = _core.SeriesSummary
JournalEntry: TypeAlias = _core.JournalEntry
ParkedEvent: TypeAlias = _core.ParkedEvent


@dataclass(frozen=True)
class CompletedInstance:
    """One instance of a completed study or series, as the journal lists it."""

    sop_instance_uid: str
    sop_class_uid: str
    path: Path


@dataclass(frozen=True)
class CompletedSeries:
    """One series of a completed study (or the completed series itself)."""

    series_instance_uid: str
    modality: str
    instances: tuple[CompletedInstance, ...]


@dataclass(frozen=True)
class Completion:
    """A study (or series) quiet for ``study_timeout`` seconds, with every instance the
    journal holds for it. ``revision`` is 0 for the first event; each later one (instances
    arrived after an event) counts up and lists all instances again."""

    level: str
    uid: str
    study_instance_uid: str
    patient_id: str
    revision: int
    series: tuple[CompletedSeries, ...]

    @property
    def is_revision(self) -> bool:
        return self.revision > 0

    @property
    def instances(self) -> tuple[CompletedInstance, ...]:
        return tuple(i for s in self.series for i in s.instances)

    @property
    def folder(self) -> Path:
        """The study's folder in the patient and study layouts (the series' for a series
        event); otherwise the deepest folder holding all its files."""
        common = Path(os.path.commonpath([os.fspath(i.path.parent) for i in self.instances]))
        for folder in (common, *common.parents):
            if folder.name == self.uid:
                return folder
        return common

    @classmethod
    def from_core(cls, event: _core.Completed) -> Completion:
        grouped: dict[str, tuple[str, list[CompletedInstance]]] = {}
        for series_uid, sop_uid, sop_class, modality, path in event.members:
            members = grouped.setdefault(series_uid, (modality, []))[1]
            members.append(CompletedInstance(sop_uid, sop_class, Path(path)))
        return cls(
            level=event.level,
            uid=event.uid,
            study_instance_uid=event.study_instance_uid,
            patient_id=event.patient_id,
            revision=event.revision,
            series=tuple(
                CompletedSeries(uid, modality, tuple(members))
                for uid, (modality, members) in grouped.items()
            ),
        )


def _name(callback: object) -> str:
    return getattr(callback, "__name__", repr(callback))


class Dispatcher:
    """Feed a running core server's events to the callbacks, on one thread, in order.

    A raising callback is called again (only it) after ``backoff``, ``2 * backoff``, ...
    seconds, ``retries`` times; then the instance (or study/series completion event) is
    parked as failed with the traceback (``dicom-inlet status --failed``, :func:`replay`).
    Once ``stop`` is set (shutdown), no more retries wait: an instance or event still
    failing stays due and comes again at the next start. With a ``sink`` (events to a
    broker), an instance whose callbacks returned (a completion event too) is handed to it,
    and it marks the row delivered once the broker confirmed.
    """

    def __init__(
        self,
        scp: _core.Server,
        callbacks: Sequence[Callable[[Dataset], Any]],
        study_callbacks: Sequence[Callable[[Completion], Any]],
        series_callbacks: Sequence[Callable[[Completion], Any]],
        *,
        retries: int,
        backoff: float,
        stop: threading.Event,
        log_association: Callable[[_core.AssociationRecord], None],
        log_failure: Callable[[_core.FailedStore], None],
        log_journal: Callable[[_core.JournalReport], None],
        sink: AmqpSink | None = None,
    ) -> None:
        self.scp = scp
        self.callbacks = list(callbacks)
        self.study_callbacks = list(study_callbacks)
        self.series_callbacks = list(series_callbacks)
        self.retries = retries
        self.backoff = backoff
        self.stop = stop
        self.log_association = log_association
        self.log_failure = log_failure
        self.log_journal = log_journal
        self._read: Callable[[_core.StoredInstance], StoredDataset] | None = None
        self.sink = sink

    def run(self) -> None:
        # The events waiting are taken in one go; delivered marks go back with the next call
        # (the core commits them in batches).
        delivered: list[int] = []
        while events := self.scp.next_events(_BATCH, delivered):
            delivered = []
            for event in events:
                if isinstance(event, _core.StoredInstance):
                    if self._deliver(event) and event.journal_id is not None:
                        delivered.append(event.journal_id)
                elif isinstance(event, _core.Completed):
                    self._complete(event)
                elif isinstance(event, _core.FailedStore):
                    self.log_failure(event)
                elif isinstance(event, _core.JournalReport):
                    self.log_journal(event)
                else:
                    self.log_association(event)

    def _call(
        self, callbacks: list[Callable[[Any], Any]], argument: Any, what: Callable[[], str]
    ) -> str | None:
        """Call each; retry the raising ones. None when all returned, else the last
        traceback (after the retries, or at shutdown). ``what`` names the argument for the
        log, only when one raises."""
        attempt = 0
        while True:
            failed, last = [], ""
            for callback in callbacks:
                try:
                    callback(argument)
                except Exception:
                    logger.exception("callback %s failed for %s", _name(callback), what())
                    failed.append(callback)
                    last = traceback.format_exc()
            if not failed:
                return None
            attempt += 1
            if attempt > self.retries or self.stop.is_set():
                return last
            # A retry's pause, cut short by shutdown; not a synchronisation.
            self.stop.wait(self.backoff * 2 ** (attempt - 1))
            callbacks = failed

    def _deliver(self, stored: _core.StoredInstance) -> bool:
        """Run the callbacks of one instance; whether it is delivered (to be marked so)."""
        read = self._read
        if read is None:
            # Imported here: pydicom (and numpy) cost 35 MiB, needed only once callbacks exist.
            from dicom_inlet.part10 import read_stored

            read = self._read = read_stored
        try:
            dataset = read(stored)
        except Exception:
            logger.exception("cannot read back stored instance %s", stored.path)
            failure: str | None = traceback.format_exc()
        else:
            failure = self._call(self.callbacks, dataset, lambda: os.fspath(stored.path))
            if failure is None and self.sink is not None and stored.journal_id is not None:
                # The broker's confirm marks the row delivered, on the sink's thread.
                self.sink.instance(self.scp, stored, dataset)
                return False
            # A callback kept the data set: what it has not read yet is read now, while the
            # journal still holds the version acknowledged (it lets go once marked delivered).
            kept = weakref.ref(dataset)
            del dataset
            if (still := kept()) is not None:
                still.read_all()
        if stored.journal_id is None or failure is None:
            return failure is None
        if not self.stop.is_set():
            self.scp.failed(stored.journal_id, self.retries + 1, failure)
            logger.error(
                "instance %s parked as failed (journal id %d); 'dicom-inlet replay' delivers "
                "it again",
                stored.path,
                stored.journal_id,
            )
        return False

    def _complete(self, event: _core.Completed) -> None:
        completion = Completion.from_core(event)
        callbacks = self.study_callbacks if event.level == "study" else self.series_callbacks
        what = f"{event.level} {event.uid}"
        failure = self._call(list(callbacks), completion, lambda: what)
        if failure is not None and not self.stop.is_set():
            self.scp.completion_failed(event, self.retries + 1, failure)
            logger.error(
                "%s event parked as failed; 'dicom-inlet replay DATA_DIR --%s %s' fires it again",
                what,
                event.level,
                event.uid,
            )
            return
        if failure is not None:
            logger.error("%s event failed at shutdown; it comes again at the next start", what)
        elif self.sink is not None:
            self.sink.completion(self.scp, event, completion)
            return
        self.scp.completed(event, failure is None)


def run_command(argv: Sequence[str]) -> Callable[[Completion], None]:
    """A study callback running ``argv`` plus the study folder, never through a shell.

    The environment also names the event: ``DICOM_INLET_STUDY_UID``, ``DICOM_INLET_STUDY_DIR``,
    ``DICOM_INLET_PATIENT_ID``, ``DICOM_INLET_REVISION``, ``DICOM_INLET_INSTANCES``. A
    non-zero exit counts as a failure (retried like a raising callback).
    """
    command = list(argv)
    if not command:
        raise ValueError("the study command is empty")

    def on_study(completion: Completion) -> None:
        env = dict(os.environ)
        env.update(
            DICOM_INLET_STUDY_UID=completion.study_instance_uid,
            DICOM_INLET_STUDY_DIR=os.fspath(completion.folder),
            DICOM_INLET_PATIENT_ID=completion.patient_id,
            DICOM_INLET_REVISION=str(completion.revision),
            DICOM_INLET_INSTANCES=str(len(completion.instances)),
        )
        subprocess.run([*command, os.fspath(completion.folder)], env=env, check=True)

    on_study.__name__ = f"on-study {command[0]}"
    return on_study


# The journal as an index -------------------------------------------------------------------


def studies(data_dir: str | os.PathLike[str], journal: str | None = None) -> list[StudySummary]:
    """Every study in the journal of ``data_dir`` (or in the PostgreSQL ``journal`` URL its
    nodes share), oldest first."""
    return _core.Journal(data_dir, journal).studies()


def series(
    data_dir: str | os.PathLike[str],
    study_instance_uid: str | None = None,
    journal: str | None = None,
) -> list[SeriesSummary]:
    """The series of one study (or of all) in the journal of ``data_dir`` (or ``journal``)."""
    return _core.Journal(data_dir, journal).series(study_instance_uid)


def instances(
    data_dir: str | os.PathLike[str],
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    state: str | None = None,
    journal: str | None = None,
) -> list[JournalEntry]:
    """Journal rows in arrival order; ``state`` is pending, delivered, failed or ``-``;
    ``journal``: the PostgreSQL URL of a shared journal (None: data_dir's own)."""
    journal_ = _core.Journal(data_dir, journal)
    return journal_.instances(study_instance_uid, series_instance_uid, state)


def parked(data_dir: str | os.PathLike[str], journal: str | None = None) -> list[JournalEntry]:
    """Instances whose callbacks kept failing, with their tracebacks in ``error``."""
    return instances(data_dir, state="failed", journal=journal)


def parked_events(
    data_dir: str | os.PathLike[str], journal: str | None = None
) -> list[ParkedEvent]:
    """Study and series completion events whose callbacks kept failing, oldest parked first,
    with their tracebacks in ``error``: not fired again until replayed (a new instance of
    the study makes a new event, listing everything, which supersedes the parked one)."""
    return _core.Journal(data_dir, journal).parked_events()


def replay(
    data_dir: str | os.PathLike[str],
    ids: Sequence[int] | None = None,
    journal: str | None = None,
    *,
    study: str | None = None,
    series: str | None = None,
) -> int:
    """Parked deliveries back to pending: the next start of a server on ``data_dir``
    delivers them (replayed completion events fire at once, not after another
    ``study_timeout``). With ``ids``, those instances; with ``study`` (``series``), its
    parked instances and events (the study's series' too); with neither, all. Returns how
    many. A running server replays at once with :meth:`StoreSCPServer.replay`."""
    journal_ = _core.Journal(data_dir, journal)
    return _replay_with(journal_, journal_.replay, journal_.replay_events, ids, study, series)


def _replay_with(
    journal: _core.Journal,
    instances: Callable[[list[int] | None], int],
    events: Callable[[str | None, str | None], int],
    ids: Sequence[int] | None,
    study: str | None,
    series: str | None,
) -> int:
    """:func:`replay`'s choice of what to replay, done by ``instances`` and ``events`` (a
    journal's, or a running server's)."""
    if ids is not None and (study is not None or series is not None):
        raise ValueError("replay journal ids, or a study or series, not both")
    if ids is not None:
        return instances(list(ids))
    if study is None and series is None:
        return instances(None) + events(None, None)
    failed = journal.instances(study, series, "failed")
    return instances([entry.id for entry in failed]) + events(study, series)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _last_line(error: str | None) -> str:
    lines = (error or "").strip().splitlines()
    return lines[-1] if lines else ""


def _table(rows: list[list[str]], what: str) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return [*lines, f"{len(rows) - 1} {what}"]


def status_table(
    data_dir: str | os.PathLike[str], *, failed: bool = False, journal: str | None = None
) -> str:
    """The journal of ``data_dir`` (or the PostgreSQL ``journal`` URL) as a text table: one
    line per study (or, with ``failed``, per parked instance, then per parked completion
    event, each with its last error line)."""
    if failed:
        rows = [["ID", "RECEIVED", "SOP INSTANCE UID", "ATTEMPTS", "ERROR", "PATH"]]
        for entry in parked(data_dir, journal):
            rows.append(
                [
                    str(entry.id),
                    _when(entry.received),
                    entry.sop_instance_uid,
                    str(entry.attempts),
                    _last_line(entry.error),
                    os.fspath(entry.path),
                ]
            )
        events = [["LEVEL", "UID", "ATTEMPTS", "PARKED", "ERROR"]]
        for event in parked_events(data_dir, journal):
            events.append(
                [
                    event.level,
                    event.uid,
                    str(event.attempts),
                    _when(event.failed),
                    _last_line(event.error),
                ]
            )
        parked_lines = ["", *_table(events, "parked events")]
    else:
        rows = [
            [
                "STUDY INSTANCE UID",
                "PATIENT",
                "ACCESSION",
                "DATE",
                "MOD",
                "SERIES",
                "INSTANCES",
                "LAST RECEIVED",
                "PENDING",
                "FAILED",
                "EVENTS",
            ]
        ]
        for study in studies(data_dir, journal):
            rows.append(
                [
                    study.study_instance_uid,
                    study.patient_id or "",
                    study.accession_number or "",
                    study.study_date or "",
                    study.modalities,
                    str(study.series),
                    str(study.instances),
                    _when(study.last_received),
                    str(study.pending),
                    str(study.failed),
                    str(study.events),
                ]
            )
        parked_lines = []
    what = "parked instances" if failed else "studies"
    return "\n".join([*_table(rows, what), *parked_lines])
