"""A bulk-segmentation dataset shared by the pipelined and worker-process tests: real
ISIC images, a truncated JPEG, RECIST derived from the expert masks, and a second
lesion of the sixth image lying outside the 256 px image (a per-lesion failure
reported while reading)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from napari_recist_seg.data.dataset import dataset_recists, scan_dataset
from napari_recist_seg.data.recist_csv import RecistRecord, write_recist_csv
from napari_recist_seg.recist import Recist


def dataset_with_two_failures(make_isic_dataset: Callable[..., Path], root: Path,
                              stems: Sequence[str], spare: str) -> Path:
    """``stems`` as a dataset folder at ``root``, plus the truncated copy of ``spare``
    and the bad lesion: a clean run reports exactly two failures."""
    root = make_isic_dataset(root, list(stems), broken="broken", broken_from=spare)
    derived = dataset_recists(scan_dataset(root))
    records = [r for recs in derived.values() for r in recs]
    bad = Recist([[10, 300], [20, 320]], [[14, 308], [16, 312]])
    records.append(RecistRecord(root / "images" / f"{stems[5]}.jpg", 2, bad))
    write_recist_csv(root / "recist.csv", records)
    return root


def output_files(out: Path) -> dict[str, bytes]:
    """Every file the run left (masks, tables, journal), by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and "lock" not in p.name}
