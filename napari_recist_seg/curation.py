"""Curated annotations: images + RECIST + hand-corrected masks -> training samples.

No Qt, no napari: the Train / Evaluate docks gather what the viewer holds into
:class:`AnnotatedImage` s (arrays, not layers) and call the functions here.

Workflow of "fine-tune on curated annotations"
----------------------------------------------
1. The user corrects some masks by hand (paint / erase in the Labels layer) and marks
   those images *curated*.
2. :func:`save_curated` writes everything to a dataset folder (``images/``,
   ``masks/<name>_segmentation.png`` for curated images, ``labels/`` with the lesion
   ids, ``recist.csv``, ``curation.json``) atomically, *before* training starts, so a
   failed or cancelled run loses nothing. Existing files are never replaced silently:
   identical content is accepted as is, different content raises
   :class:`CurationConflict` unless ``overwrite=True``.
3. :func:`split_holdout` keeps some curated images out of fine-tuning;
   :func:`fine_tune` trains from the active model on the curated masks (full
   supervision) plus the RECIST of the other images (weak targets), and scores the
   model before and after on the held-out curated images (:class:`FineTuneResult`).

Examples
--------
>>> import numpy as np
>>> from napari_recist_seg.recist import Recist
>>> lab = np.zeros((40, 40), np.int32); lab[10:20, 8:30] = 1
>>> r = Recist([[15, 8], [15, 29]], [[10, 18], [19, 18]])
>>> img = AnnotatedImage("case", np.zeros((40, 40), np.uint8), [(1, r)], labels=lab, curated=True)
>>> int(img.lesion_mask(1, r).sum())
220
>>> [s.name for s in training_samples([img])], training_samples([img])[0].curated_mask is not None
(['case#1'], True)
"""

from __future__ import annotations

import filecmp
import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from scipy import ndimage

from napari_recist_seg.data.atomic import atomic_path, atomic_write_text
from napari_recist_seg.jobs.common import (
    CancelToken,
    InputError,
    ProgressCallback,
    ProgressTracker,
    describe_error,
)
from napari_recist_seg.recist import Recist, RecistError

if TYPE_CHECKING:  # pragma: no cover
    from napari_recist_seg.training import TrainConfig, TrainResult, TrainSample

__all__ = [
    "CURATED_KEY",
    "AnnotatedImage",
    "add_recist_errors",
    "CurationConflict",
    "FineTuneResult",
    "SavedCuration",
    "curation_conflicts",
    "epoch_dict",
    "fine_tune",
    "holdout_scores",
    "recist_errors",
    "safe_name",
    "save_curated",
    "split_holdout",
    "training_samples",
    "write_derived_recist",
]

#: Layer-metadata key that marks a Labels (or image) layer as curated by hand.
CURATED_KEY = "recist_seg_curated"
#: Name of the manifest written next to a saved curation.
MANIFEST = "curation.json"


