"""The evaluator's inputs: which splits a prediction holds, and its images read as an untrusted upload.

A prediction is a submission zip, a folder with data_{val,test}_prediction.npz, or one prediction npz. Every
file is checked (zip members' sizes and ratios, npy headers, shape, finiteness) before numpy allocates, and
errors name the file as the user gave it (``zip:member``), never a temporary path.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from calogan.core.errors import InputError
from calogan.core.runtime import scratch_dir
from calogan.core.safezip import check_npz, extract_upload
from calogan.ecal.data import (
    KEY_PDG,
    PREDICT_SPLITS,
    PREDICTION_MANIFEST,
    PREDICTION_NAMES,
    check_prediction_manifest,
    load_prediction,
    npz_shape,
    prediction_bytes_limit,
    split_path,
)

SPLITS = PREDICT_SPLITS  # the prediction files' splits, in the order they are scored


def read_upload_zip(
    zpath: Path, splits: Sequence[str], dest: Path, n_events: dict[str, int | None] | None = None
) -> dict[str, Path]:
    """Check a submission zip as an untrusted upload and stream the wanted prediction files into ``dest``.

    The zip must hold exactly the two prediction files at its root (calogan.core.safezip.check_upload: no
    duplicates, paths, links or zip bombs); each may declare and yield at most
    ``prediction_bytes_limit(N)`` bytes, N from ``n_events`` (1 GiB where unknown). Returns {split: path}.
    """
    n_events = n_events or {}
    limits = {PREDICTION_NAMES[s]: prediction_bytes_limit(n_events.get(s)) for s in SPLITS}
    files = extract_upload(
        zpath, [PREDICTION_NAMES[s] for s in splits], dest, PREDICTION_NAMES.values(), limits
    )
    return {s: files[PREDICTION_NAMES[s]] for s in splits}


def check_prediction_file(path: Path, n: int | None, shown: str) -> None:
    """An uploaded prediction npz is a zip too: its members get the upload's size and ratio limits and their
    npy headers are checked before numpy allocates (calogan.core.safezip.check_npz).

    Files that are no zip at all are left to the npz reader, which names the problem.
    """
    limit = prediction_bytes_limit(n)
    check_npz(path, limit, limit, label=shown)


def _load_pred(path: Path, n: int, shown: str) -> np.ndarray:
    """load_prediction with errors naming ``shown`` (e.g. zip:member) instead of a temp path."""
    check_prediction_file(path, n, shown)
    try:
        return load_prediction(path, n_expected=n)
    except InputError as exc:
        raise InputError(str(exc).replace(str(path), shown)) from None


def resolve_predictions(pred: str | Path, split: str) -> tuple[list[str], Path | None]:
    """Which splits to score for ``pred`` and, for a single npz, its split name."""
    pred = Path(pred)
    if split not in ("val", "test", "both"):
        raise InputError(f"--split: must be val, test or both, not {split!r}")
    splits = list(SPLITS) if split == "both" else [split]
    if pred.is_file() and pred.suffix == ".npz":
        guess = next((s for s, n in PREDICTION_NAMES.items() if pred.name == n), None)
        if split == "both":
            if guess is None:
                raise InputError(f"{pred}: a single prediction file needs --split val or test")
            splits = [guess]
    return splits, pred


def solution_sizes(solution_dir: str | Path, splits: Sequence[str]) -> dict[str, tuple[Path, int]]:
    """{split: (solution file, its number of events)}, read from the files' headers only (no array loaded)."""
    paths = {s: split_path(Path(solution_dir), s, "solution") for s in splits}
    for p in paths.values():
        if not p.is_file():
            raise InputError(f"{p}: solution file not found")
    return {s: (p, npz_shape(p, KEY_PDG)[0]) for s, p in paths.items()}


def read_predictions(pred: str | Path, n_events: dict[str, int]) -> dict[str, np.ndarray]:
    """{split: (N, 30, 30) images} of ``pred`` (zip, folder or npz) for the splits of ``n_events``, checked.

    A zip is read as an untrusted upload into a scratch folder; a folder or npz must agree with its
    prediction manifest (a mixed pair is refused).
    """
    pred = Path(pred)
    splits = list(n_events)
    with scratch_dir("evaluate") as tmpdir:
        if pred.is_file() and (
            pred.suffix.lower() == ".zip" or (pred.suffix != ".npz" and zipfile.is_zipfile(pred))
        ):
            files = read_upload_zip(pred, splits, tmpdir, n_events)
            shown = {s: f"{pred}:{PREDICTION_NAMES[s]}" for s in splits}
        elif pred.is_dir():
            files = {s: pred / PREDICTION_NAMES[s] for s in splits}
            for p in files.values():
                if not p.is_file():
                    raise InputError(f"{p}: prediction file not found")
            shown = {s: str(f) for s, f in files.items()}
            check_prediction_manifest(pred, [f.name for f in files.values()])  # a mixed pair is refused
        elif pred.suffix == ".npz":
            files, shown = {splits[0]: pred}, {splits[0]: str(pred)}
            check_prediction_manifest(pred.parent, [pred.name])
        else:
            raise InputError(f"{pred}: expected a submission .zip, a folder or a prediction .npz")
        return {s: _load_pred(files[s], n_events[s], shown[s]) for s in splits}


def training_stop(pred: str | os.PathLike) -> dict | None:
    """The budget stop of the training behind a prediction folder (from its manifest), or None."""
    folder = Path(pred)
    manifest = folder / PREDICTION_MANIFEST if folder.is_dir() else None
    if manifest is None or not manifest.is_file():
        return None
    try:
        stop = json.loads(manifest.read_text()).get("training_stop")
    except (OSError, ValueError, AttributeError):
        return None
    return stop if isinstance(stop, dict) and stop.get("reason") == "budget" else None
