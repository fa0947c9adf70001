"""Sample data (File > Open Sample > RECIST Segmentation).

- ``dermoscopy``: four ISIC 2017 dermoscopy images (CC-0) in a 2x2 grid, each with the
  RECIST derived from its expert mask, and the expert mask itself as a hidden contour
  layer (for comparing masks by eye).
- ``ct``: a nine-slice axial slab of LiTS case 117 (CC BY-NC-SA 4.0) in Hounsfield
  units with a soft-tissue / liver window, one RECIST per tumour on the central slice,
  and the reference tumour labels as a hidden contour layer.

The files live in ``napari_recist_seg/sample_data/`` (shipped with the package);
``sample_data/make_samples.py`` in the repository regenerates them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_recist_seg._reader import read_recist_layers
from napari_recist_seg.data.masks import read_labels, read_mask

__all__ = ["SAMPLE_DIR", "ct_sample", "dermoscopy_sample"]

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
DERMOSCOPY_CSV = SAMPLE_DIR / "dermoscopy_recist.csv"
CT_CSV = SAMPLE_DIR / "ct_recist.csv"
CT_LABELS = SAMPLE_DIR / "lits117_slab_labels.nii.gz"
#: Liver / soft-tissue window for the CT sample (HU).
CT_WINDOW = (-100.0, 250.0)
_GAP = 10  # px between the dermoscopy tiles

LayerData = tuple[Any, dict[str, Any], str]


def _expert_layer(mask: np.ndarray, name: str, kwargs: dict[str, Any]) -> LayerData:
    """The mask's outline (so the masks under it stay visible), as a hidden Labels layer."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    structure = np.ones((3, 3), bool) if mask.ndim == 2 else np.ones((1, 3, 3), bool)
    outline = mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)
    return (
        outline.astype(np.uint8),
        {"name": name, "opacity": 1.0, "visible": False, **kwargs},
        "labels",
    )


def dermoscopy_sample() -> list[LayerData]:
    """Four dermoscopy images with RECIST (and hidden expert masks), in a 2x2 grid."""
    layers = read_recist_layers(DERMOSCOPY_CSV)
    out: list[LayerData] = []
    tile = 0
    offset = (0.0, 0.0)
    for data, kwargs, kind in layers:
        if kind == "image":
            rows, cols = data.shape[:2]
            offset = ((tile // 2) * (rows + _GAP), (tile % 2) * (cols + _GAP))
            tile += 1
        kwargs = {**kwargs, "translate": offset}
        out.append((data, kwargs, kind))
        if kind == "image":
            mask_path = SAMPLE_DIR / f"{kwargs['name']}_segmentation.png"
            if mask_path.is_file():
                expert = _expert_layer(read_mask(mask_path), f"{kwargs['name']} expert", {"translate": offset})
                out.insert(len(out) - 1, expert)
    # Images first (bottom), then expert contours, then the RECIST lines on top.
    order = {"image": 0, "labels": 1, "shapes": 2}
    return sorted(out, key=lambda layer: order[layer[2]])


def ct_sample() -> list[LayerData]:
    """A LiTS CT slab (HU, liver window) with one RECIST per tumour on the central slice."""
    layers = read_recist_layers(CT_CSV)
    out: list[LayerData] = []
    for data, kwargs, kind in layers:
        if kind == "image":
            kwargs = {**kwargs, "contrast_limits": CT_WINDOW, "colormap": "gray"}
        out.append((data, kwargs, kind))
    if CT_LABELS.is_file():
        tumours = read_labels(CT_LABELS) == 2
        out.insert(1, _expert_layer(tumours, "lits117_slab expert tumours", {}))
    return out
