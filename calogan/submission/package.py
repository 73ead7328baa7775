"""Build and check Codalab submission zips (docs/submission.md).

``python -m calogan.package (--checkpoint CKPT | --predictions DIR) [--data DIR] [--out ZIP] [--kind results|code]
[--mantissa-bits N]``
``python -m calogan.package --check ZIP [--data DIR]``

A results zip holds exactly data_val_prediction.npz and data_test_prediction.npz at its root, float32 with
the mantissa rounded to ``--mantissa-bits`` (default 10: float16's relative precision, so that deflate
shrinks the files to ~60 % and two full splits stay under Codalab's 300 MB limit). A code zip holds
a self-contained solution.py, a TorchScript generator (generator.pt) with its settings (generator.json) and the
Codalab ``metadata`` command line. Everything is validated before the zip is written; the zip is written to a
temp file and renamed, so a failure never leaves a partial zip.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calogan.core import options
from calogan.core.errors import InputError, printable
from calogan.core.runtime import atomic_write, remove_stale_temps, scratch_dir, select_device, temp_dir_for
from calogan.ecal.data import (
    IMAGE_SIZE,
    KEY_ENERGY,
    PREDICT_SPLITS,
    PREDICTION_MANIFEST,
    check_prediction_arrays,
    check_prediction_manifest,
    load_npz,
    open_npz,
    require_file,
    save_prediction,
    sha256_file,
    split_path,
)
from calogan.ecal.data import PREDICTION_NAMES as SPLIT_PREDICTION_NAMES
from calogan.ecal.export import export_generator
from calogan.ecal.models import load_generator
from calogan.ecal.predict import ZIP_EPOCH, add_file_to_zip, predict_dir
from calogan.metrics.embedder import DEFAULT_NAME, load_or_train_embedder
from calogan.metrics.inputs import check_prediction_file, read_upload_zip
from calogan.metrics.scoring import score_arrays
from calogan.submission.codesub import METADATA_COMMAND, SOLUTION_SCRIPT

#: The two prediction files of a results zip, in PREDICT_SPLITS order.
PREDICTION_NAMES = tuple(SPLIT_PREDICTION_NAMES[split] for split in PREDICT_SPLITS)
#: Codalab's usual upload limit; a bigger zip is reported (not refused: the limit is set per competition).
SIZE_WARN_MB = 300.0
#: Explicit mantissa bits a float32 has; ``--mantissa-bits 23`` keeps the predictions exactly.
FLOAT32_MANTISSA_BITS = 23
#: Mantissa bits kept in a results zip by default: the relative precision of float16 (max relative error
#: 2^-11 ≈ 4.9e-4) with float32's range; the low bytes become zeros that deflate removes (~60 % of the raw size).
DEFAULT_MANTISSA_BITS = 10
#: Deflate level of results zips: on rounded showers level 3 came within 0.5 % of level 6's size in 40 %
#: of its time, and level 9 gained another 0.6 % at 1.4x level 6's time (docs/submission.md#zip-size).
RESULTS_ZIP_LEVEL = 3
CODE_FILES = ("solution.py", "generator.pt", "generator.json", "metadata")


@dataclass
class FileReport:
    """What was checked about one prediction file."""

    name: str
    n: int
    size_bytes: int
    sha256: str
    warnings: list[str] = field(default_factory=list)


def check_mantissa_bits(bits: int) -> int:
    """``bits`` if it is a valid ``--mantissa-bits`` (1..23), else InputError naming the option."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 23:
        raise InputError(
            f"--mantissa-bits: must be an integer from 1 to {FLOAT32_MANTISSA_BITS} "
            f"({FLOAT32_MANTISSA_BITS} keeps float32 exactly), got {bits!r}"
        )
    return int(bits)


def _low_mask(bits: int) -> np.uint32:
    return np.uint32((1 << (FLOAT32_MANTISSA_BITS - bits)) - 1)


def needs_rounding(values: np.ndarray, bits: int) -> bool:
    """Whether any float32 value has mantissa bits set below the ``bits`` kept (False: rounding is a no-op)."""
    if bits >= FLOAT32_MANTISSA_BITS:
        return False
    view = np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.uint32)
    return bool(np.bitwise_and(view, _low_mask(bits)).any())


