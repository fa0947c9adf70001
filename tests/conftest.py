"""Shared test fixtures: where the real data lives, and the common set-up of the tests
(one torch thread, tiny untrained checkpoints, small ISIC dataset folders, Dice, a
dark-pixel stand-in predictor, napari docks)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
ISIC_DIR = SHARED_DATA / "isic2017_train256"
LITS_DIR = SHARED_DATA / "lits_case117"


@pytest.fixture(scope="session")
def isic_dir() -> Path:
    """The 2000 ISIC 2017 images (256x256) and expert masks from ../shared/data."""
    if not (ISIC_DIR / "images").is_dir():
        pytest.skip(f"real data not found at {ISIC_DIR}")
    return ISIC_DIR


@pytest.fixture(scope="session")
def lits_dir() -> Path:
    """The LiTS CT case (128^3, HU) with liver / tumour labels from ../shared/data."""
    if not (LITS_DIR / "ct.nii.gz").is_file():
        pytest.skip(f"real data not found at {LITS_DIR}")
    return LITS_DIR


# -- shared set-up: one torch thread, tiny checkpoints, ISIC dataset folders, Dice, a --
# -- dark-pixel stand-in predictor, napari docks ----------------------------------------
#
# pytest runs with --import-mode=importlib, so test modules cannot import this file:
# the helpers below are plain functions handed out by fixtures of the same name.


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
    bias zeroed: a fresh network outputs about 0.5 everywhere (whole-box masks, the same
    for every seed), a steeper head makes its masks follow the features.
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
    module: its masks are arbitrary, the geometry around them is exact."""
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
        pytest.skip(f"real data not found at {ISIC_DIR}")
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
            qtbot.waitUntil(lambda: not w.jobs.busy, timeout=timeout)
