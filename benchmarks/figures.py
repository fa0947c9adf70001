"""Figures for the results: held-out segmentations and the RECIST shape clusters.

- ``docs/figures/samples.png``: held-out ISIC test images (never trained on), one per
  row, picked at evenly spaced quantiles of the ellipse's Dice (easy to hard). Columns:
  the image with its RECIST; then the expert mask, the RECIST ellipse, A1 and A1+L as
  contours over the image, each with its Dice against the expert mask.
- ``docs/figures/clusters.png``: the RECIST shape clusters of the A1+L model (the
  k-means stored in its checkpoint) on the training RECIST: per cluster, the RECIST
  overlaid centred on their crossing (in px, so size shows), the cluster centre's
  features in original units, and example training lesions; plus the training RECIST
  in (long axis, aspect) coloured by cluster.

Run from the repository root, after ``accuracy.py --out DIR``::

    python benchmarks/figures.py --runs DIR [--seed 0] [--rows 6]

Prints one JSON object (the files written and the images shown).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import splits  # noqa: E402

FIG_DIR = splits.REPO / "docs" / "figures"
COLOURS = {"expert": "#00e5ff", "ellipse": "#ffd400", "A1": "#ff5a5a", "A1+L": "#7CFC00"}


def _draw_recist(ax, r, lw=1.5) -> None:
    for seg, c in ((r.long_axis, "#ff00ff"), (r.short_axis, "#ffffff")):
        ax.plot(seg[:, 1], seg[:, 0], color=c, lw=lw)


def _contour(ax, mask, colour) -> None:
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.6)


def samples_figure(runs: Path, seed: int, n_rows: int, out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_recist_seg.metrics import dice
    from napari_recist_seg.predict import Predictor
    from napari_recist_seg.recist import recist_from_mask
    from napari_recist_seg.targets import ellipse_mask

    preds = {"A1": Predictor.load(runs / f"a1_s{seed}", device="cpu"),
             "A1+L": Predictor.load(runs / f"a1l_s{seed}", device="cpu")}
    test = splits.isic_split()["test"]
    ev = json.loads((runs / f"a1l_s{seed}" / "test_eval.json").read_text())["test"]
    evaluated = {row["case"] for row in ev}
    cases = []
    for stem in test:
        if stem not in evaluated:
            continue
        _, image, gt = splits.load_isic_case(stem)
        r = recist_from_mask(gt)
        cases.append((dice(ellipse_mask(r, gt.shape), gt), stem))
    cases.sort(reverse=True)
    picks = [cases[int(round(q * (len(cases) - 1)))][1] for q in np.linspace(0.05, 1.0, n_rows)]
    cols = ["image + RECIST", "expert mask", "ellipse", "A1", "A1+L"]
    fig, axes = plt.subplots(n_rows, len(cols), figsize=(2.3 * len(cols), 2.45 * n_rows))
    shown = []
    for i, stem in enumerate(picks):
        _, image, gt = splits.load_isic_case(stem)
        r = recist_from_mask(gt)
        masks = {"expert": gt, "ellipse": ellipse_mask(r, gt.shape)}
        for name, pr in preds.items():
            masks[name] = pr.segment(image, [r])[0].full_mask(gt.shape)
        row = {"case": stem}
        for j, col in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(image)
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                _draw_recist(ax, r)
                ax.set_ylabel(stem.replace("ISIC_", ""), fontsize=8)
                title = col
            elif col == "expert mask":
                _contour(ax, gt, COLOURS["expert"])
                title = col
            else:
                key = col
                _contour(ax, gt, COLOURS["expert"])
                _contour(ax, masks[key], COLOURS[key])
                d = dice(masks[key], gt)
                row[key] = round(d, 3)
                title = f"{col}  Dice {d:.3f}"
            if i == 0 or j > 1:
                ax.set_title(title if i == 0 or j > 1 else "", fontsize=8)
        shown.append(row)
    fig.suptitle(
        f"Held-out ISIC 2017 test images (seed {seed} models); cyan = expert mask, "
        "yellow = RECIST ellipse, red = A1, green = A1+L; magenta / white = RECIST long / short axis",
        fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return {"file": str(out), "rows": shown}


def clusters_figure(runs: Path, seed: int, out: Path, n_overlay: int = 150, n_examples: int = 4) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_recist_seg.model import load_checkpoint
    from napari_recist_seg.recist import recist_from_mask, shape_features

    _, cfg, clusters = load_checkpoint(runs / f"a1l_s{seed}")
    if clusters is None:
        raise ValueError(f"{runs / f'a1l_s{seed}'} has no clusters (not an A1+L model)")
    log = json.loads((runs / f"a1l_s{seed}" / "train_log.json").read_text())
    n_train = log["n_train"]
    stems = splits.isic_split()["train"][:n_train]
    data = []
    for stem in stems:
        _, image, gt = splits.load_isic_case(stem)
        r = recist_from_mask(gt)
        data.append((stem, image, r, int(clusters.predict(shape_features(r))[0])))
    K = clusters.k
    labels = np.array([d[3] for d in data])
    centres = clusters.centers * clusters.scale + clusters.mean
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(2, K + 1, figsize=(3.6 * (K + 1), 8.4), squeeze=False)
    lim = max(d[2].long_length for d in data) / 2 * 1.05
    rng = np.random.default_rng(0)
    for k in range(K):
        members = [d for d in data if d[3] == k]
        ax = axes[0, k]
        sel = rng.choice(len(members), size=min(n_overlay, len(members)), replace=False)
        for idx in sel:
            r = members[idx][2]
            c = r.crossing
            for seg, colr in ((r.long_axis, cmap(k)), (r.short_axis, "0.35")):
                s = seg - c
                ax.plot(s[:, 1], -s[:, 0], color=colr, lw=0.6, alpha=0.35)
        ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal")
        ax.set_title(f"cluster {k}: {len(members)} lesions ({100 * len(members) / len(data):.0f}%)", fontsize=9)
        ax.tick_params(labelsize=7)
        f = dict(zip(clusters.feature_names, centres[k]))
        ang = 0.5 * np.degrees(np.arctan2(f["sin_2angle"], f["cos_2angle"]))
        txt = (f"centre: L {np.exp(f['log_long']):.0f} px, W {np.exp(f['log_short']):.0f} px, "
               f"W/L {f['aspect']:.2f}\n"
               f"crossing off-centre {f['crossing_offset_long']:.2f} / {f['crossing_offset_short']:.2f}\n"
               f"orientation {ang:.0f} deg (|mean| {np.hypot(f['cos_2angle'], f['sin_2angle']):.2f})")
        ax.set_xlabel(txt, fontsize=7)
        # 2x2 montage of example lesions (images halved) with their RECIST
        ex = rng.choice(len(members), size=min(4, len(members)), replace=False)
        tile = 128
        mont = np.full((2 * tile, 2 * tile, 3), 255, np.uint8)
        axm = axes[1, k]
        for e, idx in enumerate(ex):
            _, image, r, _ = members[idx]
            r0, c0 = (e // 2) * tile, (e % 2) * tile
            mont[r0:r0 + tile, c0:c0 + tile] = image[::2, ::2][:tile, :tile]
            rr = r.transformed((0.0, 0.0), 0.5)
            for seg, colr in ((rr.long_axis, "#ff00ff"), (rr.short_axis, "#ffffff")):
                axm.plot(seg[:, 1] + c0, seg[:, 0] + r0, color=colr, lw=1.0)
        axm.imshow(mont)
        axm.set_xlim(-0.5, 2 * tile - 0.5), axm.set_ylim(2 * tile - 0.5, -0.5)
        axm.set_xticks([]), axm.set_yticks([])
        axm.set_title(f"cluster {k}: random training lesions", fontsize=8, color=cmap(k))
    ax = axes[0, K]
    L = np.array([d[2].long_length for d in data])
    A = np.array([d[2].short_length / d[2].long_length for d in data])
    for k in range(K):
        m = labels == k
        ax.scatter(L[m], A[m], s=4, color=cmap(k), alpha=0.5, label=f"cluster {k}")
    ax.set_xlabel("long axis L (px)", fontsize=8), ax.set_ylabel("aspect W/L", fontsize=8)
    ax.tick_params(labelsize=7), ax.legend(fontsize=7, markerscale=2)
    ax.set_title("all training RECIST", fontsize=9)
    axt = axes[1, K]
    axt.axis("off")
    axt.text(0.0, 0.98,
             f"K = {K}: chosen by silhouette\nover K = 2..8, k-means on the\nstandardised features\n  "
             + "\n  ".join(clusters.feature_names)
             + f"\n\n{len(data)} training RECIST of\nISIC 2017 (256 px), derived\nfrom the expert masks\n\n"
             "top: RECIST of each cluster\ncentred on the crossing, px\n(long axis coloured,\nshort axis grey)",
             va="top", fontsize=8)
    fig.suptitle(f"RECIST shape clusters of the A1+L model ({runs.name}/a1l_s{seed})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    sizes = np.bincount(labels, minlength=K).tolist()
    return {"file": str(out), "k": K, "cluster_sizes": sizes,
            "centres": {n: [float(v) for v in centres[:, i]] for i, n in enumerate(clusters.feature_names)}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, required=True, help="the --out folder of accuracy.py")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", type=int, default=6)
    p.add_argument("--out-dir", type=Path, default=FIG_DIR)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    res = {
        "samples": samples_figure(args.runs, args.seed, args.rows, args.out_dir / "samples.png"),
        "clusters": clusters_figure(args.runs, args.seed, args.out_dir / "clusters.png"),
    }
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
