"""Per-lesion checkpoints of ``recist-seg segment --3d``: resume inside a volume.

Propagating a lesion through a volume takes a model call per slice, so a volume with
many lesions is checkpointed lesion by lesion: as soon as a lesion is done, its 3D
mask (the slab of slices it spans, bit-packed) and its measurement row are written
atomically to ``OUT/.recist-seg/lesions3d/<stem>/<key>.npz``. A re-run after a crash
or ``kill -9`` loads the finished lesions instead of segmenting them again; the key
covers the lesion id, its RECIST and the segmentation setup (model, intensity rule,
stop rules), so a changed CSV or model redoes that lesion. Once the volume's labels
and record are committed (:mod:`napari_recist_seg.jobs.outdir`) its checkpoints are
removed. An unreadable checkpoint is ignored (that lesion is redone).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from napari_recist_seg.data.atomic import atomic_path, remove_stale_temps
from napari_recist_seg.jobs.outdir import state_dir
from napari_recist_seg.recist import Recist

__all__ = ["clear_lesions", "lesion_key", "load_lesion", "save_lesion"]

_FOLDER = "lesions3d"


def _folder(out: Path, stem: str) -> Path:
    return state_dir(out) / _FOLDER / stem


def lesion_key(lesion: int, recist: Recist, setup: str) -> str:
    """A name for one lesion's checkpoint: changes with its RECIST or the setup."""
    text = json.dumps([int(lesion), np.asarray(recist.long_axis, float).round(3).tolist(),
                       np.asarray(recist.short_axis, float).round(3).tolist(),
                       recist.slice_index, setup])
    return f"lesion{int(lesion)}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


def save_lesion(out: Path, stem: str, key: str, mask: np.ndarray,
                z_range: tuple[int, int], row: dict[str, str]) -> None:
    """Checkpoint one finished lesion (atomic: a kill leaves none or all of it)."""
    z0, z1 = int(z_range[0]), int(z_range[1])
    slab = np.asarray(mask[z0:z1 + 1], bool)
    with atomic_path(_folder(out, stem) / f"{key}.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, bits=np.packbits(slab.ravel()), shape=np.array(slab.shape),
                            z0=np.array(z0), row=np.array(json.dumps(row)))


def load_lesion(out: Path, stem: str, key: str,
                shape: tuple[int, int, int]) -> tuple[np.ndarray, dict[str, str]] | None:
    """``(mask (Z, H, W), row)`` of a checkpointed lesion, or ``None``."""
    path = _folder(out, stem) / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            slab_shape = tuple(int(s) for s in data["shape"])
            z0 = int(data["z0"])
            n = int(np.prod(slab_shape))
            slab = np.unpackbits(data["bits"], count=n).astype(bool).reshape(slab_shape)
            row = {str(k): str(v) for k, v in json.loads(str(data["row"])).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if slab_shape[1:] != tuple(shape[1:]) or not 0 <= z0 <= z0 + slab_shape[0] <= shape[0]:
        return None  # written for another volume of the same stem
    mask = np.zeros(shape, bool)
    mask[z0:z0 + slab_shape[0]] = slab
    return mask, row


def clear_lesions(out: Path, stem: str) -> None:
    """Remove a committed volume's checkpoints (and temporary files of killed runs)."""
    folder = _folder(out, stem)
    if folder.is_dir():
        remove_stale_temps(folder)
        with contextlib.suppress(OSError):
            shutil.rmtree(folder)
