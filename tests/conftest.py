"""Shared test fixtures: where the real data lives, and the common set-up of the tests
(one torch thread, tiny untrained checkpoints, a small *trained* checkpoint whose masks
are real, small ISIC dataset folders, Dice, a dark-pixel stand-in predictor, napari
docks).

Missing real data skips the tests that need it, except under ``CI=true``, where it is
a failure: a wrong data path must not turn CI into a near-empty run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
ISIC_DIR = SHARED_DATA / "isic2017_train256"
LITS_DIR = SHARED_DATA / "lits_case117"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_sessionstart(session) -> None:
    """Under CI, missing real data stops the run at once (exit 2) instead of skipping
    most of the suite (module-level ``skipif`` markers included)."""
    if _in_ci() and not ((ISIC_DIR / "images").is_dir() and (LITS_DIR / "ct.nii.gz").is_file()):
        pytest.exit(f"CI: real data not found at {SHARED_DATA}", returncode=2)


def _missing(what: Path) -> None:
    """Skip the test for missing real data (a failure under CI)."""
    if _in_ci():
        pytest.fail(f"CI: real data not found at {what}")
    pytest.skip(f"real data not found at {what}")


@pytest.fixture(scope="session")
def isic_dir() -> Path:
    """The 2000 ISIC 2017 images (256x256) and expert masks from ../shared/data."""
    if not (ISIC_DIR / "images").is_dir():
        _missing(ISIC_DIR)
    return ISIC_DIR


@pytest.fixture(scope="session")
def lits_dir() -> Path:
    """The LiTS CT case (128^3, HU) with liver / tumour labels from ../shared/data."""
    if not (LITS_DIR / "ct.nii.gz").is_file():
        _missing(LITS_DIR)
    return LITS_DIR


# -- shared set-up: one torch thread, tiny checkpoints, ISIC dataset folders, Dice, a --
# -- dark-pixel stand-in predictor, napari docks ----------------------------------------
#
# pytest runs with --import-mode=importlib, so test modules cannot import this file:
# the helpers below are plain functions handed out by fixtures of the same name.


@pytest.fixture(autouse=True)
def _recovery_in_tmp(tmp_path_factory, monkeypatch):
    """The annotator's autosave writes into a fresh folder per test, never the user's
    ~/.cache (and an entry of one test is never offered for restore in the next)."""
    monkeypatch.setenv("RECIST_SEG_RECOVERY_DIR", str(tmp_path_factory.mktemp("recovery")))


@pytest.fixture()
def one_thread():
    """Torch on one thread for the test (the CI machine has 2 shared cores and
    oversubscribed torch threads crawl); the previous count is restored afterwards.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _make_tiny_checkpoint(
    path: Path,
    *,
    mode: str = "a1l",
    seed: int = 0,
    input_size: int = 64,
    decoder_channels: int = 32,
    n_clusters: int = 3,
    head_gain: float | None = None,
) -> Path:
    """Save an untrained tiny checkpoint at ``path`` and return its folder.

    ``torch.manual_seed(seed)`` fixes the weights. A1+L gets ``n_clusters`` clusters
    drawn from ``numpy.random.default_rng(seed)`` (7 features); A1 has none. With
    ``head_gain`` the last convolution (the segmentation head) is scaled by it and its
    bias zeroed: a fresh network outputs about 0.5 everywhere (so its mask at 0.5 is
    arbitrary, the same for every seed), a steeper head makes its masks follow the features.
    """
    import numpy as np
    import torch

    from napari_recist_seg.clusters import ClusterModel
    from napari_recist_seg.model import ModelConfig, build_model, save_checkpoint

    torch.manual_seed(seed)
    clusters = None
    if mode == "a1l":
        cfg = ModelConfig(mode=mode, n_clusters=n_clusters, input_size=input_size,
                          decoder_channels=decoder_channels)
        rng = np.random.default_rng(seed)
        clusters = ClusterModel(rng.normal(size=(n_clusters, 7)), np.zeros(7), np.ones(7))
    else:
        cfg = ModelConfig(mode=mode, input_size=input_size, decoder_channels=decoder_channels)
    net = build_model(cfg)
    if head_gain is not None:
        with torch.no_grad():
            head = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
            head.weight.mul_(head_gain)
            head.bias.zero_()
    return save_checkpoint(path, net, cfg, clusters)


