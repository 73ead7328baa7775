"""RICH track and sample files: npz or ROOT (uproot), column mapping and momentum units, for every RICH command.

A *table* is a flat file with one row per track and named columns: an npz archive (one array per column) or
a ROOT TTree (one branch per column, read and written with uproot, the optional ``root`` extra). A
:class:`ColumnMap` ties the kit's contract columns (P, ETA, NTRACKS, the five DLLs, sWeight) to the names a
file uses and states the unit of P there (GeV or MeV; the models work in GeV). A :class:`SampleSource` is
where a command finds one particle's calibration sample: a folder of ``rich_{particle}_{sample}.npz`` (or
``.root``) files, or a ROOT file and tree whose names may hold ``{particle}`` and ``{sample}``.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calogan.core import options
from calogan.core.errors import InputError
from calogan.core.runtime import atomic_path, temp_dir_for
from calogan.ecal.data import open_npz, save_npz
from calogan.rich import COLUMNS
from calogan.rich.data import RichSample, check_particle, require_sample, sample_from_arrays, sample_path

#: units of P in a file per GeV (the models work in GeV); values are divided by it when read
P_UNITS = {"GeV": 1.0, "MeV": 1000.0}
#: file formats by extension
FORMATS = ("npz", "root")
#: the tree name written by ``rich.simulate --format root`` and ``rich.generate`` when the input has none
DEFAULT_TREE = "DecayTree"
#: placeholders a ROOT file or tree name may hold
PLACEHOLDERS = ("{particle}", "{sample}")
_MAP_UNIT_KEY = "p_unit"
#: appended to a missing-column message
MAPPING_HINT = " (name the file's columns with --columns NAME=branch,...)"
_ROOT_KINDS = "biuf"  # numpy kinds uproot writes as TTree branches (bool, signed, unsigned, float)


def require_uproot():
    """Import uproot or raise a one-line InputError naming the optional extra that provides it."""
    try:
        import uproot
    except ImportError:
        raise InputError(
            "ROOT files need the optional root extra (uproot is not installed): pip install 'calogan[root]'"
            "  (or: pip install uproot)"
        ) from None
    return uproot


def file_format(path: str | os.PathLike, option: str = "--out") -> str:
    """'npz' or 'root' from a file's extension; InputError naming ``option`` otherwise."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise InputError(f"{option} {path}: unknown file type (use a .npz or .root file)")
    return suffix


# ---------------------------------------------------------------- column mapping


@dataclass(frozen=True)
class ColumnMap:
    """Contract column -> name in a file (only the renamed ones are listed) and the unit of P in that file."""

    renamed: tuple[tuple[str, str], ...] = ()
    p_unit: str = "GeV"

    def name(self, column: str) -> str:
        """The file's name of a contract column."""
        return dict(self.renamed).get(column, column)

    @property
    def p_per_gev(self) -> float:
        """The file's units of P per GeV."""
        return P_UNITS[self.p_unit]

    def p_to_gev(self, values: np.ndarray) -> np.ndarray:
        """The file's P values in GeV (float64 when converted, exact for MeV values that were GeV * 1000)."""
        return values if self.p_per_gev == 1.0 else np.asarray(values, np.float64) / self.p_per_gev

    def spec(self) -> str:
        """The mapping as ``--columns`` text (empty when every column keeps its contract name)."""
        return ",".join(f"{k}={v}" for k, v in self.renamed)

    def describe(self, column: str) -> str:
        """``name`` (plus ``(column X)`` when renamed), for messages."""
        name = self.name(column)
        return name if name == column else f"{name} (column {column})"

    @classmethod
    def parse(
        cls, spec: str | None = None, p_unit: str | None = None, option: str = "--columns"
    ) -> ColumnMap:
        """Read ``NAME=branch,...`` or a JSON mapping file ({"P": "branch", ..., "p_unit": "MeV"}).

        Keys are contract columns (and ``p_unit`` in a file); ``p_unit`` given here wins over the file's.
        """
        pairs: dict[str, str] = {}
        file_unit, where = None, option
        if spec and "=" not in spec:
            path = Path(spec)
            if not path.is_file():
                raise InputError(f"{option} {spec}: no such mapping file (or give NAME=branch,...)")
            try:
                loaded = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputError(f"{path}: not a readable JSON mapping file ({exc})") from None
            if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
                raise InputError(f"{path}: a mapping file holds one JSON object of column -> name strings")
            file_unit = loaded.pop(_MAP_UNIT_KEY, None)
            pairs, where = loaded, str(path)
        elif spec:
            where = option
            for item in spec.split(","):
                key, sep, value = item.partition("=")
                if not sep or not key.strip() or not value.strip():
                    raise InputError(f"{option}: '{item}' is not NAME=branch (e.g. P=Brunel_P)")
                pairs[key.strip()] = value.strip()
        unknown = [k for k in pairs if k not in COLUMNS]
        if unknown:
            raise InputError(f"{where}: unknown column '{unknown[0]}' (the columns are {', '.join(COLUMNS)})")
        unit = p_unit or file_unit or "GeV"
        if unit not in P_UNITS:
            raise InputError(
                f"{where if file_unit and not p_unit else '--p-unit'}: unit must be GeV or MeV, got '{unit}'"
            )
        names = [pairs.get(c, c) for c in COLUMNS]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise InputError(f"{where}: two columns are read from the same name '{doubled[0]}'")
        return cls(tuple((c, pairs[c]) for c in COLUMNS if c in pairs and pairs[c] != c), unit)


