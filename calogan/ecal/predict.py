"""Generate EnergyDeposit predictions for data_val.npz / data_test.npz with a trained generator.

``python -m calogan.predict --checkpoint CKPT [--data DIR] [--out DIR] [--seed S] [--overwrite]``
writes OUT/data_val_prediction.npz and OUT/data_test_prediction.npz (docs/submission.md): float32 (N, 30, 30),
finite, non-negative, same N and order as the input files.

Noise is drawn per event from a seeded NumPy generator in event order, so the same seed gives the same
noise whatever the batch size; batches are streamed to a disk-backed array, so memory stays bounded.
The network runs through a backend (``--backend``): ``torchscript`` (default: the generator traced and
frozen), ``eager``, or ``onnx`` (ONNX Runtime, the optional extra). All three agree to ~1e-6 of the image
maximum; at the default batch of 128 they run at similar speed on a 2-core CPU (benchmarks/README.md).
"""

from __future__ import annotations

import copy
import os
import shutil
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from calogan.core import options
from calogan.core.errors import InputError
from calogan.core.locks import lock_directory
from calogan.core.runtime import (
    atomic_write_json,
    keep_freed_memory,
    progress_disabled,
    publish,
    remove_stale_temps,
    scratch_dir,
    select_device,
    temp_dir_for,
)
from calogan.ecal.data import (
    IMAGE_SIZE,
    KEY_ENERGY,
    PREDICT_SPLITS,
    PREDICTION_MANIFEST,
    CaloData,
    load_npz,
    prediction_manifest,
    require_file,
    sha256_file,
    split_path,
)
from calogan.ecal.export import ParallelOnnxSession, require_onnx, trace_to_onnx
from calogan.ecal.models import load_generator

BACKENDS = ("torchscript", "eager", "onnx")
DEFAULT_BACKEND = "torchscript"
#: Events per network call: small enough that the 16-channel 30x30 activations stay in cache on a CPU.
DEFAULT_BATCH = 128
#: Default batch of the eager path (generate / iter_generate): eager torch is faster at large batches.
EAGER_BATCH = 1024
#: Split index mixed into the seed, so val and test never share noise.
SPLIT_SEED_ID = {"val": 0, "test": 1}


def noise_rng(seed: int | Sequence[int]) -> np.random.Generator:
    """The per-event noise stream: a NumPy PCG64 generator seeded with ``seed`` (int or int sequence)."""
    return np.random.default_rng(list(seed) if isinstance(seed, Sequence) else int(seed))


