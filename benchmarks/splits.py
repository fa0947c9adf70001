"""The fixed ISIC 2017 split shared by every accuracy benchmark and the default model.

The rule is the one of ``train_default_model.py`` (imported from it, so the two can
never drift apart): the sorted image ids are permuted with
``numpy.random.default_rng(2017)``; the first 10% are the held-out *test* images, the
next 10% validation (early stopping / model selection), the rest training. The test
images are never trained on and never used to pick a model.

>>> s = isic_split()
>>> len(s["test"]), len(s["val"]), len(s["train"])
(200, 200, 1600)
>>> set(s["test"]).isdisjoint(s["train"]) and set(s["test"]).isdisjoint(s["val"])
True
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ISIC = REPO.parent / "shared" / "data" / "isic2017_train256"
LITS = REPO.parent / "shared" / "data" / "lits_case117"


def _default_model_script():
    spec = importlib.util.spec_from_file_location("_train_default_model", HERE / "train_default_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def isic_split(data: Path = ISIC) -> dict[str, list[str]]:
    """``{"seed", "rule", "train", "val", "test"}`` over the image ids under ``data/images``."""
    stems = sorted(p.stem for p in (data / "images").glob("*.jpg"))
    if not stems:
        raise FileNotFoundError(f"no ISIC images under {data / 'images'}")
    return _default_model_script().make_split(stems)


def load_isic_case(stem: str, data: Path = ISIC) -> tuple[Path, np.ndarray, np.ndarray]:
    """``(image path, RGB image, expert mask)`` of one ISIC image."""
    from napari_recist_seg.data.images import read_image
    from napari_recist_seg.data.masks import read_mask

    img_path = data / "images" / f"{stem}.jpg"
    return img_path, read_image(img_path).array, read_mask(data / "masks" / f"{stem}_segmentation.png")


def machine() -> dict:
    """What ran the benchmark (CPU count, torch version / threads, load average)."""
    import os
    import platform

    import torch

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
