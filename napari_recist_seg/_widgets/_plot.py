"""Matplotlib plots docked in napari: training curves and per-case metric distributions.

Plots use the viewer's theme colours so they sit in a dark (or light) dock without a
white box. Drawing is ``draw_idle``: one epoch or one table change costs one redraw,
scheduled by Qt, never inside a worker thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import matplotlib.ticker
import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

__all__ = ["MetricPlot", "PlotStyle", "PlotWidget", "TrainingPlot", "split_log"]

# Colours for series / models (colour-blind friendly, readable on dark and light).
PALETTE = ("#4c9be8", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#edc948")


@dataclass(frozen=True)
class PlotStyle:
    """Figure colours; :meth:`from_viewer` follows napari's current theme."""

    background: str = "#23242b"
    foreground: str = "#f0f1f2"
    grid: str = "#565f6c"

    @classmethod
    def from_viewer(cls, viewer) -> "PlotStyle":
        try:
            from napari.utils.theme import get_theme

            theme = get_theme(viewer.theme)
            return cls(
                background=theme.background.as_hex(),
                foreground=theme.text.as_hex(),
                grid=theme.secondary.as_hex(),
            )
        except Exception:  # headless / unknown theme: the dark default
            return cls()


class PlotWidget(QWidget):
    """A matplotlib figure in a Qt widget, styled like the viewer."""

    def __init__(
        self,
        style: PlotStyle | None = None,
        parent: QWidget | None = None,
        *,
        height: float = 2.6,
    ) -> None:
        super().__init__(parent)
        self.style = style or PlotStyle()
        self.figure = Figure(figsize=(4.0, height), dpi=100, facecolor=self.style.background)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.canvas.setMinimumHeight(int(height * 70))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)

    def _style_axes(self, ax) -> None:
        s = self.style
        ax.set_facecolor(s.background)
        for spine in ax.spines.values():
            spine.set_color(s.grid)
        ax.tick_params(colors=s.foreground, labelsize=8)
        ax.xaxis.label.set_color(s.foreground)
        ax.yaxis.label.set_color(s.foreground)
        ax.title.set_color(s.foreground)
        ax.grid(True, color=s.grid, alpha=0.35, linewidth=0.6)

    def _legend(self, ax, handles=None) -> None:
        leg = ax.legend(handles=handles, fontsize=7, loc="best", frameon=True)
        if leg is not None:
            leg.get_frame().set_facecolor(self.style.background)
            leg.get_frame().set_edgecolor(self.style.grid)
            for text in leg.get_texts():
                text.set_color(self.style.foreground)

    def message(self, text: str) -> None:
        """Replace the plot with a centred line of text (e.g. "no epochs yet")."""
        self.figure.clear()
        self.figure.text(0.5, 0.5, text, ha="center", va="center",
                         color=self.style.foreground, fontsize=9)
        self.canvas.draw_idle()


def split_log(log: Mapping[str, object]) -> tuple[dict[str, float], dict[str, float]]:
    """Split an epoch log into loss-like and score-like numeric entries.

    Loss keys contain ``"loss"``; score keys contain ``"dice"`` or ``"iou"`` (plotted on
    a 0–1 axis). Anything else (epoch number, wall time, learning rate) is ignored.

    >>> split_log({"epoch": 3, "train_loss": 0.5, "val_loss": 0.6, "val_dice": 0.8, "lr": 1e-3})
    ({'train_loss': 0.5, 'val_loss': 0.6}, {'val_dice': 0.8})
    """
    losses: dict[str, float] = {}
    scores: dict[str, float] = {}
    for key, value in log.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            continue
        name = key.lower()
        if "loss" in name:
            losses[key] = float(value)
        elif "dice" in name or "iou" in name:
            scores[key] = float(value)
    return losses, scores


