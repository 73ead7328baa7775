"""Export a trained generator with its normalisation baked in: TorchScript or ONNX (docs/submission.md).

``python -m calogan.export --checkpoint CKPT --format torchscript|onnx --out FILE``

The exported graph takes raw inputs, in this order (batch size B is dynamic):
``point`` (B, 2) x, y in cm; ``momentum`` (B, 3) px, py, pz in GeV; ``pdg`` (B,) float 11 or 22 (sign ignored);
``noise`` (B, noise_dim) standard normal; and returns ``energy`` (B, 30, 30) float32 >= 0.
Every export is checked against the eager model (max |diff| <= 1e-4 x image max) before it is kept.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from calogan.core import options
from calogan.core.errors import InputError
from calogan.core.runtime import temp_dir_for
from calogan.ecal.data import IMAGE_SIZE, require_file
from calogan.ecal.models import load_generator

FORMATS = ("torchscript", "onnx")
INPUT_NAMES = ("point", "momentum", "pdg", "noise")
OUTPUT_NAME = "energy"
#: Name of the JSON metadata stored inside exports (TorchScript extra file / ONNX metadata key).
META_NAME = "calogan.json"
PARITY_RTOL = 1e-4


class RawInputGenerator(torch.nn.Module):
    """Wrap a calogan Generator so it takes raw (point, momentum, pdg, noise) tensors and returns images."""

    def __init__(self, generator):
        super().__init__()
        self.generator = generator
        self.noise_dim = int(generator.noise_dim)

    def forward(self, point, momentum, pdg, noise):
        """(B,2|3), (B,3), (B,), (B,D) float32 → (B,30,30) non-negative images."""
        is_photon = ((pdg.reshape(-1).abs() - 22.0).abs() < 0.5).to(point.dtype).unsqueeze(1)
        conditions = torch.cat([point[:, :2], momentum, is_photon], dim=1)
        images = self.generator(noise, conditions)
        return images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE).clamp_min(0.0)


def example_inputs(n: int, noise_dim: int, seed: int = 0) -> tuple:
    """A fixed, physically plausible raw input batch (used for tracing and parity checks)."""
    rng = np.random.default_rng(seed)
    point = rng.normal(0.0, 2.7, (n, 2)).astype(np.float32)
    pz = np.exp(rng.uniform(0.0, np.log(100.0), n)).astype(np.float32)
    pxy = rng.normal(0.0, 3.0, (n, 2)).astype(np.float32)
    momentum = np.concatenate([pxy, pz[:, None]], axis=1)
    pdg = rng.choice(np.array([11.0, 22.0], np.float32), n)
    noise = rng.standard_normal((n, noise_dim), dtype=np.float32)
    return tuple(torch.from_numpy(a) for a in (point, momentum, pdg, noise))


def export_metadata(generator, meta: dict | None = None) -> dict:
    """JSON-able description stored with an export: input layout, noise size, provenance."""
    meta = dict(meta or {})
    return {
        "format": "calogan-export-v1",
        "inputs": {
            "point": "(B,2) float32 x,y cm",
            "momentum": "(B,3) float32 px,py,pz GeV",
            "pdg": "(B,) float32 11|22",
            "noise": f"(B,{int(generator.noise_dim)}) float32 N(0,1)",
        },
        "output": "energy (B,30,30) float32 >= 0",
        "noise_dim": int(generator.noise_dim),
        **{k: v for k, v in meta.items() if isinstance(v, str | int | float | bool)},
    }


def to_torchscript(generator):
    """Trace the raw-input wrapper to a TorchScript module (CPU, float32, eval mode)."""
    wrapped = RawInputGenerator(generator).cpu().float().eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.jit.trace(wrapped, example_inputs(8, wrapped.noise_dim, seed=1), check_trace=False)


def save_torchscript(generator, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write a TorchScript export of ``generator`` (metadata in the extra file calogan.json), atomically."""
    scripted = to_torchscript(generator)
    path = Path(path)
    extra = {META_NAME: json.dumps(export_metadata(generator, meta))}
    with temp_dir_for(path) as tmp:
        staged = Path(tmp) / path.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(scripted, str(staged), _extra_files=extra)
        os.replace(staged, path)
    return path


