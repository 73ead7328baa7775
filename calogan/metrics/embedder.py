"""Image embedder for AUC_img (docs/scoring.md): a small BatchNorm conv net regressing the conditions from an image.

The net reads log1p-scaled images, regresses the normalised point (x, y) and momentum (px, py, pz) and
classifies the particle type; its 64-d last hidden layer (a plain linear output, no tanh) is the embedding.
Weights are stored as safetensors with metadata: the sha256 of the training file and the normalisation, so a
scorer can refuse an embedder trained on other data.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from calogan.core import options
from calogan.core.errors import InputError
from calogan.core.fit import fit, seeded
from calogan.core.runtime import atomic_write, select_device
from calogan.ecal.data import IMAGE_SIZE, ConditionNormalizer, load_npz, require_file, sha256_file, split_path

FORMAT = "calogan-embedder-v2"
EMBED_DIM = 64
DEFAULT_NAME = "embedder.safetensors"


class Embedder(nn.Module):
    """Conv net: (N,30,30) energies → 64-d embedding → 5 regressed conditions + photon logit."""

    def __init__(self, width: int = 8, embed_dim: int = EMBED_DIM):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
            )

        self.features = nn.Sequential(block(1, width), block(width, 2 * width), block(2 * width, 4 * width))
        self.flatten = nn.Flatten()
        self.embedding = nn.Linear(4 * width * 9 + 1, embed_dim)
        self.head = nn.Sequential(nn.BatchNorm1d(embed_dim), nn.ReLU(), nn.Linear(embed_dim, 6))
        self.width, self.embed_dim = width, embed_dim
        self.normalizer: ConditionNormalizer | None = None
        self.meta: dict = {}

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """log1p of the cell energies with a channel axis: tames the many-decade dynamic range."""
        return torch.log1p(images.clamp_min(0)).unsqueeze(1)

    def forward_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """64-d embedding from the conv features plus the log image sum (makes the energy scale explicit)."""
        log_sum = torch.log1p(images.clamp_min(0).sum(dim=(1, 2))).unsqueeze(1) / 10.0
        return self.embedding(
            torch.cat([self.flatten(self.features(self.preprocess(images))), log_sum], dim=1)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B,30,30) → (B,6): normalised x, y, px, py, pz and the photon logit."""
        return self.head(self.forward_embedding(images))

    @torch.inference_mode()
    def embed(
        self, images: np.ndarray, batch_size: int = 512, device: torch.device | str | None = None
    ) -> np.ndarray:
        """(N,30,30) images → (N,64) float32 embeddings, in eval mode, batched.

        Runs a channels-last copy of the net (the module itself is untouched): on CPU that copy and
        cache-sized batches make embedding about 6× faster than contiguous weights with big batches
        (benchmarks/README.md, "Scoring one split").
        """
        dev = torch.device(device) if device is not None else next(self.parameters()).device
        self.to(dev).eval()
        net = copy.deepcopy(self).to(memory_format=torch.channels_last)
        images = np.asarray(images, dtype=np.float32).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
        out = np.empty((len(images), self.embed_dim), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start : start + batch_size]).to(dev)
            out[start : start + batch_size] = net.forward_embedding(batch).float().cpu().numpy()
        return out


def _targets(data, normalizer: ConditionNormalizer) -> np.ndarray:
    return normalizer.transform(data.conditions())


def train_embedder(
    data_dir: str | Path,
    out: str | Path | None = None,
    epochs: int = 4,
    batch_size: int = 256,
    lr: float = 2e-3,
    max_events: int | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Embedder:
    """Train on DIR/data_train.npz and save weights + metadata to ``out`` (default DIR/embedder.safetensors)."""
    data_dir = Path(data_dir)
    train_path = require_file(split_path(data_dir, "train"))
    data = load_npz(train_path, require_energy=True)
    if max_events is not None:
        data = data.subset(slice(0, max_events))
    dev = select_device("auto") if device is None else torch.device(device)
    normalizer = ConditionNormalizer.fit(data.conditions())
    images = torch.from_numpy(data.energy)
    targets = torch.from_numpy(_targets(data, normalizer))
    model = seeded(Embedder, seed).to(dev)
    bce = nn.BCEWithLogitsLoss()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        x, y = images[idx].to(dev), targets[idx].to(dev)
        pred = model(x)
        return nn.functional.mse_loss(pred[:, :5], y[:, :5]) + bce(pred[:, 5], y[:, 5])

    def one_cycle(opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, total))

    result = fit(model, batch_loss, len(images), batch_size=batch_size, lr=lr, seed=seed, epochs=epochs,
                 schedule=one_cycle, drop_last=True, progress=progress, desc="embedder")  # fmt: skip
    loss_val = result.last_loss
    model.normalizer = normalizer
    model.meta = {
        "format": FORMAT,
        "data_sha256": sha256_file(train_path),
        "data_file": train_path.name,
        "n_train": len(images),
        "epochs": epochs,
        "final_loss": loss_val,
        "width": model.width,
        "embed_dim": model.embed_dim,
        "normalizer": normalizer.to_dict(),
        "seed": seed,
    }
    save_embedder(model, out if out is not None else data_dir / DEFAULT_NAME)
    return model.cpu()