class TrainingPlot(PlotWidget):
    """Training / validation loss (left) and validation Dice (right) per epoch.

    Feed it the per-epoch log dicts the trainer sends (``on_epoch``); the keys are taken
    from the logs, so a new loss term shows up without changes here. The axes and
    lines are made once and only their data change per epoch: a redraw costs a few
    tens of milliseconds of the GUI thread, not a full re-layout.
    """

    #: Shown when present (others are in train_log.json); all numeric keys otherwise.
    PREFERRED = ("train_loss", "val_loss", "train_aux_loss", "val_dice", "val_gt_dice")
    #: Colour and line style per known key: a loss and its validation twin share a
    #: colour (solid = training, dashed = validation).
    STYLES = {
        "train_loss": ("#4c9be8", "-"),
        "val_loss": ("#4c9be8", "--"),
        "train_aux_loss": ("#f28e2b", "-"),
        "val_dice": ("#59a14f", "-"),
        "val_gt_dice": ("#edc948", "-"),
    }
    LABELS = {
        "train_loss": "train loss",
        "val_loss": "val loss",
        "train_aux_loss": "cluster loss",
        "val_dice": "val Dice (weak target)",
        "val_gt_dice": "val Dice (ground truth)",
    }

    def __init__(self, style: PlotStyle | None = None, parent: QWidget | None = None) -> None:
        super().__init__(style, parent, height=3.6)
        self.logs: list[dict[str, object]] = []
        self.best_epoch: int | None = None
        self._ax = self._ax2 = None
        self._lines: dict[str, object] = {}
        self._best_line = None
        self.clear()

    def clear(self) -> None:
        self.logs = []
        self.best_epoch = None
        self._ax = self._ax2 = None
        self._lines = {}
        self._best_line = None
        self.message("loss and validation Dice appear here, per epoch")

    @property
    def epochs(self) -> list[int]:
        """The epoch numbers plotted so far."""
        return [self._epoch_of(log, i) for i, log in enumerate(self.logs)]

    @staticmethod
    def _epoch_of(log: Mapping[str, object], index: int) -> int:
        value = log.get("epoch", index + 1)
        try:
            return int(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return index + 1

    def add_epoch(self, log: Mapping[str, object]) -> None:
        """Append one epoch's log and redraw."""
        self.logs.append(dict(log))
        self.redraw()

    def mark_best(self, epoch: int | None) -> None:
        """Draw a marker at the epoch whose checkpoint was kept."""
        self.best_epoch = epoch
        self.redraw()

    def _keys(self) -> tuple[list[str], list[str]]:
        keys_loss: list[str] = []
        keys_score: list[str] = []
        for log in self.logs:
            losses, scores = split_log(log)
            keys_loss += [k for k in losses if k not in keys_loss]
            keys_score += [k for k in scores if k not in keys_score]
        if any(k in self.PREFERRED for k in keys_loss + keys_score):
            keys_loss = [k for k in keys_loss if k in self.PREFERRED]
            keys_score = [k for k in keys_score if k in self.PREFERRED]
        return keys_loss, keys_score

    def _make_axes(self) -> None:
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        self._style_axes(ax)
        ax2 = ax.twinx()
        ax2.set_facecolor("none")
        ax2.tick_params(colors=self.style.foreground, labelsize=8)
        for spine in ax2.spines.values():
            spine.set_color(self.style.grid)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax2.set_ylabel("Dice", fontsize=8, color=self.style.foreground)
        ax2.set_ylim(0, 1)
        # Room for the legend above the axes (it never hides a curve).
        self.figure.subplots_adjust(left=0.12, right=0.88, bottom=0.16, top=0.78)
        self._ax, self._ax2 = ax, ax2
        self._lines = {}
        self._best_line = None

    def redraw(self) -> None:
        if not self.logs:
            self.clear()
            return
        if self._ax is None:
            self._make_axes()
        ax, ax2 = self._ax, self._ax2
        x = self.epochs
        keys_loss, keys_score = self._keys()
        new_key = False
        for i, key in enumerate(keys_loss + keys_score):
            is_score = key in keys_score
            values = [split_log(log)[1 if is_score else 0].get(key, math.nan) for log in self.logs]
            line = self._lines.get(key)
            if line is None:
                target = ax2 if is_score else ax
                default = "-" if is_score or not key.lower().startswith("val") else "--"
                colour, style = self.STYLES.get(key, (PALETTE[i % len(PALETTE)], default))
                (line,) = target.plot(x, values, style, marker="s" if is_score else "o", ms=3,
                                      lw=1.5, color=colour,
                                      label=self.LABELS.get(key, key.replace("_", " ")))
                self._lines[key] = line
                new_key = True
            else:
                line.set_data(x, values)
        if new_key:
            leg = ax.legend(handles=list(self._lines.values()), fontsize=7, ncol=2,
                            loc="lower center", bbox_to_anchor=(0.5, 1.02), frameon=False)
            for text in leg.get_texts():
                text.set_color(self.style.foreground)
        if self.best_epoch is not None:
            if self._best_line is None:
                self._best_line = ax.axvline(self.best_epoch, color=self.style.foreground,
                                             alpha=0.5, lw=0.8, ls=":")
            else:
                self._best_line.set_xdata([self.best_epoch, self.best_epoch])
        ax.relim()
        ax.autoscale_view()
        lo, hi = min(x), max(x)
        ax.set_xlim(lo - 0.5, hi + 0.5)
        if len(x) <= 12:
            ax.set_xticks(x)
        else:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        self.canvas.draw_idle()


class MetricPlot(PlotWidget):
    """Box plot (with the cases as dots) of one metric, one box per model."""

    def __init__(self, style: PlotStyle | None = None, parent: QWidget | None = None) -> None:
        super().__init__(style, parent, height=2.4)
        self.values: dict[str, list[float]] = {}
        self.metric = ""
        self.message("per-case distribution appears here")

    def show_values(self, values: Mapping[str, Sequence[float]], metric: str) -> None:
        """Plot ``values[model]`` (per-case numbers; NaN / inf are left out)."""
        self.values = {k: [float(v) for v in vs] for k, vs in values.items()}
        self.metric = metric
        self.figure.clear()
        finite = {k: [v for v in vs if math.isfinite(v)] for k, vs in self.values.items()}
        if not any(finite.values()):
            self.message(f"no finite {metric} values to plot")
            return
        ax = self.figure.add_subplot(111)
        self._style_axes(ax)
        names = list(finite)
        data = [finite[n] if finite[n] else [math.nan] for n in names]
        bp = ax.boxplot(data, widths=0.5, patch_artist=True, showfliers=False)
        for i, box in enumerate(bp["boxes"]):
            box.set_facecolor(PALETTE[i % len(PALETTE)])
            box.set_alpha(0.45)
            box.set_edgecolor(self.style.foreground)
        for key in ("whiskers", "caps", "medians"):
            for line in bp[key]:
                line.set_color(self.style.foreground)
        rng = np.random.default_rng(0)  # fixed jitter: the plot does not dance on redraw
        for i, ys in enumerate(data, start=1):
            xs = i + rng.uniform(-0.12, 0.12, size=len(ys))
            ax.scatter(xs, ys, s=9, color=PALETTE[(i - 1) % len(PALETTE)],
                       edgecolors=self.style.foreground, linewidths=0.3, zorder=3)
        ax.set_xticks(range(1, len(names) + 1))
        ax.set_xticklabels([f"{n}\n(n={len(finite[n])})" for n in names], fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        self.figure.tight_layout(pad=0.6)
        self.canvas.draw_idle()