def round_mantissa(values: np.ndarray, bits: int, inplace: bool = False) -> np.ndarray:
    """Round float32 values to ``bits`` explicit mantissa bits (round to nearest, ties away from zero).

    The exponent is kept, so the relative error is at most 2^-(bits+1) at any magnitude (no overflow or
    underflow as with float16); zero stays zero and signs are kept. A value that would round past the largest
    finite float32 is clamped to the largest finite value with ``bits`` bits. Returns a float32 array of the
    same shape: ``values`` itself when ``inplace`` and it is already a C-contiguous float32 array, else a copy.
    NaN/Inf are refused (ValueError): prediction files are validated finite before they are rounded.
    """
    check_mantissa_bits(bits)
    arr = np.asarray(values)
    if inplace and arr.dtype == np.float32 and arr.flags.c_contiguous and arr.flags.writeable:
        out = arr
    else:
        out = np.array(arr, dtype=np.float32, order="C", copy=True)
    if bits == FLOAT32_MANTISSA_BITS or out.size == 0:
        return out
    if not np.isfinite(out).all():
        raise ValueError("round_mantissa: NaN/Inf values cannot be rounded")
    view = out.reshape(-1).view(np.uint32)
    low = _low_mask(bits)
    view += np.uint32((int(low) + 1) >> 1)  # half of the dropped unit: a carry rounds the magnitude up
    view &= ~low
    overflow = np.isinf(out)
    if overflow.any():
        largest = (np.uint32(0x7F7FFFFF) & ~low).reshape(1).view(np.float32)[0]
        out[overflow] = np.copysign(largest, out[overflow])
    return out


def format_notes(arrays: dict[str, np.ndarray]) -> list[str]:
    """Deviations from the canonical format that the scorer tolerates (dtype, flat shape, extra keys)."""
    notes = []
    raw = arrays[KEY_ENERGY]
    if raw.dtype != np.float32:
        notes.append(f"dtype {raw.dtype} (canonical: float32)")
    if raw.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        notes.append(f"shape {raw.shape} (canonical: (N, 30, 30))")
    extra = sorted(set(arrays) - {KEY_ENERGY})
    if extra:
        notes.append(f"extra keys {printable(str(extra), 200)} (ignored by the scorer)")
    return notes


def expected_sizes(data_dir: str | os.PathLike | None, required: bool) -> dict[str, int | None]:
    """N of data_val.npz / data_test.npz in ``data_dir`` (None where unknown and not required)."""
    sizes: dict[str, int | None] = {}
    for split in PREDICT_SPLITS:
        path = split_path(data_dir, split) if data_dir is not None else None
        if path is not None and path.exists():
            sizes[split] = len(load_npz(path, require_energy=False))
        elif required:
            where = path if path is not None else f"data_{split}.npz"
            raise InputError(f"{where}: file not found (needed to check N; pass --data DIR)")
        else:
            sizes[split] = None
    return sizes


