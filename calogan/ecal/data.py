"""The competition data format (docs/data.md): validated npz loading, atomic writing, condition vectors.

Every validation failure raises :class:`calogan.core.errors.InputError` with a message naming the file,
the key and the problem. Files are always read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calogan.core.errors import InputError, printable
from calogan.core.runtime import atomic_write
from calogan.core.safezip import check_npz, read_npy_header

IMAGE_SIZE = 30
N_CELLS = IMAGE_SIZE * IMAGE_SIZE
#: Cell centres in cm, identical in x and y. image[i, j] is at x = CELL_CENTRES[j], y = CELL_CENTRES[i].
CELL_CENTRES = np.linspace(-14.5, 14.5, IMAGE_SIZE)
#: Depth (cm) used by the competition for the expected shower centre: c = (x, y) + 25 * (px/pz, py/pz).
SHOWER_DEPTH_CM = 25.0
PDG_ELECTRON, PDG_PHOTON = 11, 22
#: Energy scale of EnergyDeposit: about 165 units per GeV of particle momentum (sampling fraction × calibration).
ENERGY_UNITS_PER_GEV = 165.0

KEY_ENERGY = "EnergyDeposit"
KEY_POINT = "ParticlePoint"
KEY_MOMENTUM = "ParticleMomentum"
KEY_PDG = "ParticlePDG"
CONDITION_KEYS = (KEY_POINT, KEY_MOMENTUM, KEY_PDG)
SPLITS = ("train", "val", "test")
#: The splits a submission predicts, and the name of each one's prediction file (also its name in a results zip).
PREDICT_SPLITS = ("val", "test")
PREDICTION_NAMES = {split: f"data_{split}_prediction.npz" for split in PREDICT_SPLITS}


@dataclass
class CaloData:
    """One competition file in memory: conditions and (for train/solution files) the images."""

    point: np.ndarray  # (N, 3) float32, cm
    momentum: np.ndarray  # (N, 3) float32, GeV
    pdg: np.ndarray  # (N,) int64, 11 or 22
    energy: np.ndarray | None = None  # (N, 30, 30) float32
    path: str = "<memory>"
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.point.shape[0])

    @property
    def p_abs(self) -> np.ndarray:
        """|p| in GeV, float64."""
        return np.linalg.norm(self.momentum.astype(np.float64), axis=1)

    @property
    def is_photon(self) -> np.ndarray:
        return self.pdg == PDG_PHOTON

    def conditions(self) -> np.ndarray:
        """The raw (N, 6) condition vector (x, y, px, py, pz, is_photon), float32."""
        return raw_conditions(self.point, self.momentum, self.pdg)

    def subset(self, index: np.ndarray | slice) -> CaloData:
        """Rows selected by a boolean mask, an index array or a slice (a new object, arrays copied)."""
        return CaloData(
            point=self.point[index].copy(),
            momentum=self.momentum[index].copy(),
            pdg=self.pdg[index].copy(),
            energy=None if self.energy is None else self.energy[index].copy(),
            path=self.path,
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The competition keys, ready for :func:`save_npz`."""
        arrays = {KEY_POINT: self.point, KEY_MOMENTUM: self.momentum, KEY_PDG: self.pdg.astype(np.float32)}
        if self.energy is not None:
            arrays[KEY_ENERGY] = self.energy
        return arrays


def raw_conditions(point: np.ndarray, momentum: np.ndarray, pdg: np.ndarray) -> np.ndarray:
    """Stack (x, y, px, py, pz, is_photon) into an (N, 6) float32 array."""
    return np.concatenate(
        [
            np.asarray(point, np.float32)[:, :2],
            np.asarray(momentum, np.float32),
            (np.asarray(pdg) == PDG_PHOTON).astype(np.float32)[:, None],
        ],
        axis=1,
    )


# --------------------------------------------------------------------------- reading

#: Largest array an npz entry may declare when read from disk (8 GiB; uploads have tighter limits).
MAX_ARRAY_BYTES = 8 << 30