class CurationConflict(FileExistsError):
    """Saving would replace existing files with different content; ``paths`` lists them."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = [Path(p) for p in paths]
        shown = ", ".join(str(p) for p in self.paths[:5])
        more = f" and {len(self.paths) - 5} more" if len(self.paths) > 5 else ""
        super().__init__(
            f"{len(self.paths)} file(s) already exist with different content: {shown}{more}; "
            "choose another folder or allow overwriting"
        )


def safe_name(name: str) -> str:
    """A file-name-safe version of a layer name (keeps letters, digits, ``-_.``).

    >>> safe_name("ISIC 0001 / copy"), safe_name("..")
    ('ISIC_0001_copy', 'image')
    """
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._")
    return out or "image"


@dataclass(eq=False)
class AnnotatedImage:
    """An image with its RECIST and, optionally, its lesion labels (as held in the viewer).

    Parameters
    ----------
    name : str
        Used for file names (made safe with :func:`safe_name`) and messages.
    image : ndarray
        ``(H, W)``, ``(H, W, 3)`` or a ``(Z, H, W)`` volume.
    recists : list of (lesion id, Recist)
    labels : ndarray of int, optional
        Lesion labels (0 = background, else the lesion id), the image's plane / volume
        shape. For curated images this is the hand-corrected truth.
    curated : bool
        The labels were checked / corrected by hand: train on them (full supervision)
        and use them as ground truth.
    spacing : tuple of float, optional
        ``(row_mm, col_mm)`` or ``(z_mm, row_mm, col_mm)``.
    source : Path, optional
        The file the image was read from, copied as is when saving (keeps its format,
        header and intensities).
    """

    name: str
    image: np.ndarray
    recists: list[tuple[int, Recist]]
    labels: np.ndarray | None = None
    curated: bool = False
    spacing: tuple[float, ...] | None = None
    source: Path | None = None

    @property
    def is_volume(self) -> bool:
        a = np.asarray(self.image)
        return a.ndim == 3 and a.shape[-1] not in (3, 4)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the labels / mask: the image without its colour axis."""
        a = np.asarray(self.image)
        return tuple(a.shape) if self.is_volume or a.ndim == 2 else tuple(a.shape[:2])

    def mask(self) -> np.ndarray:
        """All lesions as one boolean mask (empty when there are no labels)."""
        if self.labels is None:
            return np.zeros(self.shape, bool)
        return np.asarray(self.labels) > 0

    def lesion_mask(self, lesion_id: int, recist: Recist) -> np.ndarray:
        """The mask of one lesion on its plane, from the labels.

        Pixels labelled ``lesion_id`` when there are any; otherwise (the user painted
        with another label value) the connected components of all labelled pixels that
        the RECIST axes pass through. Empty when the user erased the lesion.
        """
        if self.labels is None:
            raise ValueError(f"{self.name}: no labels to take a lesion mask from")
        lab = np.asarray(self.labels)
        if self.is_volume:
            if recist.slice_index is None:
                raise RecistError(f"{self.name}: a RECIST on a volume needs a slice index")
            lab = lab[int(recist.slice_index)]
        own = lab == lesion_id
        if own.any():
            return own
        fg = lab > 0
        if not fg.any():
            return own
        comps, n = ndimage.label(fg, structure=np.ones((3, 3), bool))
        hit: set[int] = set()
        for seg in (recist.long_axis, recist.short_axis):
            for t in np.linspace(0.0, 1.0, 33):
                r, c = np.rint(seg[0] + t * (seg[1] - seg[0])).astype(int)
                if 0 <= r < comps.shape[0] and 0 <= c < comps.shape[1] and comps[r, c]:
                    hit.add(int(comps[r, c]))
        return np.isin(comps, sorted(hit)) if hit else own


def training_samples(
    images: Sequence[AnnotatedImage],
    *,
    use_curated_masks: bool = True,
    split: Callable[[AnnotatedImage], str | None] | None = None,
) -> list["TrainSample"]:
    """One :class:`~napari_recist_seg.training.TrainSample` per lesion.

    Curated images contribute their hand-corrected lesion masks as the target (when
    ``use_curated_masks``); the others only their RECIST (the trainer builds the weak
    target). All lesions of an image share its ``group`` so that the train /
    validation split is by image. ``split(image)`` may assign ``"train"``/``"val"``.
    """
    from napari_recist_seg.training import TrainSample

    samples = []
    for img in images:
        for lesion, r in img.recists:
            curated = img.lesion_mask(lesion, r) if (img.curated and use_curated_masks) else None
            samples.append(TrainSample(
                image=img.image, recist=r, curated_mask=curated, group=img.name,
                split=split(img) if split is not None else None, name=f"{img.name}#{lesion}",
            ))
    return samples