def check_zip(
    zip_path: str | os.PathLike, data_dir: str | os.PathLike | None = "data"
) -> tuple[list[FileReport], dict[str, np.ndarray]]:
    """Validate a results zip as the scoring program reads it; return per-file reports and the images.

    The zip is read as an untrusted upload (calogan.metrics.inputs.read_upload_zip: the central directory is
    checked before anything is extracted, then the two files are streamed out with a size limit). Refused
    (InputError, one line): not a zip, missing, extra or duplicate files, nested folders or other paths,
    symlinks, sizes beyond what N events can take (1 GiB each when N is unknown), zip bombs, pickled/object
    arrays, wrong key/shape/N, NaN/Inf, negative energies. N is checked when ``data_dir`` has the data files.
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise InputError(f"{zip_path}: file not found")
    sizes = expected_sizes(data_dir, required=False)
    reports, images = [], {}
    with scratch_dir("package-check") as tmp:
        files = read_upload_zip(zip_path, PREDICT_SPLITS, tmp, sizes)
        for split, name in zip(PREDICT_SPLITS, PREDICTION_NAMES):
            label = f"{zip_path}:{name}"
            extracted = files[split]
            check_prediction_file(extracted, sizes[split], label)
            try:
                arrays = open_npz(extracted)
            except InputError as exc:
                raise InputError(str(exc).replace(str(extracted), label)) from None
            images[split] = check_prediction_arrays(label, arrays, sizes[split])
            notes = format_notes(arrays)
            del arrays
            if sizes[split] is None:
                notes.append("N not checked (data file not found; pass --data DIR)")
            reports.append(
                FileReport(name, len(images[split]), extracted.stat().st_size, sha256_file(extracted), notes)
            )
            extracted.unlink()
    return reports, images


def package_inputs(
    predictions_dir: str | os.PathLike | None, data_dir: str | os.PathLike | None
) -> list[Path]:
    """The files a results zip is built from (prediction pair and manifest, data and solution files)."""
    found = []
    if predictions_dir is not None:
        found += [Path(predictions_dir) / n for n in (*PREDICTION_NAMES, PREDICTION_MANIFEST)]
    if data_dir is not None:
        found += [split_path(data_dir, s, kind) for s in PREDICT_SPLITS for kind in ("", "solution")]
        found.append(Path(data_dir) / DEFAULT_NAME)
    return found


def default_zip_name(source: Path, kind: str) -> Path:
    """submissions/<run>-<date>[-code].zip, the run taken from runs/<run>/checkpoints/x.pt or runs/<run>/predictions."""
    parts = source.resolve().parts
    run = parts[-3] if len(parts) >= 3 and parts[-2] == "checkpoints" else None
    if run is None:
        run = source.resolve().parent.name if source.name in ("predictions", "") else source.stem
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M")
    return Path("submissions") / f"{run}-{date}{'-code' if kind == 'code' else ''}.zip"


def _write_zip_atomic(
    out: Path, entries: dict[str, Path | bytes], compression: int, level: int | None = None
) -> Path:
    """Write a zip of {arcname: file path or bytes} to a temp file beside ``out``, then rename."""

    def write(handle) -> None:
        with zipfile.ZipFile(handle, "w", compression, allowZip64=True) as zf:
            for arcname, content in entries.items():
                if isinstance(content, bytes):
                    info = zipfile.ZipInfo(arcname, date_time=ZIP_EPOCH)
                    info.external_attr = 0o644 << 16
                    zf.writestr(info, content, compress_type=compression, compresslevel=level)
                else:
                    add_file_to_zip(zf, Path(content), arcname, level)

    return atomic_write(out, write)


def build_results_zip(
    predictions_dir: str | os.PathLike,
    data_dir: str | os.PathLike = "data",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    compress: bool = True,
    mantissa_bits: int = DEFAULT_MANTISSA_BITS,
) -> tuple[Path, list[FileReport]]:
    """Validate the two prediction files (N against the data files) and zip them at the root, atomically.

    The energies are rounded to ``mantissa_bits`` explicit mantissa bits (:func:`round_mantissa`; 23 keeps
    them exactly) and deflated at :data:`RESULTS_ZIP_LEVEL`. Files already in the canonical format whose
    values need no rounding are zipped byte for byte; others (float64, (N,900), more mantissa bits) are
    rewritten as float32 (N, 30, 30) first, and their report says so.
    """
    mantissa_bits = check_mantissa_bits(mantissa_bits)
    predictions_dir = Path(predictions_dir)
    out = Path(out) if out else default_zip_name(predictions_dir, "results")
    options.check_output_file(out, overwrite, "--out", inputs=package_inputs(predictions_dir, data_dir))
    if not predictions_dir.is_dir():
        raise InputError(
            f"{predictions_dir}: not a folder with data_val_prediction.npz and data_test_prediction.npz"
        )
    check_prediction_manifest(predictions_dir, PREDICTION_NAMES)  # a mixed val/test pair is refused
    sizes = expected_sizes(data_dir, required=True)
    reports, entries = [], {}
    with temp_dir_for(out) as tmp:
        for split, name in zip(PREDICT_SPLITS, PREDICTION_NAMES):
            path = predictions_dir / name
            if not path.exists():
                raise InputError(f"{path}: file not found (run `python -m calogan.predict` first)")
            arrays = open_npz(path)
            images = check_prediction_arrays(str(path), arrays, sizes[split])
            notes = format_notes(arrays)
            del arrays
            if notes:
                notes = [f"converted to float32 (N, 30, 30), one key ({'; '.join(notes)})"]
            if needs_rounding(images, mantissa_bits):
                images = round_mantissa(images, mantissa_bits, inplace=True)
                notes.append(
                    f"mantissa rounded to {mantissa_bits} bits "
                    f"(max relative error {2.0 ** -(mantissa_bits + 1):.1e}; --mantissa-bits 23 keeps it exact)"
                )
            if notes:  # rewrite in the canonical format
                path = save_prediction(Path(tmp) / name, images)
            del images
            entries[name] = path
            reports.append(FileReport(name, sizes[split], path.stat().st_size, sha256_file(path), notes))
        compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        _write_zip_atomic(out, entries, compression, RESULTS_ZIP_LEVEL if compress else None)
    return out, reports


def build_code_zip(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    seed: int = 0,
    batch_size: int = 128,
) -> tuple[Path, dict]:
    """Build a code submission from a checkpoint's EMA generator; see :func:`build_code_zip_from_generator`."""
    checkpoint = Path(checkpoint)
    out = Path(out) if out else default_zip_name(checkpoint, "code")
    options.check_output_file(out, overwrite, "--out", inputs=[checkpoint])
    require_file(checkpoint, hint="pass the checkpoint written by `python -m calogan.train`")
    generator, _ = load_generator(checkpoint, device="cpu", ema=True)
    info = {"checkpoint": checkpoint.name, "checkpoint_sha256": sha256_file(checkpoint)}
    return build_code_zip_from_generator(generator, out, overwrite, seed, batch_size, info)


