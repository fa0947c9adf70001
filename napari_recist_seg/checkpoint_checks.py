"""Checks of a checkpoint's ``config.json`` and weights before a model is built from them.

A checkpoint is a file a user may have been sent. :func:`napari_recist_seg.model.load_checkpoint`
runs these checks so that a hostile or corrupt one is refused with one
:class:`CheckpointError` naming the reason, instead of a traceback, a huge
allocation, a network access or, worst, a model that loads and gives empty masks:

- ``config.json`` parses to a shallow JSON object (:func:`parse_config`; at most
  :data:`MAX_JSON_DEPTH` levels) and its ``format_version`` is an integer this
  version supports (:func:`check_format_version`);
- every model setting has its type and a sane range (:func:`model_config_problem`):
  ``decoder_channels`` 8..1024, ``input_size`` 16..1024 and a multiple of the encoder
  output stride, ``threshold`` strictly between 0 and 1, the optional calibration
  ``logit_bias`` in [-4, 4], ``boundary_offset`` in [-0.2, 0.2], ``recist_fit`` in
  [0, 2] and ``grabcut_blend`` in [0, 1], finite ``mean``, ``std > 0``,
  and an ``encoder`` that builds offline (a segmentation-models-pytorch encoder or
  ``tu-<timm model>``; never ``tu-hf-hub:...``, which fetches code from the network);
- the weights file is a plain name inside the checkpoint folder (:func:`weights_path`);
- every weight is a finite floating-point tensor (batch-norm counters: integers)
  (:func:`check_weights`).

Examples
--------
>>> model_config_problem({"decoder_channels": "128"})
"decoder_channels must be an integer in 8..1024, got '128'"
>>> model_config_problem({"encoder": "tu-hf-hub:someone/model"})
"encoder must build offline (a segmentation-models-pytorch encoder or tu-<timm model>), got 'tu-hf-hub:someone/model'"
>>> model_config_problem({"input_size": 128, "threshold": 0.5}) is None
True
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

__all__ = [
    "CheckpointError",
    "MAX_DECODER_CHANNELS",
    "MAX_INPUT_SIZE",
    "MAX_BOUNDARY_OFFSET",
    "MAX_JSON_DEPTH",
    "MAX_LOGIT_BIAS",
    "check_checkpoint",
    "check_format_version",
    "check_weights",
    "json_depth",
    "model_config_problem",
    "parse_config",
    "weights_path",
]

#: Widest DeepLabV3+ decoder accepted (the shipped model has 128).
MAX_DECODER_CHANNELS = 1024
#: Largest network input side in pixels (the shipped model has 128).
MAX_INPUT_SIZE = 1024
#: Deepest nesting of ``config.json`` accepted (the real one has 4 levels).
MAX_JSON_DEPTH = 16
#: Calibration limits (``logit_bias`` in logits, ``boundary_offset`` in long axes):
#: beyond them a calibration is not a correction of annotation style but a broken model.
MAX_LOGIT_BIAS = 4.0
MAX_BOUNDARY_OFFSET = 0.2
MAX_RECIST_FIT = 2.0  # fraction of the axis gap (1 = the measured axes match the drawn ones)
_MAX_CLUSTERS = 64


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: corrupt, mismatched, unsafe or too new."""


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0, ``[1]`` is 1).

    >>> json_depth({"a": [1, {"b": 2}]})
    3
    """
    depth, level = 0, [(value, 0)]
    while level:  # iterative: a deep document must not overflow the stack here
        node, d = level.pop()
        depth = max(depth, d)
        if isinstance(node, Mapping):
            level.extend((v, d + 1) for v in node.values())
        elif isinstance(node, (list, tuple)):
            level.extend((v, d + 1) for v in node)
    return depth


def parse_config(text: str, where: str | os.PathLike[str]) -> Any:
    """``json.loads`` that turns a too-deep document into a :class:`CheckpointError`.

    Raises
    ------
    json.JSONDecodeError
        Not JSON (the caller reports it as unreadable).
    CheckpointError
        Nested deeper than :data:`MAX_JSON_DEPTH`.
    """
    try:
        doc = json.loads(text)
    except RecursionError:
        doc = None
        depth = -1
    else:
        depth = json_depth(doc)
    if depth < 0 or depth > MAX_JSON_DEPTH:
        raise CheckpointError(
            f"{where}: the config is nested too deeply (more than {MAX_JSON_DEPTH} levels)"
        )
    return doc


def check_format_version(value: Any, supported: int, where: str | os.PathLike[str]) -> None:
    """Refuse a ``format_version`` that is not an integer in ``1..supported``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(
            f"{where}: format_version must be an integer (this version writes {supported}), "
            f"got {_show(value)}"
        )
    if value > supported:
        raise CheckpointError(
            f"{where}: checkpoint format version {value} is newer than this version of "
            f"napari-recist-seg supports ({supported}); upgrade the package"
        )
    if value < 1:
        raise CheckpointError(f"{where}: invalid format_version {value} (versions start at 1)")


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_in(lo: int, hi: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and lo <= v <= hi), f"an integer in {lo}..{hi}"


def _reals(n: int, positive: bool = False) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        return (isinstance(v, (list, tuple)) and len(v) == n and all(_is_real(x) for x in v)
                and (not positive or all(x > 0 for x in v)))
    return ok


def _offline_encoder(name: Any) -> bool:
    """True for encoder names that build from code shipped with the packages."""
    if not isinstance(name, str) or ":" in name or "/" in name:
        return False  # tu-hf-hub:org/model and friends download code and weights
    if "torch" not in sys.modules:
        # The torch-free ONNX path builds no encoder; importing smp here would pull in
        # torch. Any path that builds the network imports torch first and checks fully.
        return True
    from segmentation_models_pytorch.encoders import encoders

    if name in encoders:
        return True
    if name.startswith("tu-"):
        import timm

        return name[3:] in set(timm.list_models())
    return False


