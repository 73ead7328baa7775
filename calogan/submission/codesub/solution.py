"""calogan code submission: generate LHCb ECAL showers for data_{val,test}.npz with a TorchScript generator.

Usage (what the Codalab `metadata` runs):  python3 solution.py INPUT_DIR OUTPUT_DIR [--seed S] [--batch-size B]
Reads INPUT_DIR/data_val.npz and INPUT_DIR/data_test.npz (whichever exist) and writes
OUTPUT_DIR/data_{val,test}_prediction.npz: EnergyDeposit (N, 30, 30) float32, finite, >= 0, same order.
Self-contained on purpose: needs only numpy and torch, never the calogan package. The generator
(generator.pt, TorchScript, normalisation baked in) and its settings (generator.json) sit next to this file.
Noise per event comes from numpy.random.default_rng([seed, split_id]) in event order, exactly as
`python -m calogan.predict` draws it, so both give the same showers for the same seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SPLITS = {"val": 0, "test": 1}


def fail(message: str) -> None:
    """Print one error line and exit with status 2 (bad input)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def find_input(input_dir: Path, split: str) -> Path | None:
    """INPUT_DIR/data_{split}.npz, or the first such file in a sub-folder (Codalab may nest inputs)."""
    direct = input_dir / f"data_{split}.npz"
    if direct.is_file():
        return direct
    return next(iter(sorted(input_dir.rglob(f"data_{split}.npz"))), None)


def load_conditions(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point (N,2), momentum (N,3), pdg (N,) as float32 from a competition file, without unpickling."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            point = np.asarray(npz["ParticlePoint"], np.float32)[:, :2]
            momentum = np.asarray(npz["ParticleMomentum"], np.float32).reshape(-1, 3)
            pdg = np.asarray(npz["ParticlePDG"], np.float32).reshape(-1)
    except (KeyError, ValueError, OSError) as exc:
        fail(f"{path}: not a valid competition file ({exc})")
    if not (len(point) == len(momentum) == len(pdg)) or len(point) == 0:
        fail(f"{path}: ParticlePoint/ParticleMomentum/ParticlePDG lengths differ or are empty")
    if not (np.isfinite(point).all() and np.isfinite(momentum).all()):
        fail(f"{path}: conditions hold NaN/Inf")
    return point, momentum, pdg


def generate(
    module, config: dict, point, momentum, pdg, seed: int, split_id: int, batch_size: int
) -> np.ndarray:
    """Run the generator over all events in order, with per-event seeded noise."""
    rng = np.random.default_rng([seed, split_id])
    n, noise_dim = len(point), int(config["noise_dim"])
    out = np.empty((n, 30, 30), np.float32)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            noise = rng.standard_normal((stop - start, noise_dim), dtype=np.float32)
            args = [torch.from_numpy(np.ascontiguousarray(a[start:stop])) for a in (point, momentum, pdg)]
            out[start:stop] = module(*args, torch.from_numpy(noise)).clamp_min(0.0).numpy()
    if not np.isfinite(out).all():
        fail("the generator produced NaN/Inf values")
    return out


def save_atomic(path: Path, images: np.ndarray) -> None:
    """np.savez through a temp file + rename, so no partial prediction file is ever left."""
    # calogan's temp naming (.calogan-tmp-<name>.<pid>.<random>): calogan writers of the same file remove leftovers
    fd, tmp = tempfile.mkstemp(prefix=f".calogan-tmp-{path.name}.{os.getpid()}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, EnergyDeposit=images)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """Parse INPUT_DIR OUTPUT_DIR, generate both splits, write the prediction files."""
    config = json.loads((HERE / "generator.json").read_text())
    parser = argparse.ArgumentParser(description="calogan code submission")
    parser.add_argument("input_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--seed", type=int, default=int(config.get("seed", 0)))
    parser.add_argument("--batch-size", type=int, default=int(config.get("batch_size", 1024)))
    args = parser.parse_args(argv)
    inputs = {split: find_input(args.input_dir, split) for split in SPLITS}
    if not any(inputs.values()):
        fail(f"{args.input_dir}: no data_val.npz or data_test.npz found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(HERE / config.get("weights", "generator.pt")), map_location="cpu").eval()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for split, path in inputs.items():
        if path is None:
            print(f"skip {split}: no data_{split}.npz in {args.input_dir}")
            continue
        images = generate(module, config, *load_conditions(path), args.seed, SPLITS[split], args.batch_size)
        out = args.output_dir / f"data_{split}_prediction.npz"
        save_atomic(out, images)
        print(f"wrote {out} ({len(images)} events)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