def build_code_zip_from_generator(
    generator,
    out: str | os.PathLike,
    overwrite: bool = False,
    seed: int = 0,
    batch_size: int = 128,
    info: dict | None = None,
) -> tuple[Path, dict]:
    """Zip solution.py + TorchScript generator.pt + generator.json + Codalab metadata, atomically.

    The solution needs only numpy and torch; it draws noise exactly like calogan.ecal.predict.
    """
    out = options.check_output_file(out, overwrite, "--out")
    with temp_dir_for(out) as tmp:
        weights, err = export_generator(generator, Path(tmp) / "generator.pt", "torchscript", meta=info)
        config = {
            "weights": "generator.pt",
            "noise_dim": int(generator.noise_dim),
            "seed": seed,
            "batch_size": batch_size,
            **(info or {}),
            "weights_sha256": sha256_file(weights),
            "parity_rel_err": err,
        }
        entries = {
            "solution.py": SOLUTION_SCRIPT,
            "generator.pt": weights,
            "generator.json": (json.dumps(config, indent=2) + "\n").encode(),
            "metadata": f"command: {METADATA_COMMAND}\n".encode(),
        }
        _write_zip_atomic(out, entries, zipfile.ZIP_DEFLATED)
    return out, config


def local_score(
    images: dict[str, np.ndarray], data_dir: str | os.PathLike, runs: int
) -> dict[str, dict] | str:
    """Score against data_dir/data_{split}_solution.npz when present; a string says why it was skipped.

    AUC_img is computed only when a cached embedder (data_dir/embedder.safetensors) exists; training one
    here would make packaging slow, so otherwise the score is AUC_phys only (and says so).
    """
    solutions = {s: split_path(data_dir, s, "solution") for s in PREDICT_SPLITS}
    present = {s: p for s, p in solutions.items() if p.exists()}
    if not present:
        return f"skipped (no solution files in {data_dir})"
    scores = {}
    try:
        embedder = None
        if (Path(data_dir) / DEFAULT_NAME).is_file():
            embedder = load_or_train_embedder(data_dir, progress=False)
        for split, path in present.items():
            true = load_npz(path, require_energy=True)
            scores[split] = score_arrays(
                images[split], true, embedder, runs=runs, ceiling=False, standardised=False
            )
    except InputError as exc:
        return f"skipped ({exc})"
    return scores


def print_summary(zip_path: Path, reports: list[FileReport], score: dict | str | None = None) -> None:
    """Print sizes, checksums, notes and (optionally) the local score of a results zip."""
    size_mb = zip_path.stat().st_size / 1e6
    print(f"{zip_path}: {size_mb:.1f} MB, sha256 {sha256_file(zip_path)}")
    if size_mb > SIZE_WARN_MB:
        print(f"  warning: larger than Codalab's usual {SIZE_WARN_MB:.0f} MB upload limit")
    for rep in reports:
        print(f"  {rep.name}: N={rep.n}, {rep.size_bytes / 1e6:.1f} MB, sha256 {rep.sha256[:16]}…")
        for note in rep.warnings:
            print(f"    note: {note}")
    if isinstance(score, str):
        print(f"  local score: {score}")
    elif score:
        for split, s in score.items():
            img = "n/a (no cached embedder)" if s.get("auc_img") is None else f"{s['auc_img']:.4f}"
            print(
                f"  local score [{split}]: score={s['score']:.4f} (AUC_img={img}, AUC_phys={s['auc_phys']:.4f}, "
                f"std={s.get('score_std') or float('nan'):.4f}, runs={s.get('runs')})"
            )