def load_torchscript(path: str | os.PathLike):
    """Load a TorchScript export on CPU; returns (module, metadata dict)."""
    extra = {META_NAME: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module.eval(), json.loads(extra[META_NAME] or "{}")


def require_onnx():
    """Import onnx + onnxruntime or raise a one-line InputError naming the missing extra."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise InputError(
            f"--format onnx needs the optional onnx extra ({exc.name} is not installed): "
            "pip install 'calogan[onnx]'  (or: pip install onnx onnxruntime)"
        ) from None


def save_onnx(generator, path: str | os.PathLike, meta: dict | None = None, opset: int = 17) -> Path:
    """Write an ONNX export (dynamic batch axis, metadata key calogan.json), atomically."""
    require_onnx()
    import onnx

    wrapped = RawInputGenerator(generator).cpu().float().eval()
    path = Path(path)
    with temp_dir_for(path) as tmp:
        staged = Path(tmp) / path.name
        trace_to_onnx(
            wrapped, example_inputs(8, wrapped.noise_dim, seed=1), INPUT_NAMES, OUTPUT_NAME, staged, opset
        )
        model = onnx.load(str(staged))
        entry = model.metadata_props.add()
        entry.key, entry.value = META_NAME, json.dumps(export_metadata(generator, meta))
        onnx.checker.check_model(model)
        onnx.save(model, str(staged))
        os.replace(staged, path)
    return path


def trace_to_onnx(
    module: torch.nn.Module,
    example: tuple,
    input_names: Sequence[str],
    output_name: str,
    path: str | os.PathLike,
    opset: int = 17,
) -> None:
    """Trace ``module`` (on CPU, float32) on ``example`` into an ONNX file whose batch axis is dynamic."""
    dynamic = {name: {0: "batch"} for name in (*input_names, output_name)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(t.cpu() for t in example),
            str(path),
            input_names=list(input_names),
            output_names=[output_name],
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU InferenceSession for an exported generator."""
    require_onnx()
    import onnxruntime as ort

    require_file(Path(path), hint="write one with `python -m calogan.export --format onnx`")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf classes
        raise InputError(f"{path}: not a loadable ONNX model ({type(exc).__name__})") from None


#: Events per ONNX Runtime call in ParallelOnnxSession: the 16-channel 30x30 activations of 32 showers
#: (~1.8 MB per layer) stay in a core's cache; measured fastest of 16-256 (benchmarks/README.md).
ONNX_CHUNK = 32


class ParallelOnnxSession:
    """ONNX Runtime over cache-sized chunks of a batch, run concurrently by one thread per core.

    A single-threaded session called from ``workers`` Python threads (ONNX Runtime releases the GIL and
    allows concurrent ``run``) keeps every core busy on its own chunk; on a 2-core CPU this is ~1.5x one
    session with 2 intra-op threads at batch 1024, which synchronises the cores on every operator.
    ``run`` has the signature of ``onnxruntime.InferenceSession.run``; outputs are concatenated in order.
    """

    def __init__(self, path: str | os.PathLike, workers: int | None = None, chunk: int = ONNX_CHUNK):
        if chunk < 1:
            raise InputError(f"chunk: must be >= 1, got {chunk}")
        self.workers = max(1, int(workers or torch.get_num_threads()))
        self.chunk = int(chunk)
        self.session = onnx_session(path, threads=1)
        self._pool = (
            ThreadPoolExecutor(self.workers, thread_name_prefix="calogan-onnx") if self.workers > 1 else None
        )

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs for the whole batch in ``feeds``; batches of at most ``chunk`` go through in one call."""
        n = len(next(iter(feeds.values())))
        if self._pool is None or n <= self.chunk:
            return self.session.run(output_names, feeds)

        def part(start: int) -> list[np.ndarray]:
            return self.session.run(
                output_names, {k: v[start : start + self.chunk] for k, v in feeds.items()}
            )

        pieces = list(self._pool.map(part, range(0, n, self.chunk)))
        return [np.concatenate(outs, axis=0) for outs in zip(*pieces)]

    def close(self) -> None:
        """Stop the worker threads (also done at interpreter exit)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def run_export(path: str | os.PathLike, fmt: str, inputs: tuple) -> np.ndarray:
    """Run an exported generator file on raw input tensors; returns (B, 30, 30) numpy."""
    if fmt == "torchscript":
        module, _ = load_torchscript(path)
        with torch.no_grad():
            return module(*inputs).numpy()
    session = ParallelOnnxSession(path, chunk=4)  # small chunks, so the parity batches span several
    try:
        feeds = {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs)}
        return session.run([OUTPUT_NAME], feeds)[0]
    finally:
        session.close()