def add_column_options(ap, what: str = "the file's") -> None:
    """--columns and --p-unit on a parser (every RICH command that reads or writes tracks)."""
    ap.add_argument(
        "--columns",
        default=None,
        help=f"{what} names of the columns: NAME=branch,... (e.g. P=Brunel_P,NTRACKS=nTracks) or a JSON"
        " mapping file; default: the contract names P, ETA, NTRACKS, RichDLLe, ..., sWeight",
    )
    ap.add_argument(
        "--p-unit",
        type=options.choice(*P_UNITS),
        default=None,
        help=f"unit of P in {what} columns: GeV (default) or MeV (converted to GeV for the models)",
    )


# ---------------------------------------------------------------- tables: npz and ROOT


class Table:
    """A flat table with one row per track: ordered column names with their dtypes, read whole or in chunks."""

    path: Path
    label: str  # what messages call it: FILE, or FILE:TREE
    columns: dict[str, np.dtype]  # name -> dtype (a subarray dtype for fixed-size array columns)

    def __enter__(self) -> Table:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the file."""

    def require(self, names: Iterable[str], describe=None, hint: str = "") -> None:
        """InputError naming every one of ``names`` the table lacks (``describe``: a name's text in it)."""
        missing = [n for n in names if n not in self.columns]
        if missing:
            what = "branch" if isinstance(self, RootTable) else "column"
            plural = ("es" if what == "branch" else "s") if len(missing) > 1 else ""
            text = ", ".join((describe or str)(n) for n in missing)
            raise InputError(f"{self.label}: missing {what}{plural} {text}{hint}")

    def n_rows(self) -> int:
        """The common number of rows of every column; InputError naming a column of another length."""
        raise NotImplementedError

    def read(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The named columns, whole."""
        raise NotImplementedError

    def iterate(self, names: Sequence[str], step: int) -> Iterator[dict[str, np.ndarray]]:
        """The named columns, ``step`` rows at a time, in row order."""
        raise NotImplementedError


class NpzTable(Table):
    """An npz archive read without unpickling; chunks are read straight from the archive's members."""

    def __init__(self, path: Path):
        self.path, self.label = path, str(path)
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._fortran: dict[str, bool] = {}
        self.columns = {}
        try:
            self._zip = zipfile.ZipFile(path)
            for info in self._zip.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[:-4]
                with self._zip.open(info) as handle:
                    shape, fortran, dtype = _npy_header(handle)
                if dtype.hasobject:
                    raise InputError(f"{path}: column '{name}' holds objects (pickled arrays are refused)")
                self._shapes[name], self._fortran[name] = shape, fortran
                self.columns[name] = np.dtype((dtype, shape[1:])) if len(shape) > 1 else dtype
        except InputError:
            raise
        except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
            raise InputError(f"{path}: not a readable npz file ({exc})") from None

    def close(self) -> None:
        self._zip.close()

    def n_rows(self) -> int:
        lengths = {name: shape[0] if shape else None for name, shape in self._shapes.items()}
        if not lengths:
            raise InputError(f"{self.label}: holds no columns")
        first = next(iter(lengths))
        for name, n in lengths.items():
            if n is None:
                raise InputError(f"{self.label}: column '{name}' is a scalar, not one value per track")
            if n != lengths[first]:
                raise InputError(
                    f"{self.label}: column '{name}' has {n} rows, '{first}' has {lengths[first]}"
                )
        return int(lengths[first])

    def read(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        self.require(names)
        arrays = open_npz(self.path)
        return {n: arrays[n] for n in names}

    def iterate(self, names: Sequence[str], step: int) -> Iterator[dict[str, np.ndarray]]:
        self.require(names)
        n = self.n_rows()
        handles, whole = {}, {}
        try:
            for name in names:
                if (
                    self._fortran[name] and len(self._shapes[name]) > 1
                ):  # rows are not contiguous: read it whole
                    whole[name] = self.read([name])[name]
                    continue
                handles[name] = self._zip.open(name + ".npy")
                _npy_header(handles[name])
            for start in range(0, n, step):
                rows = min(step, n - start)
                chunk = {}
                for name in names:
                    if name in whole:
                        chunk[name] = whole[name][start : start + rows]
                        continue
                    dtype = self.columns[name]
                    data = handles[name].read(rows * dtype.itemsize)
                    if len(data) != rows * dtype.itemsize:
                        raise InputError(f"{self.label}: column '{name}' is truncated")
                    chunk[name] = np.frombuffer(data, _base(dtype)).reshape(rows, *dtype.shape)
                yield chunk
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise InputError(f"{self.label}: not a readable npz file ({exc})") from None
        finally:
            for handle in handles.values():
                handle.close()


def _base(dtype: np.dtype) -> np.dtype:
    """The element dtype of a (possibly fixed-size array) column dtype."""
    return dtype.base if dtype.subdtype else dtype


def _npy_header(handle) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of an .npy stream, leaving it at the start of the data."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    return np.lib.format.read_array_header_2_0(handle)


class RootTable(Table):
    """A ROOT TTree read with uproot; a branch that is not one number (or a fixed-size array) per row is
    listed with dtype None."""

    def __init__(self, path: Path, tree: str | None):
        uproot = require_uproot()
        self.path = path
        try:
            self._file = uproot.open(path)
        except Exception as exc:  # noqa: BLE001 - any failure to open means a bad file
            raise InputError(f"{path}: not a readable ROOT file ({type(exc).__name__}: {exc})") from None
        trees = self._file.keys(filter_classname="TTree", cycle=False, recursive=True)
        others = [k for k, c in self._file.classnames(cycle=False).items() if "RNTuple" in c]
        if not trees and others:
            self._file.close()
            raise InputError(
                f"{path}: holds RNTuples ({', '.join(others)}), not TTrees; only TTrees are read"
            )
        if tree is None:
            if len(trees) != 1:
                self._file.close()
                listed = ", ".join(trees) if trees else "none"
                raise InputError(f"{path}: choose the tree with --tree (trees in the file: {listed})")
            tree = trees[0]
        if tree not in trees:
            self._file.close()
            raise InputError(f"{path}: no tree '{tree}' (trees in the file: {', '.join(trees) or 'none'})")
        self.tree_name, self.label = tree, f"{path}:{tree}"
        self._tree = self._file[tree]
        self.columns = {}
        self.unsupported: dict[str, str] = {}
        for name in self._tree.keys(recursive=False):
            interpretation = self._tree[name].interpretation
            dtype = getattr(interpretation, "to_dtype", None)
            if type(interpretation).__name__ == "AsDtype" and dtype is not None:
                self.columns[name] = np.dtype(dtype).newbyteorder("=")
            else:
                self.columns[name] = None
                self.unsupported[name] = self._tree[name].typename

    def close(self) -> None:
        self._file.close()

    def require(self, names: Iterable[str], describe=None, hint: str = "") -> None:
        names = list(names)
        super().require(names, describe, hint)
        bad = [n for n in names if self.columns[n] is None]
        if bad:
            raise InputError(
                f"{self.label}: branch {bad[0]} is {self.unsupported[bad[0]]}, not one number per track"
            )

    def n_rows(self) -> int:
        return int(self._tree.num_entries)

    def _read(self, names: Sequence[str], start: int | None = None, stop: int | None = None) -> dict:
        try:
            return {
                n: self._tree[n]
                .array(library="np", entry_start=start, entry_stop=stop)
                .astype(_base(self.columns[n]))
                for n in names
            }
        except Exception as exc:  # noqa: BLE001 - a basket that cannot be read means a bad file
            raise InputError(f"{self.label}: cannot read ({type(exc).__name__}: {exc})") from None

    def read(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        self.require(names)
        return self._read(names)

    def iterate(self, names: Sequence[str], step: int) -> Iterator[dict[str, np.ndarray]]:
        self.require(names)
        n = self.n_rows()
        for start in range(0, n, step):
            yield self._read(names, start, min(n, start + step))


def open_table(path: str | os.PathLike, tree: str | None = None, option: str = "--data") -> Table:
    """Open an npz file or a ROOT file's tree (``tree``: None picks a file's only tree); InputError if unreadable."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder, expected a .npz or .root file")
    if file_format(path, option) == "root":
        return RootTable(path, tree)
    if tree:
        raise InputError(f"--tree {tree}: goes with a ROOT file, but {path} is an npz file")
    return NpzTable(path)


# ---------------------------------------------------------------- writing


def output_schema_problem(name: str, dtype: np.dtype, fmt: str) -> str | None:
    """Why a column of ``dtype`` cannot be written to a ``fmt`` file (None when it can)."""
    base = _base(dtype)
    if base.hasobject:
        return "holds objects"
    if fmt == "root" and (base.kind not in _ROOT_KINDS or base == np.float16):
        return f"has type {base}, which ROOT branches do not hold"
    if fmt == "npz" and base.kind not in _ROOT_KINDS + "SU":
        return f"has type {base}"
    return None


def write_table(
    path: str | os.PathLike,
    chunks: Iterable[Mapping[str, np.ndarray]],
    schema: Mapping[str, np.dtype],
    n_rows: int,
    tree: str = DEFAULT_TREE,
) -> Path:
    """Write ``chunks`` (dicts of the ``schema`` columns, in row order, ``n_rows`` rows in all) atomically.

    npz: each column is streamed to its own temp .npy file, then the archive is assembled from them (memory
    holds one chunk); ROOT: one TTree ``tree`` grown by one basket per chunk. Either way ``path`` appears
    only when every chunk is written; a failure leaves nothing.
    """
    path = Path(path)
    fmt = file_format(path)
    for name, dtype in schema.items():
        problem = output_schema_problem(name, dtype, fmt)
        if problem:
            raise InputError(f"{path}: column '{name}' {problem}, so it cannot be written to a .{fmt} file")
    if fmt == "root":
        uproot = require_uproot()
        with atomic_path(path) as tmp:
            out = uproot.recreate(tmp)
            try:
                out.mktree(tree, {k: (_base(d), d.shape) if d.subdtype else d for k, d in schema.items()})
                written = 0
                for chunk in chunks:
                    out[tree].extend({k: np.ascontiguousarray(chunk[k]) for k in schema})
                    written += len(next(iter(chunk.values())))
            finally:
                out.close()
            _check_count(path, written, n_rows)
        return path
    with temp_dir_for(path) as staging, atomic_path(path) as tmp:
        files = {}
        try:
            for i, (name, dtype) in enumerate(schema.items()):
                files[name] = open(staging / f"{i}.npy", "wb")
                header = {"descr": np.lib.format.dtype_to_descr(_base(dtype)),
                          "fortran_order": False, "shape": (n_rows, *dtype.shape)}  # fmt: skip
                np.lib.format.write_array_header_2_0(files[name], header)
            written = 0
            for chunk in chunks:
                for name, dtype in schema.items():
                    files[name].write(np.ascontiguousarray(chunk[name], _base(dtype)).tobytes())
                written += len(next(iter(chunk.values())))
        finally:
            for handle in files.values():
                handle.close()
        _check_count(path, written, n_rows)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for i, name in enumerate(schema):
                archive.write(staging / f"{i}.npy", arcname=name + ".npy")
    return path


def _check_count(path: Path, written: int, expected: int) -> None:
    if written != expected:
        raise RuntimeError(f"{path}: {written} rows written, {expected} expected")


def save_columns(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], tree: str = DEFAULT_TREE) -> Path:
    """Write whole columns to an npz file or a ROOT tree (by the extension), atomically."""
    if file_format(path) == "npz":
        return save_npz(path, arrays)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    n = len(next(iter(arrays.values())))
    schema = {k: np.dtype((v.dtype, v.shape[1:])) if v.ndim > 1 else v.dtype for k, v in arrays.items()}
    return write_table(path, [arrays], schema, n, tree)


def to_file_names(arrays: Mapping[str, np.ndarray], columns: ColumnMap) -> dict[str, np.ndarray]:
    """Contract columns renamed to the file's names, P converted to the file's unit (for writers)."""
    out = {}
    for key, value in arrays.items():
        if key == "P":
            value = (np.asarray(value, np.float64) * columns.p_per_gev).astype(np.asarray(value).dtype)
        out[columns.name(key) if key in COLUMNS else key] = value
    return out


# ---------------------------------------------------------------- calibration samples


@dataclass(frozen=True)
class SampleSource:
    """Where one particle's calibration sample is: ``data`` is a folder of rich_{particle}_{sample}.npz (or
    .root) files, or one .npz or .root file; a file name and ``tree`` may hold {particle} and {sample}."""

    data: str
    tree: str | None = None
    columns: ColumnMap = ColumnMap()

    def __str__(self) -> str:
        return self.data + (f" (tree {self.tree})" if self.tree else "")

    @property
    def is_file(self) -> bool:
        """True when ``data`` names one .npz or .root file (pattern) rather than a folder."""
        return Path(self.data).suffix.lower().lstrip(".") in FORMATS

    def depends_on(self, placeholder: str) -> bool:
        """Whether different particles (``{particle}``) or samples (``{sample}``) get different files or trees."""
        return not self.is_file or placeholder in self.data or placeholder in (self.tree or "")

    def locate(self, particle: str, sample: str) -> tuple[Path, str | None]:
        """The file, and for ROOT the tree (None: the file's only one), of one particle's sample."""
        check_particle(particle)
        if self.is_file:
            return Path(_fill(self.data, particle, sample)), _fill(self.tree, particle, sample)
        if Path(self.data).exists() and not Path(self.data).is_dir():
            raise InputError(f"--data {self.data}: expected a folder of samples, a .npz or a .root file")
        npz = sample_path(self.data, particle, sample)
        root = npz.with_suffix(".root")
        if root.exists() and (self.tree or not npz.exists()):
            return root, _fill(self.tree, particle, sample)
        if self.tree:
            raise InputError(f"{root}: file not found (--tree reads ROOT files)")
        return require_sample(npz), None

    def open(self, particle: str, sample: str) -> Table:
        """The table holding one particle's sample."""
        path, tree = self.locate(particle, sample)
        return open_table(path, tree)

    def require(self, particle: str, sample: str) -> Path:
        """The sample's file after checking that it opens and has every contract column; InputError naming
        the file, tree and missing branch or column otherwise."""
        with self.open(particle, sample) as table:
            table.require([self.columns.name(c) for c in COLUMNS], self._describe, MAPPING_HINT)
            return table.path

    def load(self, particle: str, sample: str) -> RichSample:
        """Read and validate one particle's sample (contract names, P in GeV)."""
        with self.open(particle, sample) as table:
            names = [self.columns.name(c) for c in COLUMNS]
            table.require(names, self._describe, MAPPING_HINT)
            arrays = table.read(names)
            where = table.label
        cols = {c: arrays[self.columns.name(c)] for c in COLUMNS}
        if np.issubdtype(cols["P"].dtype, np.number):
            cols["P"] = self.columns.p_to_gev(cols["P"])
        return sample_from_arrays(cols, table.path, where)

    def _describe(self, name: str) -> str:
        column = next((c for c in COLUMNS if self.columns.name(c) == name), name)
        return self.columns.describe(column)


def _fill(text: str | None, particle: str, sample: str) -> str | None:
    """``text`` with {particle} and {sample} replaced."""
    if text is None:
        return None
    return text.replace("{particle}", particle).replace("{sample}", sample)


def as_source(data: str | os.PathLike | SampleSource) -> SampleSource:
    """A SampleSource for a plain folder (or ROOT file) path; a SampleSource is returned as it is."""
    return data if isinstance(data, SampleSource) else SampleSource(str(data))


def add_source_options(ap) -> None:
    """--tree, --columns and --p-unit of the commands that read calibration samples."""
    ap.add_argument(
        "--tree",
        default=None,
        help="with ROOT input: the tree (may hold {particle} and {sample}); default: the file's only tree",
    )
    add_column_options(ap)


def make_source(data: str, tree: str | None = None, columns: str | None = None, p_unit: str | None = None):
    """A SampleSource from option values (``columns``: --columns text or mapping file; ``p_unit``: GeV or MeV)."""
    return SampleSource(str(data), tree or None, ColumnMap.parse(columns or None, p_unit or None))


def source_from_args(args) -> SampleSource:
    """The SampleSource of parsed --data, --tree, --columns and --p-unit."""
    return make_source(args.data, args.tree, args.columns, args.p_unit)


def require_per(source: SampleSource, placeholder: str, why: str) -> None:
    """InputError unless ``source`` gives each particle / sample its own file or tree (``placeholder``)."""
    if not source.depends_on(placeholder):
        raise InputError(f"--data {source.data}: {why}: put {placeholder} in the file name or in --tree")