def build_parser() -> options.ArgumentParser:
    parser = options.ArgumentParser(prog="python -m calogan.package", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", help="checkpoint: predictions are generated first (results) or exported (code)"
    )
    source.add_argument(
        "--predictions", help="folder holding data_val_prediction.npz and data_test_prediction.npz"
    )
    source.add_argument("--check", metavar="ZIP", help="validate an existing results zip and exit")
    parser.add_argument(
        "--data", default="data", help="folder with data_{val,test}.npz (and solutions) (default: data)"
    )
    parser.add_argument("--out", help="zip to write (default: submissions/<run>-<date>.zip)")
    parser.add_argument(
        "--kind",
        type=options.choice("results", "code"),
        default="results",
        help="results zip or code submission (default results)",
    )
    parser.add_argument("--seed", type=options.seed, default=0, help="noise seed for generation (default 0)")
    parser.add_argument(
        "--batch-size", type=options.count(1), default=128, help="generation batch size (default 128)"
    )
    parser.add_argument("--device", default="auto", help="device for generation (default auto)")
    parser.add_argument("--no-score", action="store_true", help="skip the local score")
    parser.add_argument(
        "--score-runs", type=options.count(1), default=100, help="PRD runs for the local score (default 100)"
    )
    parser.add_argument(
        "--mantissa-bits",
        type=options.count(1, FLOAT32_MANTISSA_BITS),
        metavar="N",
        help=f"results zips: round the float32 energies to N explicit mantissa bits, 1..23 (default "
        f"{DEFAULT_MANTISSA_BITS}: max relative error 4.9e-4, ~60 %% of the raw size; 23: exact, no rounding)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing zip")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: build (from a checkpoint or prediction files) or --check a submission zip.

    Every option and the output zip are checked before any work (docs/cli.md: option and output rules).
    """
    args = build_parser().parse_args(argv)
    if args.mantissa_bits is not None and (args.check or args.kind == "code"):
        raise InputError(
            "--mantissa-bits: applies only when building a results zip (not --check or --kind code)"
        )
    bits = DEFAULT_MANTISSA_BITS if args.mantissa_bits is None else args.mantissa_bits
    if args.check:
        reports, images = check_zip(args.check, args.data)
        score = None if args.no_score else local_score(images, args.data, args.score_runs)
        print("OK: valid results submission")
        print_summary(Path(args.check), reports, score)
        return 0
    if args.kind == "code" and not args.checkpoint:
        raise InputError("--kind code: needs --checkpoint (the generator is exported into the zip)")
    source = Path(args.checkpoint or args.predictions)
    out = Path(args.out) if args.out else default_zip_name(source, args.kind)
    inputs = [args.checkpoint, *package_inputs(args.predictions, args.data)]
    options.check_output_file(out, args.overwrite, "--out", inputs=inputs)
    if args.checkpoint:
        select_device(args.device)  # an unknown or unavailable device is refused before any work
    remove_stale_temps(out)  # what a killed run left while writing this zip
    if args.kind == "code":
        out, config = build_code_zip(args.checkpoint, out, args.overwrite, args.seed, args.batch_size)
        print(f"wrote {out}: code submission ({', '.join(CODE_FILES)}), noise_dim={config['noise_dim']}")
        print(f"  {out.stat().st_size / 1e6:.1f} MB, sha256 {sha256_file(out)}")
        print(f"  metadata: command: python3 $program/solution.py $input $output (seed {args.seed})")
        return 0
    if args.checkpoint:
        with temp_dir_for(out) as staging:
            predict_dir(args.checkpoint, args.data, staging, args.seed, True, args.batch_size, args.device)
            out, reports = build_results_zip(staging, args.data, out, args.overwrite, mantissa_bits=bits)
    else:
        out, reports = build_results_zip(args.predictions, args.data, out, args.overwrite, mantissa_bits=bits)
    score = None
    if not args.no_score:
        _, images = check_zip(out, args.data)
        score = local_score(images, args.data, args.score_runs)
    print(f"wrote {out}: valid results submission")
    print_summary(out, reports, score)
    return 0