def inference_generator(generator, backend: str = DEFAULT_BACKEND, device=None):
    """A callable (noise, conditions) -> images running ``generator`` through ``backend`` on ``device``.

    ``torchscript`` traces and freezes the module (weights become constants, elementwise chains fuse);
    ``onnx`` exports it to a temporary ONNX file and runs it in ONNX Runtime on the CPU.
    """
    if isinstance(generator, _Compiled):  # already compiled (e.g. once for both splits)
        return generator
    check_backend(backend)
    device = select_device(device) if not isinstance(device, torch.device) else device
    generator = generator.to(device).eval()
    if backend == "eager":
        return generator
    return _Compiled(generator, backend, device)


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else a one-line InputError."""
    if backend not in BACKENDS:
        raise InputError(f"--backend: unknown backend '{backend}' (use {', '.join(BACKENDS)})")
    return backend


class _Compiled:
    """A generator compiled for inference, called like the module: (noise, conditions) -> images."""

    def __init__(self, generator, backend: str, device):
        self.noise_dim = int(generator.noise_dim)
        example = (
            torch.zeros(8, self.noise_dim, device=device),
            torch.tensor([[0.0, 0.0, 0.5, -0.5, 20.0, 0.0]] * 8, device=device),
        )
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if backend == "torchscript":
                self.module = torch.jit.freeze(torch.jit.trace(generator, example, check_trace=False))
                self.session = None
                return
            require_onnx()
            with scratch_dir("onnx") as tmp:
                path = Path(tmp) / "generator.onnx"
                # trace a copy, so that the caller's module stays on its device
                trace_to_onnx(
                    copy.deepcopy(generator).cpu().float(), example, ("noise", "conditions"), "images", path
                )
                self.session = ParallelOnnxSession(path)

    def __call__(self, noise, conditions):
        if self.session is None:
            return self.module(noise, conditions)
        feeds = {"noise": noise.cpu().numpy(), "conditions": conditions.cpu().numpy()}
        return torch.from_numpy(self.session.run(["images"], feeds)[0])


def iter_generate(
    generator,
    data: CaloData,
    batch_size: int = EAGER_BATCH,
    seed: int | Sequence[int] = 0,
    device=None,
    backend: str = "eager",
) -> Iterator[np.ndarray]:
    """Yield (b, 30, 30) float32 image batches for ``data`` in order; noise drawn per event in order."""
    if batch_size < 1:
        raise InputError(f"--batch-size: must be >= 1, got {batch_size}")
    keep_freed_memory()  # batches reuse freed activations instead of page-faulting fresh ones
    device = select_device(device) if not isinstance(device, torch.device) else device
    noise_dim = int(generator.noise_dim)
    generator = inference_generator(generator, backend, device)
    rng = noise_rng(seed)
    conditions = data.conditions()
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            cond = conditions[start : start + batch_size]
            noise = rng.standard_normal((cond.shape[0], noise_dim), dtype=np.float32)
            images = generator(torch.from_numpy(noise).to(device), torch.from_numpy(cond).to(device))
            images = images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE).float().clamp_min(0.0).cpu().numpy()
            if not np.isfinite(images).all():
                raise InputError(
                    f"generator produced {int((~np.isfinite(images)).sum())} NaN/Inf values "
                    f"(events {start}..{start + cond.shape[0] - 1}); the checkpoint is probably broken"
                )
            yield images


def generate(
    generator,
    data: CaloData,
    batch_size: int = EAGER_BATCH,
    seed: int | Sequence[int] = 0,
    device=None,
    progress: bool = False,
    backend: str = "eager",
) -> np.ndarray:
    """Generate one image per event of ``data`` (same order): (N, 30, 30) float32, finite, >= 0."""
    out = np.empty((len(data), IMAGE_SIZE, IMAGE_SIZE), np.float32)
    batches = iter_generate(generator, data, batch_size, seed, device, backend)
    _fill(out, batches, len(data), progress, "generate")
    return out


def _fill(out: np.ndarray, batches: Iterator[np.ndarray], n: int, progress: bool, desc: str) -> None:
    """Copy streamed batches into ``out`` (an array or a memmap) with a tqdm bar."""
    pos = 0
    with tqdm(total=n, desc=desc, unit="ev", disable=progress_disabled(progress)) as bar:
        for batch in batches:
            out[pos : pos + len(batch)] = batch
            pos += len(batch)
            bar.update(len(batch))


def write_prediction_streamed(
    path: str | os.PathLike, batches: Iterator[np.ndarray], n: int, progress: bool = True
) -> Path:
    """Write an npz with one (n, 30, 30) float32 EnergyDeposit from streamed batches, atomically.

    The array is filled through a disk-backed .npy memmap, then stored (uncompressed, like np.savez)
    into the npz; only one batch lives in memory. A failure leaves no file behind; the staging folder beside
    ``path`` (``.calogan-tmp-<name>.<pid>.<random>``) is removed on exit, or by the next writer of ``path``
    when this process was killed.
    """
    path = Path(path)
    with temp_dir_for(path) as tmp:
        npy = Path(tmp) / f"{KEY_ENERGY}.npy"
        out = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(n, IMAGE_SIZE, IMAGE_SIZE))
        _fill(out, batches, n, progress, path.name)
        out.flush()
        del out
        staged = Path(tmp) / path.name
        with zipfile.ZipFile(staged, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            add_file_to_zip(zf, npy, f"{KEY_ENERGY}.npy")
        os.replace(staged, path)
    return path


#: Fixed member timestamp, so the same content always gives byte-identical npz/zip files.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def add_file_to_zip(
    zf: zipfile.ZipFile,
    source: str | os.PathLike,
    arcname: str,
    level: int | None = None,
    chunk: int = 1 << 22,
) -> None:
    """Stream a file into an open zip under ``arcname`` with a fixed timestamp (reproducible archives).

    ``level`` is the deflate level of this member (None: zlib's default 6; ignored for stored members).
    """
    info = zipfile.ZipInfo(arcname, date_time=ZIP_EPOCH)
    info.compress_type = zf.compression
    info.external_attr = 0o644 << 16
    # ZipFile.open(info, "w") reads the level from here (an alias of ZipInfo.compress_level from Python 3.13)
    info._compresslevel = level
    big = os.path.getsize(source) > (1 << 31) - (1 << 24)  # zip64 only where needed (max compatibility)
    with open(source, "rb") as src, zf.open(info, "w", force_zip64=big) as dst:
        shutil.copyfileobj(src, dst, chunk)


def prediction_paths(out_dir: str | os.PathLike) -> list[Path]:
    """OUT/data_val_prediction.npz and OUT/data_test_prediction.npz."""
    return [split_path(out_dir, split, "prediction") for split in PREDICT_SPLITS]


def prediction_names(out_dir: str | os.PathLike) -> list[str]:
    """What predict writes into its folder: the two prediction files and their manifest."""
    return [p.name for p in prediction_paths(out_dir)] + [PREDICTION_MANIFEST]


def writable_prediction_paths(out_dir: str | os.PathLike, overwrite: bool) -> list[Path]:
    """:func:`prediction_paths`, refused (InputError) when one exists and ``overwrite`` is False."""
    outputs = prediction_paths(out_dir)
    options.check_output_dir(out_dir, overwrite, "--out", contents=prediction_names(out_dir))
    for path in outputs:
        if path.is_dir():
            raise InputError(f"--out {path}: is a folder, expected a file path")
    return outputs


def predict_with_generator(
    generator,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    overwrite: bool = False,
    batch_size: int = DEFAULT_BATCH,
    device=None,
    progress: bool = True,
    backend: str = DEFAULT_BACKEND,
    source: dict | None = None,
) -> list[Path]:
    """Write both prediction files and their manifest for an in-memory generator; inputs checked first.

    The pair is written as one output: both files are generated into a staging folder inside ``out_dir``,
    then OUT/prediction_manifest.json (both files' sha256, the seed and ``source``, e.g. the checkpoint) is
    written, then the two files are renamed into place. A kill at any point leaves the old pair, or files that
    disagree with the manifest, which ``package`` and ``evaluate`` refuse (never a silently mixed pair).
    """
    outputs = writable_prediction_paths(out_dir, overwrite)
    for out in outputs:
        remove_stale_temps(out)  # what a killed run left while writing these files
    datasets = {}
    for split in PREDICT_SPLITS:
        datasets[split] = load_npz(require_file(split_path(data_dir, split)), require_energy=False)
    runner = inference_generator(generator, backend, device)  # compiled once for both splits
    with (
        lock_directory(out_dir, "prediction folder"),
        temp_dir_for(Path(out_dir) / PREDICTION_MANIFEST) as tmp,
    ):
        staged = {}
        for split, out in zip(PREDICT_SPLITS, outputs):
            data = datasets[split]
            batches = iter_generate(runner, data, batch_size, (seed, SPLIT_SEED_ID[split]), device, backend)
            staged[out.name] = write_prediction_streamed(
                tmp / out.name, batches, len(data), progress=progress
            )
        info = {"seed": int(seed), "backend": backend, **(source or {})}
        atomic_write_json(Path(out_dir) / PREDICTION_MANIFEST, prediction_manifest(staged, info))
        publish(tmp, out_dir, list(staged))
    return outputs


def predict_dir(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike = "data",
    out_dir: str | os.PathLike = "predictions",
    seed: int = 0,
    overwrite: bool = False,
    batch_size: int = DEFAULT_BATCH,
    device=None,
    progress: bool = True,
    backend: str = DEFAULT_BACKEND,
) -> list[Path]:
    """Load the EMA generator of ``checkpoint`` and write OUT/data_{val,test}_prediction.npz."""
    writable_prediction_paths(out_dir, overwrite)  # fail fast, before loading anything
    inputs = [checkpoint, *(split_path(data_dir, split) for split in PREDICT_SPLITS)]
    options.check_output_dir(out_dir, True, "--out", contents=prediction_names(out_dir), inputs=inputs)
    require_file(Path(checkpoint), hint="pass the checkpoint written by `python -m calogan.train`")
    check_backend(backend)  # fail fast, before loading anything
    dev = select_device(device)
    generator, meta = load_generator(checkpoint, device=dev, ema=True)
    source = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint)}
    # how its training ended ({"reason": "budget", "step": N, "steps": M} when the time budget cut it short)
    source["training_stop"] = (meta.get("metrics") or {}).get("stop")
    return predict_with_generator(
        generator, data_dir, out_dir, seed, overwrite, batch_size, dev, progress, backend, source
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: parse options and call :func:`predict_dir`."""
    parser = options.ArgumentParser(prog="python -m calogan.predict", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint written by `python -m calogan.train` (EMA weights used)",
    )
    parser.add_argument(
        "--data", default="data", help="folder with data_val.npz and data_test.npz (default: data)"
    )
    parser.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument(
        "--seed", type=options.seed, default=0, help="noise seed: same seed -> identical files (default 0)"
    )
    parser.add_argument(
        "--batch-size",
        type=options.count(1),
        default=DEFAULT_BATCH,
        help=f"events per network call (default {DEFAULT_BATCH})",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=DEFAULT_BACKEND,
        help=f"how the network runs (default {DEFAULT_BACKEND}; onnx needs the onnx extra)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing prediction files")
    args = parser.parse_args(argv)
    outputs = predict_dir(
        args.checkpoint,
        args.data,
        args.out,
        args.seed,
        args.overwrite,
        args.batch_size,
        args.device,
        backend=args.backend,
    )
    for path in outputs:
        print(f"wrote {path}")
    return 0
