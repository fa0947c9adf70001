"""Fit and check the click chooser of ``napari_recist_seg.click_rank`` on ``click_chains.py`` dumps.

Every click of a dump (validation ids only) is a group: the steps (candidate + RECIST rounds)
of the ``RANK_TOP_K`` best candidates' chains, up to ``RANK_ROUNDS`` rounds, each a
``click_rank.step_vector`` (the same features ``segment_click_ranked`` computes) and its Dice.
A linear score is fitted with a softmax over each group towards ``softmax(Dice / tau)``
(L2 ``--lam`` on standardised features; torch LBFGS, offline only). Held out:
leave-one-dump-out and the two halves of the ids (ids 0:120 vs 120:200, both renders
together: no image on both sides). Each cell: the learned chooser, the shipped rule
(``click_chain_rules.round1_ring``), the shipped weights (``--shipped``) and the pool's
oracle. Finally the weights fitted on all dumps, in raw feature units (paste into
``RANK_WEIGHTS``).

Usage::

    python benchmarks/click_rank_fit.py c0=/tmp/cc/val0_clinic.json n0=/tmp/cc/val0_none.json \\
        c120=/tmp/cc/val_clinic.json n120=/tmp/cc/val_none.json --halves c0,n0:c120,n120
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

from click_chain_rules import LEAK, round1_ring  # noqa: E402

from napari_recist_seg import click_rank as CR  # noqa: E402

SHAPE = {"clinic": (576, 768), "none": (256, 256), "hires": (960, 1280)}


def groups(dump: dict, shape: tuple[int, int], drop: tuple[str, ...] = ()) -> list[dict]:
    """Per click: ``X`` (steps x features), ``dice``, ``ship`` (the shipped rule's Dice);
    the features named in ``drop`` are zero (a constant column: the fit gives it weight 0)."""
    cols = [CR.RANK_FEATURES.index(n) for n in drop]
    out = []
    for case in dump["cases"]:
        for kind in ("exact", "jittered"):
            chains = case[kind]
            idx = [i for i, ch in enumerate(chains) if ch[0]["holds"]]
            idx.sort(key=lambda i: (chains[i][0]["leak"] <= LEAK, chains[i][0]["contrast"], -i),
                     reverse=True)
            rows, dice = [], []
            for rank, i in enumerate(idx[: CR.RANK_TOP_K]):
                ch = chains[i]
                for k, s in enumerate(ch[: CR.RANK_ROUNDS + 1]):
                    if not s["holds"]:
                        break
                    prev = ch[k - 1]["shift"] if k >= 2 else None
                    rows.append(CR.step_vector(s, round_index=k, rank=rank, diameter=ch[0]["d"],
                                               prev_shift=prev, plane_shape=shape))
                    dice.append(s["dice"])
            x = np.array(rows).reshape(-1, len(CR.RANK_FEATURES))
            x[:, cols] = 0.0
            out.append({"X": x, "dice": np.array(dice),
                        "ship": round1_ring(chains), "kind": kind})
    return out


#: Fitted twice: as they are and less their maximum over the click's steps (the same
#: function class, a softmax ignores a constant per group, but its own L2 penalty); the
#: two weights are summed into one.
RELATIVE = ("contrast", "ring", "conf")


def _with_relative(x: np.ndarray) -> np.ndarray:
    cols = [CR.RANK_FEATURES.index(n) for n in RELATIVE]
    return np.concatenate([x, x[:, cols] - x[:, cols].max(0, keepdims=True)], 1)


def fit(gs: list[dict], lam: float, tau: float) -> np.ndarray:
    """Raw-unit weights of the softmax chooser fitted on groups ``gs``."""
    import torch

    gs = [dict(g, X=_with_relative(g["X"])) for g in gs if len(g["dice"])]
    xall = np.concatenate([g["X"] for g in gs])
    mu, sd = xall.mean(0), xall.std(0)
    sd = np.where(sd > 1e-9, sd, np.inf)  # a constant feature gets weight 0
    xs = [torch.tensor((g["X"] - mu) / sd) for g in gs]
    ts = [torch.softmax(torch.tensor(g["dice"] / tau), 0) for g in gs]
    w = torch.zeros(xall.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = sum(-(t * torch.log_softmax(x @ w, 0)).sum() for x, t in zip(xs, ts)) / len(xs)
        loss = loss + lam * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    raw = w.detach().numpy() / sd
    n = len(CR.RANK_FEATURES)
    for j, name in enumerate(RELATIVE):
        raw[CR.RANK_FEATURES.index(name)] += raw[n + j]
    return raw[:n]


def cell(gs: list[dict], w: np.ndarray | None) -> dict:
    """Mean Dice of the chooser ``w`` (and the shipped rule, the pool's oracle)."""
    picked = [g["dice"][int(np.argmax(g["X"] @ w))] if len(g["dice"]) else g["ship"] for g in gs]
    shipped = CR.RANK_WEIGHTS
    coef = np.array([shipped[n] for n in CR.RANK_FEATURES])
    cur = [g["dice"][int(np.argmax(g["X"] @ coef))] if len(g["dice"]) else g["ship"] for g in gs]
    return {"n": len(gs), "learned": float(np.mean(picked)),
            "ship_rule": float(np.mean([g["ship"] for g in gs])),
            "shipped_weights": float(np.mean(cur)),
            "oracle": float(np.mean([g["dice"].max() if len(g["dice"]) else 0.0 for g in gs]))}


def held_out(G: dict, train: list[str], test: list[str], lam: float, tau: float, tag: str) -> list:
    w = fit([g for k in train for g in G[k]], lam, tau)
    rows = []
    for k in test:
        for kind in ("exact", "jittered"):
            c = cell([g for g in G[k] if g["kind"] == kind], w)
            rows.append({"scheme": tag, "dump": k, "click": kind, **c})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dumps", nargs="+", help="NAME=click_chains.json")
    parser.add_argument("--halves", default=None, help="A,B:C,D: dump names of the two id halves")
    parser.add_argument("--lam", type=float, default=0.3)
    parser.add_argument("--tau", type=float, default=0.02)
    parser.add_argument("--drop", default="", help="features left out (comma-separated)")
    args = parser.parse_args(argv)
    G = {}
    for spec in args.dumps:
        name, path = spec.split("=", 1)
        d = json.loads(Path(path).read_text())
        G[name] = groups(d, SHAPE[d["render"]], tuple(n for n in args.drop.split(",") if n))
    rows = []
    for hold in G:
        rows += held_out(G, [k for k in G if k != hold], [hold], args.lam, args.tau, "lodo")
    if args.halves:
        a, b = (h.split(",") for h in args.halves.split(":"))
        rows += held_out(G, a, b, args.lam, args.tau, "half") + held_out(G, b, a, args.lam, args.tau, "half")
    for r in rows:
        print("{scheme:5s} {dump:5s} {click:8s} n={n:3d} learned {learned:.4f} shipped-rule {ship_rule:.4f} "
              "shipped-weights {shipped_weights:.4f} oracle {oracle:.4f} d={d:+.4f}".format(
                  d=r["learned"] - r["ship_rule"], **r))
    summary = {}
    for scheme in sorted({r["scheme"] for r in rows}):
        rr = [r for r in rows if r["scheme"] == scheme]
        d = [r["learned"] - r["ship_rule"] for r in rr]
        summary[scheme] = {"learned": round(float(np.mean([r["learned"] for r in rr])), 4),
                           "ship_rule": round(float(np.mean([r["ship_rule"] for r in rr])), 4),
                           "mean_gain": round(float(np.mean(d)), 4), "worst_gain": round(float(min(d)), 4)}
    w = fit([g for k in G for g in G[k]], args.lam, args.tau)
    weights = {n: round(float(v), 4) for n, v in zip(CR.RANK_FEATURES, w)}
    out = {"summary": summary, "weights": weights, "cells": rows}
    print(json.dumps({"summary": summary, "weights": weights}, indent=1))
    return out


if __name__ == "__main__":
    main()
