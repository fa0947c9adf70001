"""The "Train / fine-tune" dock's worker side (no Qt widgets): the jobs and the warm-up.

The jobs run in the dock's job panel worker; :func:`warm_up` imports the training
stack (torch, segmentation-models-pytorch, scikit-learn) in a worker when the dock
opens, so that these imports do not freeze the viewer when training starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import napari_recist_seg.targets  # noqa: F401 - imported before training starts
from napari_recist_seg._widgets._common import prepare_torch
from napari_recist_seg.curation import fine_tune, training_samples
from napari_recist_seg.jobs.train import train_from_dataset
from napari_recist_seg.predict import DEFAULT_MODEL_DIR

_warm_up_state: dict[str, Any] = {"worker": None, "done": False}


def _import_training_stack() -> None:
    import scipy.ndimage  # noqa: F401 - the weak targets import it in their functions
    import segmentation_models_pytorch  # noqa: F401 - model.build_model imports it lazily
    import torch._dynamo  # noqa: F401 - torch optimisers import it on creation
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score  # noqa: F401

    import napari_recist_seg.training  # noqa: F401 - imports torch

    # scikit-learn's first k-means inspects every loaded native library (threadpoolctl,
    # about a second with Qt + torch loaded, holding the GIL); it caches the result.
    KMeans(n_clusters=2, n_init=1, random_state=0).fit(np.arange(8.0).reshape(4, 2))


def warm_up():
    """Import torch, segmentation-models-pytorch and ``torch._dynamo`` in a worker, once.

    Loading these (C extensions, sympy, ...) holds Python's GIL for up to a few
    hundred milliseconds at a time, which freezes the viewer's event loop. Done when
    the dock opens, the stalls fall while the user fills in the form instead of during
    training. Returns the worker (``None`` when already done or running).
    """
    from napari.qt.threading import create_worker

    if _warm_up_state["done"] or _warm_up_state["worker"] is not None:
        return None
    prepare_torch()
    worker = create_worker(_import_training_stack, _start_thread=False)

    def finished() -> None:
        _warm_up_state["worker"] = None
        _warm_up_state["done"] = True

    worker.finished.connect(finished)
    _warm_up_state["worker"] = worker
    worker.start()
    return worker


def warmed_up() -> bool:
    """Whether the training stack has been imported (see :func:`warm_up`)."""
    return bool(_warm_up_state["done"])


# -- the jobs -------------------------------------------------------------------------


def _config(settings: dict[str, Any]):
    from napari_recist_seg.training import TrainConfig  # torch

    return TrainConfig(**settings)


def _resolve_init(init: Path | str | None) -> Path | None:
    if init == "default":
        return DEFAULT_MODEL_DIR
    return None if init is None else Path(init)


def _train_layers_job(images, out, settings, init, on_epoch, use_curated, *, progress=None,
                      cancel=None):
    from napari_recist_seg.training import train  # torch

    config = _config(settings)
    samples = training_samples(images, use_curated_masks=use_curated)
    return train(config, samples, out, init_checkpoint=_resolve_init(init), progress=progress,
                 cancel=cancel, on_epoch=on_epoch)


def _train_folder_job(folder, out, settings, init, on_epoch, *, progress=None, cancel=None):
    report, result = train_from_dataset(folder, out, _config(settings), init=_resolve_init(init),
                                        progress=progress, cancel=cancel, on_epoch=on_epoch)
    # The panel lists result.failures: dataset problems (unreadable files, no RECIST)
    # are in the job report.
    result.failures = list(report.failures)
    return result


def _fine_tune_job(images, out, settings, init, curated_dir, overwrite, on_epoch, *,
                   progress=None, cancel=None):
    return fine_tune(images, out, _config(settings), init_checkpoint=_resolve_init(init),
                     curated_dir=curated_dir, overwrite=overwrite, progress=progress,
                     cancel=cancel, on_epoch=on_epoch)