def check_parity(generator, path: str | os.PathLike, fmt: str, batch_sizes: Sequence[int] = (5, 33)) -> float:
    """Compare an export with the eager generator on fixed batches; return the worst |diff| / image max.

    Several batch sizes (different from the tracing one) exercise the dynamic batch axis.
    """
    wrapped = RawInputGenerator(generator).cpu().float().eval()
    worst = 0.0
    for i, n in enumerate(batch_sizes):
        inputs = example_inputs(n, wrapped.noise_dim, seed=100 + i)
        with torch.no_grad():
            eager = wrapped(*inputs).numpy()
        exported = run_export(path, fmt, inputs)
        if exported.shape != eager.shape:
            raise RuntimeError(
                f"{path}: export returned shape {exported.shape} for batch {n}, eager {eager.shape}"
            )
        scale = max(float(np.abs(eager).max()), 1e-12)
        worst = max(worst, float(np.abs(exported - eager).max()) / scale)
    return worst


def export_generator(
    generator,
    out: str | os.PathLike,
    fmt: str = "torchscript",
    meta: dict | None = None,
    overwrite: bool = False,
    verify: bool = True,
) -> tuple[Path, float | None]:
    """Export ``generator`` to ``out`` in ``fmt``; verify parity (else remove the file); return (path, rel err)."""
    if fmt not in FORMATS:
        raise InputError(f"--format: unknown format '{fmt}' (use {' or '.join(FORMATS)})")
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists (pass --overwrite to replace it)")
    if out.is_dir():
        raise InputError(f"{out}: is a directory, expected a file name")
    generator = generator.cpu().float().eval()
    if fmt == "onnx":
        require_onnx()
    # Write beside the target and only move into place once the parity check has passed.
    with temp_dir_for(out) as tmp:
        staged = Path(tmp) / out.name
        (save_onnx if fmt == "onnx" else save_torchscript)(generator, staged, meta)
        err = None
        if verify:
            err = check_parity(generator, staged, fmt)
        if err > PARITY_RTOL:
            raise RuntimeError(f"{out}: exported {fmt} model differs from eager by {err:.2e} x image max")
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, out)
    return out, err


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str = "torchscript",
    overwrite: bool = False,
    ema: bool = True,
) -> tuple[Path, float | None]:
    """Load the (EMA) generator of ``checkpoint`` and export it; see :func:`export_generator`."""
    if fmt not in FORMATS:
        raise InputError(f"--format: unknown format '{fmt}' (use {' or '.join(FORMATS)})")
    options.check_output_file(out, overwrite, "--out", inputs=[checkpoint])
    require_file(Path(checkpoint), hint="pass the checkpoint written by `python -m calogan.train`")
    generator, meta = load_generator(checkpoint, device="cpu", ema=ema)
    info = {"checkpoint": Path(checkpoint).name, "ema": ema}
    if isinstance(meta, dict):
        info.update({k: meta[k] for k in ("step", "data_sha256") if k in meta})
    return export_generator(generator, out, fmt, info, overwrite=overwrite)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: export a checkpoint's generator to TorchScript or ONNX."""
    parser = options.ArgumentParser(prog="python -m calogan.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by `python -m calogan.train`")
    parser.add_argument("--format", choices=FORMATS, default="torchscript", help="export format")
    parser.add_argument("--out", required=True, help="output file (.pt for TorchScript, .onnx for ONNX)")
    parser.add_argument(
        "--no-ema", action="store_true", help="export the raw generator instead of the EMA one"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    path, err = export_checkpoint(args.checkpoint, args.out, args.format, args.overwrite, ema=not args.no_ema)
    print(f"wrote {path} ({args.format}); parity vs eager: max |diff| = {err:.1e} x image max")
    return 0