def save_embedder(model: Embedder, path: str | Path) -> Path:
    """Write weights (safetensors) with JSON metadata atomically; no pickled objects."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save(tensors, metadata={"calogan": json.dumps(model.meta)})
    return atomic_write(path, lambda h: h.write(blob))


def load_embedder(
    path: str | Path, expected_sha256: str | None = None, allow_mismatch: bool = False, device=None
) -> Embedder:
    """Load a safetensors embedder; refuse (InputError) a data-hash mismatch unless allow_mismatch."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: embedder file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("calogan", "{}"))
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # noqa: BLE001 - any failure means a bad file
        raise InputError(
            f"{path}: not a readable embedder file ({type(exc).__name__}: {str(exc)[:150]})"
        ) from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{path}: not a calogan embedder (format {meta.get('format')!r}, expected {FORMAT})")
    if expected_sha256 is not None and meta.get("data_sha256") != expected_sha256 and not allow_mismatch:
        raise InputError(
            f"{path}: embedder was trained on data with sha256 {str(meta.get('data_sha256'))[:12]}…, "
            f"not on this data_train.npz ({expected_sha256[:12]}…); retrain it or pass --allow-embedder-mismatch"
        )
    model = Embedder(width=int(meta.get("width", 8)), embed_dim=int(meta.get("embed_dim", EMBED_DIM)))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise InputError(f"{path}: embedder weights do not fit the architecture ({str(exc)[:150]})") from None
    model.normalizer = ConditionNormalizer.from_dict(meta["normalizer"])
    model.meta = meta
    return model.to(device or "cpu").eval()


def load_data_embedder(data_dir: str | Path, device: torch.device | str | None = None) -> Embedder | None:
    """DATA/embedder.safetensors checked against DATA's training file, or None when absent (AUC_phys alone)."""
    path = Path(data_dir) / DEFAULT_NAME
    if not path.exists():
        return None
    return load_embedder(path, sha256_file(split_path(data_dir, "train")), device=device)


def load_or_train_embedder(
    data_dir: str | Path,
    path: str | Path | None = None,
    allow_mismatch: bool = False,
    device=None,
    progress: bool = True,
    **train_kwargs,
) -> Embedder:
    """Load DIR/embedder.safetensors (or ``path``), checking its data hash; train and cache it if absent."""
    data_dir = Path(data_dir)
    path = Path(path) if path is not None else data_dir / DEFAULT_NAME
    train_path = split_path(data_dir, "train")
    expected = sha256_file(train_path) if train_path.is_file() else None
    if path.is_file():
        return load_embedder(path, expected, allow_mismatch, device)
    if expected is None:
        raise InputError(f"{path}: no embedder, and no {train_path} to train one on (pass --embedder FILE)")
    print(f"note: no embedder at {path}; training one on {train_path} and caching it there", file=sys.stderr)
    return train_embedder(data_dir, out=path, device=device, progress=progress, **train_kwargs).to(
        device or "cpu"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = options.ArgumentParser(prog="python -m calogan.embedder", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data", help="folder with data_train.npz (default: data)")
    parser.add_argument("--out", default=None, help="output file (default: DATA/embedder.safetensors)")
    parser.add_argument("--epochs", type=options.count(1), default=4)
    parser.add_argument("--batch-size", type=options.count(2), default=256)
    parser.add_argument(
        "--max-events", type=options.count(2), default=None, help="train on the first N events only"
    )
    parser.add_argument("--seed", type=options.seed, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.data) / DEFAULT_NAME
    inputs = [Path(args.data) / f"data_{split}.npz" for split in ("train", "val", "test")]
    options.check_output_file(out, args.overwrite, "--out", inputs=inputs)
    device = select_device(args.device)
    model = train_embedder(
        args.data,
        out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_events=args.max_events,
        seed=args.seed,
        device=device,
    )
    print(
        f"wrote {out} (final loss {model.meta['final_loss']:.4f}, data sha256 {model.meta['data_sha256'][:12]}…)"
    )
    return 0