@pytest.fixture(scope="session")
def make_tiny_checkpoint():
    """The function ``make_tiny_checkpoint(path, *, mode="a1l", seed=0, input_size=64,
    decoder_channels=32, n_clusters=3, head_gain=None) -> Path``: an untrained model."""
    return _make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_seed() -> int:
    """The seed of ``tiny_ckpt``; a test module overrides this fixture to change it."""
    return 0


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_seed) -> Path:
    """An untrained A1+L checkpoint (64 px input, K=3, seed ``tiny_seed``), one per test
    module: its probabilities are 0.45-0.49 on ISIC images, so its masks are *empty*;
    use it only where no real mask is needed (geometry, plumbing), else ``trained``."""
    return _make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=tiny_seed)


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    """``tiny_ckpt`` loaded as a CPU :class:`~napari_recist_seg.predict.Predictor`."""
    from napari_recist_seg.predict import Predictor

    return Predictor.load(tiny_ckpt, device="cpu")


@pytest.fixture(scope="module")
def tiny_a1_ckpt(tmp_path_factory) -> Path:
    """An untrained tiny A1 model (32 px input, seed 0), one per test module: for tests
    of plumbing that does not need a good model."""
    return _make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", mode="a1",
                                 input_size=32, decoder_channels=16)


# -- a small trained A1+L checkpoint: real, non-empty masks ------------------------------
#
# The untrained checkpoints above output ~0.47 everywhere (empty masks at 0.5), so a test
# that compares their masks compares zeros with zeros. This one is trained for seconds on
# the ellipse targets of 40 real ISIC images (deterministic: seed 0, one torch thread)
# and reaches Dice ~0.8 against the expert masks of held-out images.

TRAINED_STEMS = slice(100, 140)  # training images (sorted ISIC stems); tests use others
TRAINED_EVAL_STEMS = slice(140, 150)  # held out, for the Dice check


def _isic_stems() -> list[str]:
    tail = "_segmentation.png"
    return [p.name[: -len(tail)] for p in sorted((ISIC_DIR / "masks").glob(f"*{tail}"))]


def _train_small_checkpoint(out: Path) -> Path:
    """Train the small A1+L model (32 px input, K=3, 8 epochs) into ``out``."""
    import numpy as np
    import torch
    from PIL import Image

    from napari_recist_seg.recist import recist_from_mask
    from napari_recist_seg.training import TrainConfig, TrainSample, train

    samples = []
    for stem in _isic_stems()[TRAINED_STEMS]:
        gt = np.asarray(Image.open(ISIC_DIR / "masks" / f"{stem}_segmentation.png")) > 0
        samples.append(TrainSample(image=ISIC_DIR / "images" / f"{stem}.jpg",
                                   recist=recist_from_mask(gt), group=stem, name=stem,
                                   split="train"))
    cfg = TrainConfig(mode="a1l", epochs=8, batch_size=8, lr=3e-3, input_size=32,
                      n_clusters=3, decoder_channels=32, val_fraction=0.0, patience=0,
                      device="cpu", seed=0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, samples, out)
    finally:
        torch.set_num_threads(n)
    return out


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory) -> Path:
    """A small A1+L checkpoint trained on real ISIC images (once per session, ~20-40 s
    on CPU): its masks are non-empty and follow the lesion. ``RECIST_SEG_TEST_MODEL``
    names a prebuilt one (e.g. from an earlier session) to reuse instead."""
    prebuilt = os.environ.get("RECIST_SEG_TEST_MODEL")
    if prebuilt:
        return Path(prebuilt)
    if not (ISIC_DIR / "masks").is_dir():
        _missing(ISIC_DIR)
    return _train_small_checkpoint(tmp_path_factory.mktemp("trained") / "a1l")


@pytest.fixture(scope="session")
def trained(trained_ckpt):
    """``trained_ckpt`` loaded as a CPU :class:`~napari_recist_seg.predict.Predictor`."""
    from napari_recist_seg.predict import Predictor

    return Predictor.load(trained_ckpt, device="cpu")