def split_holdout(
    images: Sequence[AnnotatedImage],
    fraction: float = 0.3,
    seed: int = 0,
) -> tuple[list[AnnotatedImage], list[AnnotatedImage]]:
    """Split into (fine-tune, held out): a seeded ``fraction`` of the *curated* images.

    At least one curated image is held out when there are two or more (so before /
    after can be measured) and at least one stays for fine-tuning; with a single
    curated image nothing is held out. Uncurated images are always in fine-tuning.

    >>> imgs = [AnnotatedImage(n, np.zeros((4, 4)), [], curated=True) for n in "abc"]
    >>> tune, held = split_holdout(imgs, 0.3)
    >>> len(tune), len(held)
    (2, 1)
    """
    curated = [im for im in images if im.curated]
    n = len(curated)
    n_hold = 0 if n < 2 else min(n - 1, max(1, int(round(fraction * n))))
    rng = np.random.default_rng(seed)
    order = sorted(range(n), key=lambda i: curated[i].name)
    held_idx = {order[i] for i in rng.permutation(n)[:n_hold]} if n_hold else set()
    held = [curated[i] for i in sorted(held_idx)]
    held_ids = {id(im) for im in held}
    return [im for im in images if id(im) not in held_ids], held


# -- saving ---------------------------------------------------------------------------


@dataclass
class SavedCuration:
    """Where a curation was saved: a dataset folder ``recist-seg`` reads as is."""

    folder: Path
    images: dict[str, Path] = field(default_factory=dict)
    masks: dict[str, Path] = field(default_factory=dict)
    labels: dict[str, Path] = field(default_factory=dict)
    recist_csv: Path | None = None
    unchanged: list[Path] = field(default_factory=list)


def _image_suffix(img: AnnotatedImage) -> str:
    if img.source is not None and Path(img.source).is_file():
        name = Path(img.source).name.lower()
        return ".nii.gz" if name.endswith(".nii.gz") else Path(img.source).suffix.lower()
    a = np.asarray(img.image)
    if img.is_volume:
        return ".nii.gz"
    if a.dtype == np.uint8:
        return ".png"
    return ".tif"  # keeps 16-bit / float / HU values exactly


def _planned(img: AnnotatedImage, folder: Path) -> dict[str, Path]:
    stem = safe_name(img.name)
    out = {"image": folder / "images" / f"{stem}{_image_suffix(img)}"}
    if img.curated and img.labels is not None:
        ext = ".nii.gz" if img.is_volume else ".png"
        out["mask"] = folder / "masks" / f"{stem}_segmentation{ext}"
        out["labels"] = folder / "labels" / f"{stem}_labels{ext}"
    return out


def _same_image(path: Path, img: AnnotatedImage) -> bool:
    from napari_recist_seg.data.images import read_image

    if img.source is not None and Path(img.source).is_file():
        try:
            return filecmp.cmp(path, img.source, shallow=False)
        except OSError:
            return False
    try:
        return np.array_equal(read_image(path).array, np.asarray(img.image))
    except Exception:  # unreadable: different
        return False


def _same_mask(path: Path, mask: np.ndarray, labels: bool) -> bool:
    from napari_recist_seg.data.masks import read_labels, read_mask

    try:
        stored = read_labels(path) if labels else read_mask(path)
    except Exception:
        return False
    want = np.asarray(mask)
    return stored.shape == want.shape and np.array_equal(
        stored.astype(np.int64) if labels else stored, want.astype(np.int64) if labels else want > 0
    )


def _records(images: Sequence[AnnotatedImage], paths: dict[str, dict[str, Path]]):
    from napari_recist_seg.data.recist_csv import RecistRecord

    recs = []
    for img in images:
        sp = img.spacing
        plane_sp = (float(sp[-2]), float(sp[-1])) if sp is not None else None
        for lesion, r in img.recists:
            if r.spacing is None and plane_sp is not None:
                r = r.with_spacing(plane_sp)
            recs.append(RecistRecord(paths[img.name]["image"], int(lesion), r))
    return recs


