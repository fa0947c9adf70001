"""Click selection rules scored offline on ``click_chains.py`` output (validation ids).

Each rule picks one chain per click from the recorded figures and returns the Dice of
the round it would stop at; the figures are the ones ``segment_click`` computes, so a
rule here gives the Dice ``segment_click`` would give with that rule (checked equal per
case for ``chains``, as implemented in ``click.py`` at commit 1ee348f of branch
issue-10click, on 12 val ids x 2 clicks at 256 px). Rules:

- ``round1_ring``: the shipped issue-10fr rule (equal per case to ``segment_click``
  on 10 val ids x 2 clicks at 256 px; 4 best candidates by
  contrast, one round judged by ring-only contrast, then rounds while the shift
  shrinks, most self-consistent kept);
- ``chains``: measured, not shipped (it lost on the test proxy's centre clicks;
  ``docs/RESULTS.md``): 6 chains, two batched rounds, two-sided contrast, masks over
  ``--area-limit`` of the image only when all are, run on to ``--rounds`` while the
  shift is >= 0.02;
- ``oracle_r4`` / ``oracle_any``: the best chain after 4 rounds / the best step seen.

Usage::

    python benchmarks/click_chain_rules.py F_clinic.json F_none.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

LEAK = 0.05  # click._CLICK_BORDER_LIMIT
TOL = 0.02  # click.CLICK_RECIST_TOLERANCE


def _ranked(chains: list, top: int) -> list[int]:
    idx = [i for i, ch in enumerate(chains) if ch[0]["holds"]]
    key = lambda i: (chains[i][0]["leak"] <= LEAK, chains[i][0]["contrast"], -i)  # noqa: E731
    return sorted(idx, key=key, reverse=True)[:top]


def round1_ring(chains: list, rounds: int = 3) -> float:
    """The issue-10fr rule (ring-only contrast after one round of the 4 best)."""
    ranked = _ranked(chains, 4)
    if not ranked:
        return 0.0
    held = [i for i in ranked if len(chains[i]) > 1 and chains[i][1]["holds"]]
    if not held:
        return chains[ranked[0]][0]["dice"]
    ch = chains[max(held, key=lambda j: chains[j][1]["ring"])]
    best, best_shift = 1, ch[1]["shift"]
    shift = best_shift
    for k in range(2, rounds + 1):
        if shift < TOL or k >= len(ch) or not ch[k]["holds"]:
            break
        previous, shift = shift, ch[k]["shift"]
        if shift < best_shift:
            best, best_shift = k, shift
        if shift >= previous:
            break
    return ch[best]["dice"]


def chains_rule(chains: list, pixels: int, *, top: int = 6, select: int = 2, rounds: int = 4,
                area_limit: float = 0.6) -> float:
    """The shipped rule (see module notes)."""
    idx = [i for i in _ranked(chains, top) if chains[i][0]["leak"] <= LEAK]
    idx = [i for i in idx if len(chains[i]) > select and chains[i][select]["holds"]]
    if not idx:
        return round1_ring(chains)
    small = [i for i in idx if chains[i][select]["area"] <= area_limit * pixels] or idx
    ch = chains[max(small, key=lambda i: chains[i][select]["contrast"])]
    k = select
    while k < rounds and ch[k]["shift"] >= TOL and len(ch) > k + 1 and ch[k + 1]["holds"]:
        k += 1
    return ch[k]["dice"]


def oracle(chains: list, k: int | None = None) -> float:
    steps = [s for ch in chains for j, s in enumerate(ch) if s["holds"] and (k is None or j == k)]
    return max((s["dice"] for s in steps), default=0.0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--area-limit", type=float, default=0.6)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--render", default="clinic", help="for a partial file (no 'render')")
    args = parser.parse_args(argv)
    out = {}
    for f in args.files:
        d = json.loads(Path(f).read_text())
        render = d.get("render", args.render)
        pixels = {"clinic": 576 * 768, "none": 256 * 256, "hires": 960 * 1280}[render]
        for kind in ("exact", "jittered"):
            cs = [c[kind] for c in d["cases"]]
            out[f"{render} {d.get('ids', f)} {kind}"] = {
                "n": len(cs),
                "round1_ring": round(float(np.mean([round1_ring(c) for c in cs])), 4),
                "chains": round(float(np.mean([chains_rule(c, pixels, area_limit=args.area_limit,
                                                           rounds=args.rounds) for c in cs])), 4),
                "oracle_r4": round(float(np.mean([oracle(c, 4) for c in cs])), 4),
                "oracle_any": round(float(np.mean([oracle(c) for c in cs])), 4),
            }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