def open_npz(path: str | os.PathLike, float32_keys: Collection[str] = ()) -> dict[str, np.ndarray]:
    """Read every array of an npz file without unpickling; bad files raise InputError.

    The arrays named in ``float32_keys`` are converted to float32 while they are read (in chunks of 16 MiB),
    so a float64 upload never sits in memory at twice the size of what is kept; their dtype is checked from
    the npy header before anything is allocated (only real numbers, see :func:`as_float32`).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an .npz file")
    check_npz(path, MAX_ARRAY_BYTES)  # entry count, bombs and npy headers, before numpy allocates
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):  # a bare .npy array has no context manager
            raise InputError(f"{path}: not an npz archive (a single .npy array?)")
        with npz:
            return {
                key: _read_float32(npz.zip, key, path) if key in float32_keys else npz[key]
                for key in npz.files
            }
    except InputError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise InputError(f"{path}: contains object/pickled arrays, which are refused") from None
        raise InputError(f"{path}: not a readable npz file ({exc})") from None
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise InputError(f"{path}: not a readable npz file (truncated or corrupt: {exc})") from None


def _read_float32(zf: zipfile.ZipFile, key: str, path: Path) -> np.ndarray:
    """The npz array ``key`` read as float32, converted chunk by chunk (16 MiB) from its stored dtype."""
    with zf.open(f"{key}.npy") as handle:
        shape, fortran, dtype = read_npy_header(handle, str(path), key)
        _check_numeric(path, key, np.empty(0, dtype))
        order = "F" if fortran else "C"
        out = np.empty(shape, np.float32, order=order)
        flat = out.reshape(-1, order=order)  # a view of ``out`` in the stored order
        step = max(1, (16 << 20) // max(dtype.itemsize, 1))
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become Inf, refused later
            for start in range(0, flat.size, step):  # a loop over chunks of the file, not over events
                count = min(step, flat.size - start)
                block = handle.read(count * dtype.itemsize)
                if len(block) != count * dtype.itemsize:
                    raise InputError(f"{path}: array '{printable(key)}' is truncated")
                flat[start : start + count] = np.frombuffer(block, dtype)
    return out


def npz_shape(path: str | os.PathLike, key: str) -> tuple[int, ...]:
    """The shape of the npz array ``key`` from its npy header, without reading the array."""
    path = Path(path)
    check_npz(path, MAX_ARRAY_BYTES)
    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as handle:
            return tuple(read_npy_header(handle, str(path), key)[0])
    except KeyError:
        raise InputError(f"{path}: missing key '{printable(key)}'") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable npz file ({type(exc).__name__})") from None


def _check_numeric(path: Path, key: str, array: np.ndarray) -> None:
    """Refuse an array that is not real numbers: complex, strings, objects, dates (bool and ints are fine)."""
    if array.dtype.kind not in "biuf":
        raise InputError(
            f"{path}: key '{printable(key)}' has dtype {array.dtype}, expected real numbers (non-numeric and "
            "complex arrays are refused)"
        )


def as_float32(path: str | os.PathLike, key: str, array: np.ndarray) -> np.ndarray:
    """``array`` as contiguous float32, checked *after* the conversion: real numbers only, no NaN/Inf.

    A float64 value beyond float32's range becomes Inf in the conversion and is refused here, so nothing
    downstream meets it.
    """
    _check_numeric(Path(path), key, array)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        raise InputError(
            f"{path}: key '{printable(key)}' holds {int((~finite).sum())} NaN/Inf values (as float32)"
        )
    return out


def as_images(path: str | os.PathLike, array: np.ndarray, key: str = KEY_ENERGY) -> np.ndarray:
    """Accept (N, 900) or (N, 30, 30) and return (N, 30, 30) float32; validate finiteness."""
    path = Path(path)
    _check_numeric(path, key, array)
    if array.ndim == 2 and array.shape[1] == N_CELLS:
        array = array.reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    elif array.ndim == 4 and array.shape[1:] == (1, IMAGE_SIZE, IMAGE_SIZE):
        array = array[:, 0]
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(f"{path}: key '{key}' has shape {array.shape}, expected (N, 30, 30) or (N, 900)")
    return as_float32(path, key, array)


def load_npz(
    path: str | os.PathLike,
    require_energy: bool | None = None,
    require_conditions: bool = True,
) -> CaloData:
    """Load and validate a train/val/test/solution file.

    require_energy: True (train/solution files), False (ignore any images), None (load if present).
    """
    path = Path(path)
    arrays = open_npz(path)
    missing = [k for k in CONDITION_KEYS if k not in arrays]
    if require_conditions and missing:
        raise InputError(
            f"{path}: missing key(s) {', '.join(missing)} (has: {printable(', '.join(sorted(arrays)), 200) or 'none'})"
        )
    if require_energy and KEY_ENERGY not in arrays:
        raise InputError(
            f"{path}: missing key '{KEY_ENERGY}' (has: {printable(', '.join(sorted(arrays)), 200) or 'none'})"
        )

    point, momentum, pdg = (as_float32(path, key, arrays[key]) for key in CONDITION_KEYS)
    n = point.shape[0] if point.ndim >= 1 else -1
    if point.ndim != 2 or point.shape[1] not in (2, 3):
        raise InputError(f"{path}: key '{KEY_POINT}' has shape {point.shape}, expected (N, 3)")
    if point.shape[1] == 2:  # tolerate (x, y) only; z is unused
        point = np.concatenate([point, np.zeros((n, 1), point.dtype)], axis=1)
    if momentum.shape != (n, 3):
        raise InputError(f"{path}: key '{KEY_MOMENTUM}' has shape {momentum.shape}, expected ({n}, 3)")
    pdg = pdg.reshape(-1) if pdg.ndim == 2 and pdg.shape[1] == 1 else pdg
    if pdg.shape != (n,):
        raise InputError(f"{path}: key '{KEY_PDG}' has shape {pdg.shape}, expected ({n},)")
    if n == 0:
        raise InputError(f"{path}: holds no events")
    if not (momentum[:, 2] > 0).all():
        bad = int((momentum[:, 2] <= 0).sum())
        raise InputError(f"{path}: key '{KEY_MOMENTUM}' has {bad} events with pz <= 0 (pz must be > 0)")
    pdg_int = np.rint(pdg).astype(np.int64) if np.issubdtype(pdg.dtype, np.floating) else pdg.astype(np.int64)
    abs_pdg = np.abs(pdg_int)
    if not np.isin(abs_pdg, (PDG_ELECTRON, PDG_PHOTON)).all():
        values = np.unique(pdg_int[~np.isin(abs_pdg, (PDG_ELECTRON, PDG_PHOTON))])[:5]
        raise InputError(f"{path}: key '{KEY_PDG}' holds values other than 11/22: {values.tolist()}")

    energy = None
    if require_energy is not False and KEY_ENERGY in arrays:
        energy = as_images(path, arrays[KEY_ENERGY])
        if energy.shape[0] != n:
            raise InputError(
                f"{path}: key '{KEY_ENERGY}' has {energy.shape[0]} events but conditions have {n}"
            )
        if (energy < 0).any():
            raise InputError(f"{path}: key '{KEY_ENERGY}' holds negative energies")
    return CaloData(
        point=np.ascontiguousarray(point),
        momentum=momentum,
        pdg=abs_pdg,
        energy=energy,
        path=str(path),
    )


#: Bytes an uploaded prediction file may take beyond its energies: npy headers, npz directory, small extra keys.
PREDICTION_OVERHEAD_BYTES = 1 << 20
#: Size bound of an uploaded prediction file when N is unknown (1 GiB).
PREDICTION_MAX_BYTES = 1 << 30


def prediction_bytes_limit(n_events: int | None) -> int:
    """The most bytes one prediction file (uncompressed) can hold for ``n_events`` events.

    N × 900 cells × 8 bytes (float64, the widest dtype the scorer accepts; canonical float32 takes half) plus
    :data:`PREDICTION_OVERHEAD_BYTES`; :data:`PREDICTION_MAX_BYTES` when N is unknown (None). Uploaded zips and
    the npz files inside them are refused beyond this (calogan.core.safezip).
    """
    if n_events is None:
        return PREDICTION_MAX_BYTES
    return int(n_events) * N_CELLS * 8 + PREDICTION_OVERHEAD_BYTES


#: Largest cell energy a prediction may hold: 1e12 units, ~1e8 times a 100 GeV shower's whole energy. Far
#: beyond any shower, yet small enough that every statistic and embedding of the score stays finite in float32
#: (at 1e38 per cell the embeddings overflow).
MAX_CELL_ENERGY = 1e12


def load_prediction(path: str | os.PathLike, n_expected: int | None = None) -> np.ndarray:
    """Load a prediction file: one array EnergyDeposit, finite, non-negative; returns (N, 30, 30) float32."""
    return check_prediction_arrays(str(path), open_npz(path, float32_keys=(KEY_ENERGY,)), n_expected)


def check_prediction_arrays(
    label: str, arrays: Mapping[str, np.ndarray], n_expected: int | None
) -> np.ndarray:
    """Validate the arrays of one prediction file as the scorer reads them; return (N, 30, 30) float32.

    Errors (InputError naming ``label``): missing EnergyDeposit, a dtype that is not real numbers (complex,
    strings, objects), wrong shape, wrong N, NaN/Inf after conversion to float32, negative energies, cell
    energies above :data:`MAX_CELL_ENERGY`.
    """
    if KEY_ENERGY not in arrays:
        raise InputError(
            f"{label}: missing key '{KEY_ENERGY}' (has: {printable(', '.join(sorted(arrays)), 200) or 'none'})"
        )
    images = as_images(label, arrays[KEY_ENERGY])  # numeric, finite, (N,30,30) or (N,900)
    if n_expected is not None and images.shape[0] != n_expected:
        raise InputError(
            f"{label}: holds {images.shape[0]} events, expected {n_expected} (same N and order as the input file)"
        )
    if (images < 0).any():
        raise InputError(f"{label}: key '{KEY_ENERGY}' holds {int((images < 0).sum())} negative energies")
    too_big = images > MAX_CELL_ENERGY
    if too_big.any():
        raise InputError(
            f"{label}: key '{KEY_ENERGY}' holds {int(too_big.sum())} cell energies above {MAX_CELL_ENERGY:.0e} "
            f"(largest {float(images.max()):.3g}); energies are about {ENERGY_UNITS_PER_GEV:.0f} units per GeV"
        )
    return images


#: The file beside a prediction pair that ties its two files together: each file's sha256 and the checkpoint.
PREDICTION_MANIFEST = "prediction_manifest.json"


def prediction_manifest(files: Mapping[str, os.PathLike], source: Mapping[str, object]) -> dict:
    """The manifest of a prediction pair: {name: {sha256, bytes}} of ``files`` and where they came from."""
    return {
        "format": "calogan-predictions-v1",
        "files": {
            name: {"sha256": sha256_file(path), "bytes": Path(path).stat().st_size}
            for name, path in files.items()
        },
        **source,
    }


def check_prediction_manifest(folder: str | os.PathLike, names: Sequence[str]) -> dict | None:
    """Refuse (InputError) prediction files in ``folder`` that differ from the pair its manifest records.

    ``predict`` writes :data:`PREDICTION_MANIFEST` before it moves the two files into place, so a pair mixed
    by an interrupted ``predict --overwrite`` (one new file beside one old) or by hand never matches it.
    Returns the manifest, or None when the folder has none (predictions written by other tools).
    """
    path = Path(folder) / PREDICTION_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        recorded = {name: files[name]["sha256"] for name in names}
    except (ValueError, KeyError, TypeError, OSError, UnicodeDecodeError):
        raise InputError(
            f"{path}: not a readable prediction manifest (delete it if the prediction files are right)"
        ) from None
    for name in names:
        file = Path(folder) / name
        if file.is_file() and sha256_file(file) != recorded[name]:
            source = printable(str(manifest.get("checkpoint", "another run")), limit=120)
            raise InputError(
                f"{file}: differs from the file recorded in {PREDICTION_MANIFEST} (from {source}): the val/test "
                "pair is mixed, e.g. by an interrupted predict; run predict again (or delete the manifest if "
                "you replaced the file on purpose)"
            )
    return manifest


def split_path(data_dir: str | os.PathLike, split: str, kind: str = "") -> Path:
    """data_dir/data_{split}{_kind}.npz, e.g. split_path('data', 'val', 'solution')."""
    suffix = f"_{kind}" if kind else ""
    return Path(data_dir) / f"data_{split}{suffix}.npz"


def require_file(path: Path, hint: str = "run `python -m calogan.simulate` to create the data") -> Path:
    if not path.exists():
        raise InputError(f"{path}: file not found ({hint})")
    return path


# --------------------------------------------------------------------------- writing


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], compress: bool = False) -> Path:
    """Write an npz atomically: a temp file in the same folder, then rename (never a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for key, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise InputError(f"{path}: refusing to write object array '{key}'")
    save = np.savez_compressed if compress else np.savez
    return atomic_write(path, lambda handle: save(handle, **{k: np.asarray(v) for k, v in arrays.items()}))


def save_prediction(path: str | os.PathLike, images: np.ndarray) -> Path:
    """Write a prediction file: one array EnergyDeposit, (N, 30, 30) float32, validated first."""
    images = np.asarray(images, dtype=np.float32).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    if not np.isfinite(images).all():
        raise InputError(f"{path}: refusing to write NaN/Inf energies")
    if (images < 0).any():
        raise InputError(f"{path}: refusing to write negative energies")
    return save_npz(path, {KEY_ENERGY: images})


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (used to tie checkpoints and embedders to their training data)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- normalisation


@dataclass
class ConditionNormalizer:
    """Mean/std of the five continuous conditions (x, y, px, py, pz), stored with every model.

    is_photon (the sixth column) is passed through unchanged.
    """

    mean: np.ndarray  # (5,)
    std: np.ndarray  # (5,)

    @classmethod
    def fit(cls, conditions: np.ndarray) -> ConditionNormalizer:
        cont = np.asarray(conditions, np.float64)[:, :5]
        std = cont.std(axis=0)
        return cls(
            mean=cont.mean(axis=0).astype(np.float32), std=np.where(std > 0, std, 1.0).astype(np.float32)
        )

    def transform(self, conditions: np.ndarray) -> np.ndarray:
        out = np.array(conditions, dtype=np.float32, copy=True)
        out[:, :5] = (out[:, :5] - self.mean) / self.std
        return out

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, list[float]]) -> ConditionNormalizer:
        return cls(mean=np.asarray(d["mean"], np.float32), std=np.asarray(d["std"], np.float32))