def _same_records(path: Path, records) -> bool:
    """Whether the RECIST CSV at ``path`` holds exactly ``records`` (same images, ids, axes)."""
    from napari_recist_seg.data.recist_csv import read_recist_csv

    try:
        stored = read_recist_csv(path)
    except Exception:  # unreadable: treat as different, never replace silently
        return False

    def key(rec) -> tuple:
        r = rec.recist
        return (os.path.normcase(os.path.abspath(rec.image)), int(rec.lesion), r.slice_index,
                tuple(np.round(r.endpoints.ravel(), 6)),
                None if r.spacing is None else tuple(np.round(r.spacing, 9)))

    return sorted(map(key, stored)) == sorted(map(key, records))


def _check_names(images: Sequence[AnnotatedImage]) -> None:
    seen: dict[str, str] = {}
    for img in images:
        key = safe_name(img.name).lower()
        if key in seen:
            raise InputError(
                f"two images would be saved under the same name {safe_name(img.name)!r}: "
                f"{seen[key]!r} and {img.name!r}; rename one layer"
            )
        seen[key] = img.name
        if img.labels is not None and np.asarray(img.labels).shape != img.shape:
            raise InputError(
                f"{img.name}: labels of shape {np.asarray(img.labels).shape} do not match "
                f"the image shape {img.shape}"
            )


def curation_conflicts(images: Sequence[AnnotatedImage], folder: str | os.PathLike[str]) -> list[Path]:
    """Files that :func:`save_curated` would replace with *different* content."""
    folder = Path(folder)
    _check_names(images)
    paths = {img.name: _planned(img, folder) for img in images}
    conflicts: list[Path] = []
    for img in images:
        p = paths[img.name]
        if p["image"].exists() and not _same_image(p["image"], img):
            conflicts.append(p["image"])
        if "mask" in p and p["mask"].exists() and not _same_mask(p["mask"], img.mask(), False):
            conflicts.append(p["mask"])
        if "labels" in p and p["labels"].exists() and not _same_mask(p["labels"], img.labels, True):
            conflicts.append(p["labels"])
    csv_path = folder / "recist.csv"
    if csv_path.exists():
        if not _same_records(csv_path, _records(images, paths)):
            conflicts.append(csv_path)
    return conflicts


def _write_image(path: Path, img: AnnotatedImage) -> None:
    if img.source is not None and Path(img.source).is_file():
        with atomic_path(path) as tmp:
            shutil.copyfile(img.source, tmp)
        return
    a = np.asarray(img.image)
    if path.name.endswith(".nii.gz"):
        from napari_recist_seg.data.masks import _write_nifti

        with atomic_path(path) as tmp:
            _write_nifti(tmp, a, img.spacing)
    elif path.suffix == ".png":
        from PIL import Image

        with atomic_path(path) as tmp:
            Image.fromarray(np.ascontiguousarray(a)).save(tmp, format="PNG")
    else:
        import tifffile

        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, np.ascontiguousarray(a),
                             photometric="rgb" if a.ndim == 3 else "minisblack")


def save_curated(
    images: Sequence[AnnotatedImage],
    folder: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> SavedCuration:
    """Save images, curated masks and RECIST as a dataset folder, atomically.

    Layout: ``images/<name>.<ext>``; for curated images ``masks/<name>_segmentation.png``
    (0/255) and ``labels/<name>_labels.png`` (lesion ids; ``.nii.gz`` for volumes);
    ``recist.csv`` for every lesion; ``curation.json`` (which images are curated,
    when). The folder can be passed to ``recist-seg train --curated`` / ``evaluate``.

    Every file is written with a temporary name and renamed into place, so a crash
    never leaves a half-written mask. Files that already hold the same content are left
    alone (saving twice is harmless).

    Raises
    ------
    CurationConflict
        When an existing file would change and ``overwrite`` is False; nothing is
        written then.
    InputError
        Two layers that map to the same file name, or labels of the wrong shape.
    """
    from napari_recist_seg.data.masks import write_labels, write_mask
    from napari_recist_seg.data.recist_csv import write_recist_csv

    folder = Path(folder)
    if not overwrite:
        conflicts = curation_conflicts(images, folder)
        if conflicts:
            raise CurationConflict(conflicts)
    else:
        _check_names(images)
    paths = {img.name: _planned(img, folder) for img in images}
    saved = SavedCuration(folder)
    for img in images:
        p = paths[img.name]
        if p["image"].exists() and _same_image(p["image"], img):
            saved.unchanged.append(p["image"])
        else:
            _write_image(p["image"], img)
        saved.images[img.name] = p["image"]
        if "mask" in p:
            sp = img.spacing
            write_mask(p["mask"], img.mask(), spacing=sp)
            write_labels(p["labels"], np.asarray(img.labels), spacing=sp)
            saved.masks[img.name] = p["mask"]
            saved.labels[img.name] = p["labels"]
    records = _records(images, paths)
    if records:
        write_recist_csv(folder / "recist.csv", records)
        saved.recist_csv = folder / "recist.csv"
    manifest = {
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "curated": sorted(img.name for img in images if img.curated),
        "images": {img.name: str(paths[img.name]["image"].relative_to(folder)) for img in images},
        "sources": {img.name: str(img.source) for img in images if img.source is not None},
    }
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))
    return saved


