"""Regenerate the sample data shipped in ``napari_recist_seg/sample_data/``.

Run from the repository root (the real data sits next to it in ``../shared/data``)::

    python sample_data/make_samples.py [--data ../shared/data]

It writes, into the package (so that a plain ``pip install .`` ships them):

- four ISIC 2017 dermoscopy images (256x256 JPEG, copied byte for byte), their expert
  masks (``*_segmentation.png``, for evaluation demos only) and
  ``dermoscopy_recist.csv``: RECIST derived from each expert mask (longest diameter,
  then the longest diameter perpendicular to it);
- ``lits117_slab.nii.gz``: nine axial slices of LiTS case 117 (int16 HU) around the
  slice with the most tumours, ``lits117_slab_labels.nii.gz`` (0 background, 1 liver,
  2 tumour) and ``ct_recist.csv``: one RECIST per tumour on the central slice (label 2,
  ``recist_from_mask(per_component=True)``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_recist_seg.annotation import save_image
from napari_recist_seg.data import (
    RecistRecord,
    read_image,
    read_labels,
    read_mask,
    write_labels,
    write_recist_csv,
)
from napari_recist_seg.recist import recist_from_mask

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "napari_recist_seg" / "sample_data"
# Clear, single lesions of different looks: dark and elongated, pale oval, orange
# irregular, large with a ragged border.
ISIC_IDS = ("ISIC_0000048", "ISIC_0000057", "ISIC_0000260", "ISIC_0000021")
CT_HALF_SLAB = 4  # slices on each side of the chosen one
CT_MIN_TUMOUR_PX = 10  # smaller components are noise at this resolution
# RECIST only for tumours of at least this many pixels (about 5 px across): smaller
# ones are not measurable lesions (RECIST 1.1 asks for >= 10 mm) and clutter the view.
CT_MIN_RECIST_PX = 20


def make_dermoscopy(data: Path) -> None:
    src = data / "isic2017_train256"
    records = []
    for stem in ISIC_IDS:
        image = OUT / f"{stem}.jpg"
        shutil.copyfile(src / "images" / f"{stem}.jpg", image)
        mask_name = f"{stem}_segmentation.png"
        shutil.copyfile(src / "masks" / mask_name, OUT / mask_name)
        recist = recist_from_mask(read_mask(OUT / mask_name))
        records.append(RecistRecord(image=image, lesion=1, recist=recist))
    write_recist_csv(OUT / "dermoscopy_recist.csv", records)


def make_ct(data: Path) -> None:
    src = data / "lits_case117"
    ct = read_image(src / "ct.nii.gz").array
    labels = read_labels(src / "labels.nii.gz")
    counts = []
    for z in range(labels.shape[0]):
        lab, _ = ndimage.label(labels[z] == 2, structure=np.ones((3, 3), bool))
        areas = np.bincount(lab.ravel())[1:]
        counts.append(int((areas >= CT_MIN_TUMOUR_PX).sum()))
    z0 = int(np.argmax(counts))
    lo = max(0, z0 - CT_HALF_SLAB)
    hi = min(labels.shape[0], z0 + CT_HALF_SLAB + 1)
    slab = np.ascontiguousarray(ct[lo:hi]).astype(np.int16)
    slab_labels = np.ascontiguousarray(labels[lo:hi]).astype(np.uint8)
    image = OUT / "lits117_slab.nii.gz"
    image.unlink(missing_ok=True)
    save_image(image, slab, None)
    write_labels(OUT / "lits117_slab_labels.nii.gz", slab_labels)
    centre = z0 - lo
    recists = recist_from_mask(
        slab_labels[centre] == 2, per_component=True, min_area=CT_MIN_RECIST_PX, slice_index=centre
    )
    records = [RecistRecord(image=image, lesion=i + 1, recist=r) for i, r in enumerate(recists)]
    write_recist_csv(OUT / "ct_recist.csv", records)
    print(f"CT: slices {lo}..{hi - 1} of case 117 (tumours peak on {z0}: {counts[z0]}), "
          f"{len(records)} RECIST on slab slice {centre}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    make_dermoscopy(args.data)
    make_ct(args.data)
    for p in OUT.iterdir():
        p.chmod(0o644)  # atomic writes create 0600 temp files; package data must be readable
    total = sum(p.stat().st_size for p in OUT.iterdir() if p.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
