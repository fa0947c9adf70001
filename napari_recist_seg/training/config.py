"""The settings and results of a training run: :class:`TrainConfig`, :class:`TrainSample`,
:class:`EpochLog`, :class:`TrainResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_recist_seg.model import ModelConfig
from napari_recist_seg.recist import Recist

TRAIN_LOG = "train_log.json"


@dataclass
class TrainConfig:
    """Settings of one training run (stored in the checkpoint and the log).

    Parameters
    ----------
    mode : {"a1", "a1l"}
        A1: segmentation only. A1+L: plus the RECIST-cluster head (multi-task).
    epochs, batch_size, lr, weight_decay
        Optimisation (AdamW, cosine learning-rate decay over ``epochs``).
    aux_weight : float
        lambda, the weight of the cluster cross-entropy (A1+L only).
    n_clusters : int, optional
        K; ``None`` picks it by silhouette (2..8). A1 fits them too (stored in the
        checkpoint for display; no cluster head, no cluster loss).
    target : {"ellipse", "grabcut"}
        The weak target built from each RECIST.
    val_fraction : float
        Fraction of *images* held out for validation (ignored when samples carry an
        explicit ``split``).
    seed : int
        Seeds the split, the initialisation, the order and the augmentation.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``. CUDA trains with AMP.
    num_workers : int
        DataLoader worker processes (0: augment in the main process).
    patience : int
        Stop after this many epochs without a better validation Dice (0: never).
    jitter : float
        Std of the RECIST endpoint jitter, as a fraction of the long axis.
    scale_jitter, rotate_deg, flips, colour_jitter
        Crop-scale range (log-uniform within ``1 +- scale_jitter``), maximum small
        rotation in degrees, 90-degree rotations + flips, brightness/contrast range.
    encoder, encoder_weights, input_size, crop_factor, min_crop, recist_channel, decoder_channels
        The architecture and crop rule of a new model (a fine-tuned model keeps its
        checkpoint's).
    half_weights : bool
        Save the checkpoint weights as float16.
    max_batches_per_epoch : int, optional
        Cap on training batches per epoch (quick experiments and tests).
    shift_aug : float
        Probability of each acquisition-shift augmentation of the raw crop (issue 10:
        images from other cameras): down/up-scaling blur, JPEG re-encoding at quality
        50-95, per-channel colour balance. 0 (default) keeps the old behaviour exactly
        (no random numbers are drawn for it).
    """

    mode: str = "a1l"
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    aux_weight: float = 0.5
    n_clusters: int | None = None
    target: str = "ellipse"
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    patience: int = 8
    jitter: float = 0.05
    scale_jitter: float = 0.15
    rotate_deg: float = 15.0
    flips: bool = True
    colour_jitter: float = 0.1
    encoder: str = "resnet18"
    encoder_weights: str | None = None
    input_size: int = 128
    crop_factor: float = 2.0
    min_crop: int = 32
    recist_channel: bool = True
    decoder_channels: int = 128
    half_weights: bool = False
    max_batches_per_epoch: int | None = None
    shift_aug: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("a1", "a1l"):
            raise ValueError(f"mode must be 'a1' or 'a1l', got {self.mode!r}")
        if self.target not in ("ellipse", "grabcut"):
            raise ValueError(f"target must be 'ellipse' or 'grabcut', got {self.target!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.aux_weight < 0:
            raise ValueError(f"aux_weight (lambda) must be >= 0, got {self.aux_weight}")
        if not 0.0 <= self.shift_aug <= 1.0:
            raise ValueError(f"shift_aug must be a probability in [0, 1], got {self.shift_aug}")
        if self.n_clusters is not None and self.n_clusters < 2:
            raise ValueError(f"n_clusters must be >= 2 (or None for automatic), got {self.n_clusters}")

    def model_config(self, n_clusters: int) -> ModelConfig:
        """The :class:`ModelConfig` of a new model trained with these settings."""
        return ModelConfig(
            encoder=self.encoder,
            encoder_weights=self.encoder_weights,
            mode=self.mode,
            n_clusters=n_clusters if self.mode == "a1l" else 0,
            decoder_channels=self.decoder_channels,
            input_size=self.input_size,
            crop_factor=self.crop_factor,
            min_crop=self.min_crop,
            recist_channel=self.recist_channel,
        )


@dataclass(eq=False)
class TrainSample:
    """One lesion to train on.

    Parameters
    ----------
    image : ndarray or path
        The image plane ``(H, W)`` / ``(H, W, 3)``, a ``(Z, H, W)`` volume (the plane
        is ``recist.slice_index``), or a file read with ``data.images.read_image``.
    recist : Recist
        The measurement in pixel coordinates of the plane.
    curated_mask : ndarray of bool or path, optional
        A mask corrected by hand (plane shape, or the volume's): the target instead
        of the weak one (fine-tuning).
    weak_mask : ndarray of bool or path, optional
        A RECIST-derived target built beforehand (a self-training round,
        :mod:`napari_recist_seg.selftrain`): used instead of ``TrainConfig.target``;
        unlike ``curated_mask`` it is not a correction and is not counted as curated.
    gt_mask : ndarray of bool or path, optional
        Ground truth for the validation report only; never a training target. A path
        is read only if the sample lands in the validation split.
    group : str, optional
        Image id used for the train/validation split (default: the path, else the
        sample's position); all lesions of an image share it.
    split : {"train", "val"}, optional
        Explicit assignment; when any sample has one, ``val_fraction`` is ignored.
    name : str
        For messages.
    """

    image: Any
    recist: Recist
    curated_mask: Any = None
    weak_mask: Any = None
    gt_mask: Any = None
    group: str | None = None
    split: str | None = None
    name: str = ""


@dataclass
class EpochLog:
    """One line of ``train_log.json``."""

    epoch: int
    train_loss: float
    train_seg_loss: float
    train_aux_loss: float | None
    train_aux_acc: float | None
    val_loss: float | None
    val_dice: float | None
    val_gt_dice: float | None
    lr: float
    epoch_time_s: float
    elapsed_s: float
    best: bool = False


@dataclass
class TrainResult:
    """What :func:`train` did."""

    out_dir: Path
    checkpoint: Path | None
    best_epoch: int | None
    best_val_dice: float | None
    epochs_run: int
    cancelled: bool
    stopped_early: bool
    wall_time_s: float
    history: list[EpochLog] = field(default_factory=list)
    n_train: int = 0
    n_val: int = 0
    n_clusters: int = 0  # RECIST shape clusters (A1 keeps them too, without a head)
    failures: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # lines to show the user (e.g. calibration)