# -- scoring ----------------------------------------------------------------------------


def _predicted_mask(predictor: Any, img: AnnotatedImage) -> np.ndarray:
    out = np.zeros(img.shape, np.uint8)
    recists = [r for _, r in img.recists]
    if not recists:
        return out.astype(bool)
    results = predictor.segment(np.asarray(img.image), recists)
    for r, res in zip(recists, results):
        target = out[int(r.slice_index)] if img.is_volume else out
        res.paste_into(target, 1)
    return out > 0


def holdout_scores(
    checkpoint: str | os.PathLike[str] | None,
    images: Sequence[AnnotatedImage],
    *,
    device: str = "auto",
    predictor: Any = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    label: str = "",
) -> list[dict[str, Any]]:
    """Metrics of a model on curated images: one dict per image (``case`` + metrics).

    The model segments every RECIST of the image; the union of its masks is compared
    with the curated mask by :func:`napari_recist_seg.metrics.evaluate_case`.
    ``checkpoint=None`` is the shipped default model.
    """
    from napari_recist_seg.metrics import evaluate_case

    if predictor is None and images:
        from napari_recist_seg.predict import Predictor

        predictor = Predictor.load(checkpoint, device=device)
    tracker = ProgressTracker(len(images), progress)
    rows = []
    for img in images:
        if cancel is not None:
            cancel.raise_if_cancelled()
        pred = _predicted_mask(predictor, img)
        sp = img.spacing if img.spacing is None or len(img.spacing) == pred.ndim else None
        rows.append({"case": img.name, **evaluate_case(pred, img.mask(), sp)})
        tracker.step(f"{label} {img.name}".strip())
    return rows


def _mean(rows: Sequence[dict[str, Any]], key: str) -> float:
    vals = [float(r[key]) for r in rows if r.get(key) is not None and math.isfinite(float(r[key]))]
    return float(np.mean(vals)) if vals else math.nan


@dataclass
class FineTuneResult:
    """What :func:`fine_tune` did: the saved curation, the training run, before / after."""

    saved: SavedCuration
    train: "TrainResult | None"
    holdout: list[str]
    before: list[dict[str, Any]] = field(default_factory=list)
    after: list[dict[str, Any]] = field(default_factory=list)
    init_checkpoint: Path | None = None

    @property
    def cancelled(self) -> bool:
        return bool(self.train is not None and self.train.cancelled)

    @property
    def checkpoint(self) -> Path | None:
        return self.train.checkpoint if self.train is not None else None

    def dice_before_after(self) -> tuple[float, float]:
        """Mean Dice on the held-out curated images before and after (NaN if none)."""
        return _mean(self.before, "dice"), _mean(self.after, "dice")

    def summary(self) -> str:
        if not self.holdout:
            return ("no curated image held out (mark at least two images curated to "
                    "measure the model before and after)")
        b, a = self.dice_before_after()
        after = f"{a:.3f}" if math.isfinite(a) else "n/a (no checkpoint)"
        return (f"Dice on {len(self.holdout)} held-out curated image(s): "
                f"before {b:.3f}, after {after}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "curated_folder": str(self.saved.folder),
            "init_checkpoint": str(self.init_checkpoint) if self.init_checkpoint else None,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "holdout": list(self.holdout),
            "before": self.before,
            "after": self.after,
            "dice_before": _json_float(self.dice_before_after()[0]),
            "dice_after": _json_float(self.dice_before_after()[1]),
        }