# name -> (accepts the value?, what it must be). Absent keys take valid defaults.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "encoder": (_offline_encoder, "build offline (a segmentation-models-pytorch encoder or tu-<timm model>)"),
    "encoder_weights": (lambda v: v is None or isinstance(v, str), "null or a string"),
    "mode": (lambda v: v in ("a1", "a1l"), "'a1' or 'a1l'"),
    "n_clusters": _int_in(0, _MAX_CLUSTERS),
    "decoder_channels": _int_in(8, MAX_DECODER_CHANNELS),
    "encoder_output_stride": (lambda v: _is_int(v) and v in (8, 16), "8 or 16"),
    "aux_dropout": (lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)"),
    "threshold": (lambda v: _is_real(v) and 0 < v < 1, "a number strictly between 0 and 1"),
    "logit_bias": (lambda v: _is_real(v) and abs(v) <= MAX_LOGIT_BIAS, f"a number in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}]"),
    "boundary_offset": (lambda v: _is_real(v) and abs(v) <= MAX_BOUNDARY_OFFSET,
                        f"a number in [-{MAX_BOUNDARY_OFFSET:g}, {MAX_BOUNDARY_OFFSET:g}] (fraction of the long axis)"),
    "recist_fit": (lambda v: _is_real(v) and 0 <= v <= MAX_RECIST_FIT,
                   f"a number in [0, {MAX_RECIST_FIT:g}] (fraction of the axis gap)"),
    "grabcut_blend": (lambda v: _is_real(v) and 0 <= v <= 1, "a number in [0, 1] (GrabCut's weight)"),
    "input_size": _int_in(16, MAX_INPUT_SIZE),
    "crop_factor": (lambda v: _is_real(v) and 0 < v <= 100, "a number in (0, 100]"),
    "min_crop": _int_in(2, 65536),
    "recist_channel": (lambda v: isinstance(v, bool), "true or false"),
    "pad_mode": (lambda v: v in ("edge", "constant"), "'edge' or 'constant'"),
    "ct_window": (lambda v: _reals(2)(v) and v[1] > 0, "[level, width] with a positive width"),
    "mean": (_reals(3), "3 finite numbers"),
    "std": (_reals(3, positive=True), "3 positive finite numbers"),
}


def model_config_problem(model: Any) -> str | None:
    """What is wrong with ``config.json["model"]``, or ``None`` when every value is usable."""
    if not isinstance(model, Mapping):
        return f"the model config must be a JSON object, got {_show(model)}"
    for key, (ok, what) in _RULES.items():
        if key in model and not ok(model[key]):
            verb = "must" if what.startswith("build") else "must be"
            return f"{key} {verb} {what}, got {_show(model[key])}"
    size, stride = model.get("input_size", 128), model.get("encoder_output_stride", 16)
    if size % stride:
        return f"input_size must be a multiple of the encoder output stride {stride}, got {size}"
    return None


def weights_path(folder: Path, name: Any, default: str) -> Path:
    """The weights file a checkpoint folder's config names; it must lie in the folder.

    Raises
    ------
    CheckpointError
        A name that is not a string, has a folder part (``../x``), or resolves (through
        a link) outside the checkpoint folder.
    """
    raw = default if name is None or name == "" else name
    bad = not isinstance(raw, str) or raw in (".", "..") or "/" in raw or "\\" in raw
    if not bad:
        path = folder / raw
        try:
            bad = not path.resolve().is_relative_to(folder.resolve())
        except (OSError, RuntimeError):  # a link loop
            bad = True
    if bad:
        raise CheckpointError(
            f"{folder}: 'weights' in config.json must name a file inside the checkpoint "
            f"folder, got {_show(raw)}"
        )
    return path


def check_weights(state: Mapping[str, Any], where: str | os.PathLike[str]) -> None:
    """Every weight a finite float tensor; batch-norm step counters integer tensors."""
    import torch

    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: weight {key} is not a tensor")
        if key.endswith("num_batches_tracked"):
            if value.is_floating_point() or value.dtype == torch.bool or value.is_complex():
                raise CheckpointError(f"{where}: {key} has dtype {value.dtype}; expected an integer")
            continue
        if not value.is_floating_point():
            raise CheckpointError(
                f"{where}: weight {key} has dtype {str(value.dtype).removeprefix('torch.')}; "
                "expected floating point (float16 / bfloat16 / float32)"
            )
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            raise CheckpointError(
                f"{where}: weight {key} holds {bad} NaN or infinite values of {value.numel()} "
                "(corrupt checkpoint)"
            )


def check_checkpoint(
    doc: Mapping[str, Any], state: Mapping[str, Any], supported: int, where: str | os.PathLike[str]
) -> None:
    """All checks of a loaded ``config.json`` (``doc``) and state dict, before building.

    Raises
    ------
    CheckpointError
        The first problem found, naming the checkpoint and the setting or weight.
    """
    check_config(doc, supported, where)
    check_weights(state, where)


def check_config(doc: Mapping[str, Any], supported: int, where: str | os.PathLike[str]) -> None:
    """The checks of a loaded ``config.json`` alone (also for a stored ONNX graph).

    Raises
    ------
    CheckpointError
        The first problem found, naming the checkpoint and the setting.
    """
    if json_depth(doc) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{where}: the config is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    check_format_version(doc.get("format_version", supported), supported, where)
    model = doc.get("model")
    if isinstance(model, Mapping) and "format_version" in model:
        check_format_version(model["format_version"], supported, where)
    problem = model_config_problem(model)
    if problem is not None:
        raise CheckpointError(f"{where}: invalid model config: {problem}")