@pytest.fixture(scope="session")
def trained_eval_stems() -> list[str]:
    """ISIC stems held out from ``trained_ckpt``'s training images."""
    if not (ISIC_DIR / "masks").is_dir():
        _missing(ISIC_DIR)
    return _isic_stems()[TRAINED_EVAL_STEMS]


def _make_isic_dataset(
    root: Path,
    stems,
    *,
    broken: str | None = None,
    broken_from: str | None = None,
    keep: int = 2,
) -> Path:
    """A dataset folder at ``root``: the real ISIC images ``images/<stem>.jpg`` and their
    expert masks ``masks/<stem>_segmentation.png`` for ``stems``.

    With ``broken``, also a truncated JPEG ``images/<broken>.jpg`` holding the first
    ``1/keep`` of the bytes of the image of ``broken_from`` (``broken`` itself by
    default), with that image's expert mask as ``masks/<broken>_segmentation.png``.
    """
    import shutil

    if not (ISIC_DIR / "images").is_dir():
        _missing(ISIC_DIR)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem in stems:
        shutil.copy(ISIC_DIR / "images" / f"{stem}.jpg", root / "images")
        shutil.copy(ISIC_DIR / "masks" / f"{stem}_segmentation.png", root / "masks")
    if broken is not None:
        source = broken_from or broken
        data = (ISIC_DIR / "images" / f"{source}.jpg").read_bytes()
        (root / "images" / f"{broken}.jpg").write_bytes(data[: len(data) // keep])
        shutil.copy(ISIC_DIR / "masks" / f"{source}_segmentation.png",
                    root / "masks" / f"{broken}_segmentation.png")
    return root


@pytest.fixture(scope="session")
def make_isic_dataset():
    """The function ``make_isic_dataset(root, stems, *, broken=None, broken_from=None,
    keep=2) -> Path``: real ISIC images + expert masks copied into a dataset folder
    (skips the test when the real data is missing)."""
    return _make_isic_dataset


def _dice(a, b) -> float:
    """Dice of two masks (1.0 when both are empty)."""
    import numpy as np

    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


@pytest.fixture(scope="session")
def dice():
    """The function ``dice(a, b) -> float`` for two masks (1.0 when both are empty)."""
    return _dice


def _make_dark_predictor(level: float = 0.5, input_size: int = 64):
    """A CPU predictor around a transparent stand-in network: lesion = pixels of the
    crop darker than ``level`` (mean RGB in 0..1; dermoscopy lesions are dark); it
    ignores the RECIST channel. Its A1 config has ``input_size`` and defaults else."""
    import torch

    from napari_recist_seg.model import ModelConfig
    from napari_recist_seg.predict import Predictor

    class DarkNet(torch.nn.Module):
        def __init__(self, cfg: ModelConfig) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1))

        def forward(self, x):
            grey = (x[:, :3] * self.std + self.mean).mean(dim=1, keepdim=True)
            return 40.0 * (level - grey), None

    cfg = ModelConfig(mode="a1", input_size=input_size)
    return Predictor(DarkNet(cfg), cfg, None, "cpu")


@pytest.fixture(scope="session")
def make_dark_predictor():
    """The function ``make_dark_predictor(level=0.5, input_size=64) -> Predictor``:
    segments the pixels darker than ``level``, for checks whose true answer is known."""
    return _make_dark_predictor


@pytest.fixture()
def open_dock(make_napari_viewer, qtbot):
    """The function ``open_dock(widget_class, name, *, cancel_timeout_ms=60000)``: a new
    viewer with the dock ``widget_class(viewer)`` added under ``name``, its device set
    to CPU. At teardown a job still running in a dock is cancelled and waited for (up
    to ``cancel_timeout_ms``) before the viewer closes."""
    opened = []

    def open_(widget_class, name: str, *, cancel_timeout_ms: int = 60000):
        viewer = make_napari_viewer()
        w = widget_class(viewer)
        viewer.window.add_dock_widget(w, name=name)
        w.device.setCurrentText("cpu")
        opened.append((w, cancel_timeout_ms))
        return w

    yield open_
    for w, timeout in opened:
        if w.jobs.busy:
            w.jobs.cancel()
            qtbot.waitUntil(lambda: not w.jobs.busy, timeout=timeout)  # noqa: B023 - called in this iteration