def _json_float(v: float) -> float | None:
    return v if math.isfinite(v) else None


def fine_tune(
    images: Sequence[AnnotatedImage],
    out_dir: str | os.PathLike[str],
    config: "TrainConfig",
    *,
    init_checkpoint: str | os.PathLike[str] | None = None,
    curated_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    holdout_fraction: float = 0.3,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    on_epoch: Callable[[Any], None] | None = None,
) -> FineTuneResult:
    """Fine-tune a model on curated masks plus RECIST, scored before and after.

    Steps: save the curation (:func:`save_curated`, *first*, into ``curated_dir`` or
    ``out_dir/curated``); hold out curated images (:func:`split_holdout`); score the
    starting model on them; train from ``init_checkpoint`` (``None``: the shipped
    default model) on the curated masks of the others (full supervision) and the
    RECIST of the uncurated images (weak targets), validating on a seeded share of the
    uncurated images; score the best checkpoint on the held-out images.

    Raises
    ------
    InputError
        No curated image, or no RECIST at all.
    CurationConflict
        From :func:`save_curated` (nothing is trained then).
    """
    from napari_recist_seg.training import split_groups, train

    if not any(im.curated for im in images):
        raise InputError("no curated image: correct some masks and mark them curated first")
    if not any(im.recists for im in images):
        raise InputError("no RECIST on any image: fine-tuning needs the RECIST of each lesion")
    out_dir = Path(out_dir)
    saved = save_curated(images, Path(curated_dir) if curated_dir else out_dir / "curated",
                         overwrite=overwrite)
    if init_checkpoint is None:
        from napari_recist_seg.predict import DEFAULT_MODEL_DIR

        init_checkpoint = DEFAULT_MODEL_DIR
    init_checkpoint = Path(init_checkpoint)
    tune, held = split_holdout(images, holdout_fraction, config.seed)
    tune = [im for im in tune if im.recists]
    if not tune:
        raise InputError("nothing left to fine-tune on after holding out curated images")
    result = FineTuneResult(saved, None, [im.name for im in held], init_checkpoint=init_checkpoint)
    if held:
        result.before = holdout_scores(init_checkpoint, held, device=config.device,
                                       progress=progress, cancel=cancel, label="before:")
    # Validation (model selection) only on uncurated images: the curated ones are
    # either trained on or held out for the before / after comparison.
    weak = sorted(im.name for im in tune if not im.curated)
    val = split_groups(weak, config.val_fraction, config.seed) if len(weak) >= 2 else set()
    samples = training_samples(tune, split=lambda im: "val" if im.name in val else "train")
    result.train = train(config, samples, out_dir, init_checkpoint=init_checkpoint,
                         progress=progress, cancel=cancel, on_epoch=on_epoch,
                         extra={"fine_tune": {"curated_folder": str(saved.folder),
                                              "holdout": result.holdout}})
    if held and result.train.checkpoint is not None and not result.train.cancelled:
        result.after = holdout_scores(result.train.checkpoint, held, device=config.device,
                                      progress=progress, cancel=cancel, label="after:")
    _write_report(out_dir, result)
    return result


def _write_report(out_dir: Path, result: FineTuneResult) -> None:
    def clean(o: Any) -> Any:
        if isinstance(o, float):
            return o if math.isfinite(o) else None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list):
            return [clean(v) for v in o]
        return o

    atomic_write_text(out_dir / "fine_tune_report.json", json.dumps(clean(result.to_dict()), indent=2))


