"""The deterministic benchmark corpus for ``peers.py``: CT slices, small instances, multi-frame.

Everything derives from one seed (UIDs through ``generate_uid(entropy_srcs=...)``, pixels through
numpy's seeded generator), so two machines build byte-identical files. The corpus is cached in a
directory with a manifest; a rerun with the same spec reuses it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)

MANIFEST = "manifest.json"
# Bump when the generated files change, so stale caches are rebuilt.
FORMAT = 1
# The CT corpus is split into this many shards (one patient each), one per concurrent sender.
SHARDS = 4


@dataclass(frozen=True)
class Spec:
    """How many instances of each kind, and their geometry."""

    name: str
    ct: int = 500
    ct_side: int = 512
    small: int = 2000
    small_side: int = 40  # 40x40x16 bit: 3.2 KB of pixels, ~4 KB files
    big: int = 2
    big_frames: int = 400  # 400 frames of 512x512x16 bit: 200 MiB of pixels
    seed: int = 20241123


FULL = Spec("full")
QUICK = Spec("quick", ct=100, small=400, big=2, big_frames=40)


@dataclass(frozen=True)
class Workload:
    """One directory of the corpus, sent by one storescu (or one per shard)."""

    name: str
    files: int
    bytes: int
    directory: Path
    shards: tuple[Path, ...]


def _uid(spec: Spec, *parts: object) -> str:
    return generate_uid(entropy_srcs=[str(spec.seed), *map(str, parts)])


def _image(
    spec: Spec, sop_class: str, key: tuple[str, int, int, int, int], pixels: bytes, side: int
) -> Dataset:
    """An image instance whose UIDs derive from ``key`` = (kind, patient, study, series, n)."""
    kind, patient, study, series, number = key
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = _uid(spec, *key)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = f"BENCH^{kind.upper()}{patient}"
    ds.PatientID = f"{kind.upper()}-{patient:02}"
    ds.StudyInstanceUID = _uid(spec, kind, patient, study)
    ds.SeriesInstanceUID = _uid(spec, kind, patient, study, series)
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = str(study + 1), series + 1, number + 1
    ds.Modality = "CT" if sop_class == CTImageStorage else "OT"
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = pixels
    return ds


def _write_series(
    spec: Spec,
    root: Path,
    kind: str,
    count: int,
    side: int,
    rng: np.random.Generator,
) -> None:
    """``count`` single-frame instances over SHARDS patients x 2 studies x 2 series."""
    for i in range(count):
        patient = i * SHARDS // count
        first = -(-patient * count // SHARDS)  # first index of this patient
        within = i - first
        per_patient = -(-(patient + 1) * count // SHARDS) - first
        study, series = divmod(within * 4 // per_patient, 2)
        pixels = rng.integers(0, 4096, side * side, dtype=np.uint16).tobytes()
        key = (kind, patient, study, series, within)
        ds = _image(spec, CTImageStorage, key, pixels, side)
        directory = root / kind / f"{patient}"
        directory.mkdir(parents=True, exist_ok=True)
        ds.save_as(directory / f"{within:05}.dcm", enforce_file_format=True)


def _write_big(spec: Spec, root: Path, rng: np.random.Generator) -> None:
    """Multi-frame instances, one study each (Multi-frame Grayscale Word SC needs no
    functional groups, unlike Enhanced CT)."""
    directory = root / "big"
    directory.mkdir(parents=True, exist_ok=True)
    side = spec.ct_side
    for i in range(spec.big):
        pixels = rng.integers(0, 4096, spec.big_frames * side * side, dtype=np.uint16).tobytes()
        key = ("big", i, 0, 0, 0)
        ds = _image(spec, MultiFrameGrayscaleWordSecondaryCaptureImageStorage, key, pixels, side)
        ds.NumberOfFrames = spec.big_frames
        ds.save_as(directory / f"{i:05}.dcm", enforce_file_format=True)
        del ds, pixels


def _workloads(root: Path) -> dict[str, Workload]:
    workloads = {}
    for name in ("ct", "small", "big"):
        directory = root / name
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        shards = tuple(sorted(p for p in directory.iterdir() if p.is_dir()))
        workloads[name] = Workload(
            name=name,
            files=len(files),
            bytes=sum(p.stat().st_size for p in files),
            directory=directory,
            shards=shards,
        )
    return workloads


def build(spec: Spec, root: Path, log=print) -> dict[str, Workload]:
    """Return the corpus in ``root``, generating it unless a complete one for ``spec`` is there."""
    wanted = {"format": FORMAT, **asdict(spec)}
    manifest = root / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == wanted:
        return _workloads(root)
    log(f"generating the {spec.name} corpus in {root} (once; cached for reruns)")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = np.random.default_rng(spec.seed)
    _write_series(spec, root, "ct", spec.ct, spec.ct_side, rng)
    _write_series(spec, root, "small", spec.small, spec.small_side, rng)
    _write_big(spec, root, rng)
    # Written last: a run interrupted while generating leaves no manifest and starts over.
    manifest.write_text(json.dumps(wanted, indent=1))
    return _workloads(root)
