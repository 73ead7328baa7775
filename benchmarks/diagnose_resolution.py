"""Where a std-resolution miss comes from: the generated / real ratio of std(E)/mean(E) per |p| bin, split into
showers whose expected centre lies well inside the window and showers near its edge (where energy leaks out).

A generator whose energy spread ignores the position shows ratios above 1 for central showers and below 1 near
the edges, which pool into a "too narrow" resolution; a uniformly too narrow spread shows below 1 in both.

    python benchmarks/diagnose_resolution.py NAME=DATA_DIR=CHECKPOINT [...] [--events 20000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from calogan.ecal.data import load_npz, split_path
from calogan.ecal.models import load_generator
from calogan.ecal.physics import expected_centre
from calogan.ecal.predict import generate

CENTRAL_CM = 6.0  # |c_x|, |c_y| below this: the shower sits well inside the 30 x 30 cm window
P_EDGES = np.exp(
    np.linspace(np.log(2.0), np.log(100.0), 7)
)  # the six log-spaced |p| bins of the physics table


def spread_ratios(gen: np.ndarray, true, central: np.ndarray) -> dict:
    """Generated / real relative spread per |p| bin, for the central showers and for the others."""
    p = true.p_abs
    which = np.clip(np.searchsorted(P_EDGES, p) - 1, 0, len(P_EDGES) - 2)
    e_gen = gen.reshape(len(gen), -1).sum(axis=1) / p
    e_true = true.energy.reshape(len(true), -1).sum(axis=1) / p
    rel = lambda e, m: e[m].std() / e[m].mean()  # noqa: E731
    out = {}
    for label, sel in (("central", central), ("edge", ~central)):
        masks = [(which == k) & sel for k in range(len(P_EDGES) - 1)]
        out[label] = [
            round(float(rel(e_gen, m) / rel(e_true, m)), 3) if m.sum() > 50 else None for m in masks
        ]
        out[f"{label}_events"] = int(sel.sum())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME=DATA_DIR=CHECKPOINT")
    parser.add_argument("--events", type=int, default=20000, help="validation events used")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    out = {"p_edges_gev": [round(float(e), 2) for e in P_EDGES], "central_cm": CENTRAL_CM, "models": {}}
    for item in args.models:
        name, data, checkpoint = item.split("=", 2)
        true = load_npz(split_path(data, "val", "solution"), require_energy=True)
        true = true.subset(slice(0, min(args.events, len(true))))
        generator, _ = load_generator(checkpoint)
        images = generate(generator, true, seed=0)
        centre = expected_centre(true.point, true.momentum)
        central = (np.abs(centre) < CENTRAL_CM).all(axis=1)
        out["models"][name] = spread_ratios(images, true, central)
        print(name, json.dumps(out["models"][name]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
