"""Curated annotations in memory: :class:`AnnotatedImage` -> training samples (no Qt).

The Train / Evaluate docks gather what the viewer holds into :class:`AnnotatedImage` s
(arrays, not layers); :mod:`napari_recist_seg.curation` re-exports these names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from scipy import ndimage

from napari_recist_seg.recist import Recist, RecistError

if TYPE_CHECKING:  # pragma: no cover
    from napari_recist_seg.training import TrainSample

__all__ = ["CURATED_KEY", "AnnotatedImage", "safe_name", "split_holdout", "training_samples"]

#: Layer-metadata key that marks a Labels (or image) layer as curated by hand.
CURATED_KEY = "recist_seg_curated"


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