# -- helpers for the docks ---------------------------------------------------------------


def write_derived_recist(dataset: str | os.PathLike[str], out_csv: str | os.PathLike[str]) -> Path:
    """Derive RECIST from a dataset's masks (ignoring its ``recist.csv``) into ``out_csv``.

    Used to segment or evaluate "from simulated RECIST" on a folder that also has
    hand-drawn RECIST.

    Raises
    ------
    InputError
        The dataset has no masks, or no mask gave a RECIST.
    """
    from napari_recist_seg.data.dataset import dataset_recists, scan_dataset
    from napari_recist_seg.data.recist_csv import write_recist_csv

    ds = scan_dataset(dataset)
    if not ds.has_masks:
        raise InputError(f"{dataset} has no masks/ to derive RECIST from")
    ds = replace(ds, recist_csv=None, dl_info=None)
    by_stem = dataset_recists(ds)
    records = [rec for stem in sorted(by_stem) for rec in by_stem[stem]]
    if not records:
        reasons = "; ".join(f"{f}: {r}" for f, r in by_stem.failures[:3])
        raise InputError(f"no RECIST could be derived from the masks of {dataset} ({reasons})")
    write_recist_csv(out_csv, records)
    return Path(out_csv)


def recist_errors(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None
) -> dict[str, float]:
    """Long / short axis error of a predicted mask against the ground truth (2D).

    Both masks are measured like a reader would
    (:func:`~napari_recist_seg.recist.recist_from_mask`, largest component); the
    errors are absolute differences of the long (``long_error``) and short
    (``short_error``) diameters, in mm with ``spacing`` ``(row_mm, col_mm)``, else px.
    NaN when either mask has no measurable lesion or the masks are volumes.

    Two 6-pixel-high bars, 20 and 18 pixels long: the long axes (pixel-centre
    diagonals) are sqrt(19**2 + 5**2) and sqrt(17**2 + 5**2), 1.93 px apart.

    >>> g = np.zeros((30, 30), bool); g[12:18, 5:25] = True
    >>> p = np.zeros((30, 30), bool); p[12:18, 5:23] = True
    >>> round(recist_errors(p, g)["long_error"], 2)
    1.93
    """
    from napari_recist_seg.recist import recist_from_mask

    nan = {"long_error": math.nan, "short_error": math.nan}
    p, g = np.asarray(pred), np.asarray(gt)
    if p.ndim != 2 or g.ndim != 2:
        return nan
    sp = tuple(float(s) for s in spacing) if spacing is not None and len(spacing) == 2 else None
    try:
        rp = recist_from_mask(p > 0, spacing=sp)
        rg = recist_from_mask(g > 0, spacing=sp)
    except RecistError:
        return nan
    if sp is not None:
        return {"long_error": abs(rp.long_length_mm - rg.long_length_mm),
                "short_error": abs(rp.short_length_mm - rg.short_length_mm)}
    return {"long_error": abs(rp.long_length - rg.long_length),
            "short_error": abs(rp.short_length - rg.short_length)}


def add_recist_errors(cases: list[dict[str, Any]], spacing: Sequence[float] | None = None,
                      cancel: CancelToken | None = None) -> None:
    """Add ``long_error`` / ``short_error`` to evaluation cases (with ``pred``/``gt`` paths)."""
    from napari_recist_seg.data.masks import read_mask

    for case in cases:
        if cancel is not None and cancel.cancelled:
            return
        try:
            case.update(recist_errors(read_mask(case["pred"]), read_mask(case["gt"]), spacing))
        except Exception as exc:  # a metric extra never fails the evaluation
            case.update({"long_error": math.nan, "short_error": math.nan,
                         "recist_error_note": describe_error(exc)})


def epoch_dict(log: Any) -> dict[str, Any]:
    """An epoch log (dataclass or mapping) as a plain dict (for plots and JSON)."""
    if is_dataclass(log):
        return asdict(log)
    return dict(log)
