"""Add generated RICH PID to a file of tracks: python -m calogan.rich.generate --checkpoint CK --tracks FILE --out FILE.

The use the generators are for: a simulated sample's tracks (P, eta, nTracks per track) get the five DLLs that
the trained models draw for them. ``--checkpoint CK`` applies one particle's model to every track;
``--run-dir RUN`` with ``--particle P`` takes RUN/P/checkpoints/best.pt (else last.pt), and with
``--particle-column NAME`` each track gets the model of its own type (the column holds PDG ids, sign ignored,
or particle names). ``--tracks`` is an npz file or a ROOT file (``--tree``); ``--columns`` and ``--p-unit``
name its P, ETA and NTRACKS columns and the unit of P (calogan.rich.io).

The output (``--out``, .npz or .root by its extension) holds every input column, unchanged and in the input's
row order, then RichDLLe, RichDLLmu, RichDLLk, RichDLLp, RichDLLbt (float32; renamed with ``--columns
RichDLLk=NAME``); a track drawn without RICH information has -999 in all five, with the per-(P, eta)
probability each checkpoint stores (calogan.rich.data.fit_no_rich_table). The file is processed in chunks of
``--chunk-size`` tracks, so memory holds one chunk, and written atomically: on any error (a missing column
or branch, NaN/Inf or P <= 0 in an input, an unknown particle type) nothing is written and the command exits
2 with one line naming the problem.

``--backend eager`` runs the checkpoint's torch model (``RichModel.generate``); ``--backend onnx`` first
exports it in memory with calogan.rich.export (parity-checked) and runs it with onnxruntime. Both draw the
same noise and the same no-RICH uniforms from ``--seed``, so they give the same DLLs (within the export's
1e-4 parity); a result is reproducible for a given seed and chunk size.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from calogan.core import options
from calogan.core.errors import InputError
from calogan.core.runtime import progress_disabled, run_cli
from calogan.rich import DLL_COLUMNS, INPUT_COLUMNS, PARTICLES, SENTINEL
from calogan.rich.data import check_particle, no_rich_probability
from calogan.rich.evaluate import run_checkpoints
from calogan.rich.io import (
    DEFAULT_TREE,
    ColumnMap,
    RootTable,
    Table,
    add_column_options,
    file_format,
    open_table,
    write_table,
)
from calogan.rich.models import RichModel, load_rich_model

#: PDG id (absolute value) of each particle with a model
PDG_IDS = {"electron": 11, "muon": 13, "pion": 211, "kaon": 321, "proton": 2212}
BACKENDS = ("eager", "onnx")
#: tracks per chunk: the unit of reading, generating and writing (memory holds about one chunk)
DEFAULT_CHUNK = 262_144
#: tracks per onnxruntime call within a chunk (faster than one call per chunk)
ONNX_BATCH = 16_384


class ParticleGenerator:
    """One particle's model on one backend: raw inputs (n, 3) = P [GeV], ETA, NTRACKS -> (n, 5) DLLs with -999 rows."""

    def __init__(self, model: RichModel, backend: str = "eager", threads: int | None = None, label: str = ""):
        self.model, self.session = model, None
        if backend == "onnx":
            from calogan.ecal.export import require_onnx
            from calogan.rich.export import OUTPUT_NAME, export_model

            require_onnx()
            import onnxruntime as ort

            data, _, _ = export_model(model, "onnx", label, label)
            sess_options = ort.SessionOptions()
            if threads:
                sess_options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(data, sess_options, providers=["CPUExecutionProvider"])
            self.output_name = OUTPUT_NAME

    def __call__(self, inputs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """DLLs for float32 inputs; noise and the no-RICH uniforms come from ``rng`` (same draws on both backends)."""
        noise = rng.standard_normal((len(inputs), self.model.noise_dim), dtype=np.float32)
        uniform = rng.random(len(inputs))
        if self.session is not None:  # in cache-sized batches: the graph's float64 steps are memory-bound
            dlls = np.empty((len(inputs), len(DLL_COLUMNS)), np.float32)
            for s in range(0, len(inputs), ONNX_BATCH):
                feed = {"inputs": inputs[s : s + ONNX_BATCH], "noise": noise[s : s + ONNX_BATCH]}
                dlls[s : s + ONNX_BATCH] = self.session.run([self.output_name], feed)[0]
        else:
            dlls = self.model.generate(inputs, noise=noise, no_rich=False)
        dlls[uniform < no_rich_probability(self.model.no_rich_table, inputs)] = SENTINEL
        return dlls


def particle_codes(values: np.ndarray, where: str) -> np.ndarray:
    """Index into PARTICLES of each track's type (PDG id, sign ignored, or particle name); InputError naming
    the values no model covers."""
    values = np.asarray(values)
    codes = np.full(len(values), -1, np.int64)
    if values.dtype.kind in "US":
        names = np.char.lower(np.char.strip(values.astype(str)))
        for k, name in enumerate(PARTICLES):
            codes[names == name] = k
        known = ", ".join(PARTICLES)
    elif values.dtype.kind in "iuf" and values.ndim == 1:
        ids = np.abs(values.astype(np.float64))
        for k, name in enumerate(PARTICLES):
            codes[ids == PDG_IDS[name]] = k
        known = ", ".join(f"{PDG_IDS[p]} ({p})" for p in PARTICLES)
    else:
        raise InputError(
            f"{where}: holds {values.dtype} {values.shape[1:]}, not one PDG id or particle name per track"
        )
    bad = codes < 0
    if bad.any():
        unknown = np.unique(values[bad])
        shown = ", ".join(str(v) for v in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise InputError(
            f"{where}: {int(bad.sum())} tracks of types no model covers ({shown}); known: {known}"
        )
    return codes


def count_particles(table: Table, column: str, chunk_size: int) -> dict[str, int]:
    """Tracks of each particle in ``column`` (one pass over that column only); InputError for unknown types."""
    counts = np.zeros(len(PARTICLES), np.int64)
    for chunk in table.iterate([column], chunk_size):
        counts += np.bincount(
            particle_codes(chunk[column], f"{table.label}: column {column}"), minlength=len(PARTICLES)
        )
    return {p: int(c) for p, c in zip(PARTICLES, counts) if c}


def track_inputs(chunk: Mapping[str, np.ndarray], columns: ColumnMap, where: str, start: int) -> np.ndarray:
    """(n, 3) float32 P [GeV], ETA, NTRACKS of a chunk; InputError naming a column with NaN/Inf, or P <= 0."""
    parts = []
    for column in INPUT_COLUMNS:
        name = columns.name(column)
        a = np.asarray(chunk[name])
        if a.ndim != 1 or a.dtype.kind not in "iuf":
            raise InputError(
                f"{where}: column {columns.describe(column)} must hold one number per track, got {a.dtype} {a.shape[1:]}"
            )
        a = columns.p_to_gev(a) if column == "P" else a
        bad = ~np.isfinite(a) | ((a <= 0) if column == "P" else False)
        if bad.any():
            what = "NaN/Inf" + (" or P <= 0" if column == "P" else "")
            raise InputError(
                f"{where}: column {columns.describe(column)} holds {what} (first at row {start + int(np.argmax(bad))})"
            )
        parts.append(a)
    return np.column_stack(parts).astype(np.float32)


def generated_chunks(
    table: Table,
    names: Sequence[str],
    generators: Mapping[str, ParticleGenerator],
    columns: ColumnMap,
    particle_column: str | None,
    seed: int,
    chunk_size: int,
    counts: dict,
    progress: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Each chunk of the input's columns ``names`` plus the five generated DLL columns; ``counts`` gathers
    the tracks and the -999 tracks generated."""
    out_names = [columns.name(c) for c in DLL_COLUMNS]
    only = next(iter(generators)) if particle_column is None else None
    bar = tqdm(
        total=table.n_rows(),
        unit="track",
        unit_scale=True,
        desc="rich generate",
        disable=progress_disabled(progress),
    )
    start = 0
    with bar:
        for index, chunk in enumerate(table.iterate(names, chunk_size)):
            n = len(chunk[names[0]])
            inputs = track_inputs(chunk, columns, table.label, start)
            dlls = np.empty((n, len(DLL_COLUMNS)), np.float32)
            if only is not None:  # the draws of a track do not depend on how its type was given
                dlls[:] = generators[only](
                    inputs, np.random.default_rng([seed, index, PARTICLES.index(only)])
                )
            else:
                codes = particle_codes(chunk[particle_column], f"{table.label}: column {particle_column}")
                for k, particle in enumerate(PARTICLES):
                    rows = np.flatnonzero(codes == k)
                    if len(rows):
                        dlls[rows] = generators[particle](
                            inputs[rows], np.random.default_rng([seed, index, k])
                        )
            counts["tracks"] += n
            counts["no_rich"] += int((dlls[:, 0] == SENTINEL).sum())
            start += n
            bar.update(n)
            yield {**chunk, **{name: dlls[:, j] for j, name in enumerate(out_names)}}


def generate_file(
    tracks: str | Path,
    out: str | Path,
    models: Mapping[str, RichModel],
    tree: str | None = None,
    columns: ColumnMap | None = None,
    particle_column: str | None = None,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    backend: str = "eager",
    threads: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write ``out``: every column of ``tracks`` plus the generated DLLs (module docstring); returns a summary.

    ``models`` maps particle -> model; without ``particle_column`` it holds exactly one, used for every track.
    Everything that can be checked before generating is checked first (InputError, nothing written).
    """
    columns = columns or ColumnMap()
    out = options.check_output_file(out, overwrite, "--out")
    fmt = file_format(out, "--out")
    options.check_int("--chunk-size", chunk_size, 1)
    if backend not in BACKENDS:
        raise InputError(f"--backend: unknown backend '{backend}' (use {' or '.join(BACKENDS)})")
    if particle_column is None and len(models) != 1:
        raise InputError("one model for every track, or --particle-column to choose one per track")
    if Path(tracks).resolve() == out.resolve():
        raise InputError(f"--out {out}: is the --tracks file (write the output to a new file)")
    with open_table(tracks, tree, "--tracks") as table:
        names = list(table.columns)
        table.require(names)  # every input column is copied: each must be readable as one value per track
        needed = [columns.name(c) for c in INPUT_COLUMNS] + ([particle_column] if particle_column else [])
        table.require(
            needed, lambda n: columns.describe(next((c for c in INPUT_COLUMNS if columns.name(c) == n), n))
        )
        n_rows = table.n_rows()
        out_names = [columns.name(c) for c in DLL_COLUMNS]
        clash = [n for n in out_names if n in table.columns]
        if clash:
            raise InputError(
                f"{table.label}: already has a column {clash[0]}; name the generated one with --columns"
                f" {next(c for c in DLL_COLUMNS if columns.name(c) == clash[0])}=NAME"
            )
        present = {}
        if particle_column:
            present = count_particles(table, particle_column, chunk_size)
            missing = [p for p in present if p not in models]
            if missing:
                raise InputError(
                    f"{table.label}: column {particle_column} has {present[missing[0]]} {missing[0]} tracks,"
                    f" but there is no {missing[0]} model"
                )
        use = {p: m for p, m in models.items() if not particle_column or p in present}
        torch_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            generators = {p: ParticleGenerator(m, backend, threads, f"{p} model") for p, m in use.items()}
            schema = dict(table.columns)
            schema.update({name: np.dtype(np.float32) for name in out_names})
            counts = {"tracks": 0, "no_rich": 0}
            out_tree = table.tree_name if isinstance(table, RootTable) else DEFAULT_TREE
            begin = time.perf_counter()
            chunks = generated_chunks(
                table, names, generators, columns, particle_column, seed, chunk_size, counts, progress
            )
            write_table(out, chunks, schema, n_rows, out_tree)
            seconds = time.perf_counter() - begin
        finally:
            torch.set_num_threads(torch_threads)
    summary = {
        "tracks": counts["tracks"],
        "no_rich_tracks": counts["no_rich"],
        "particles": present if particle_column else {p: counts["tracks"] for p in use},
        "backend": backend,
        "seconds": seconds,
        "tracks_per_second": counts["tracks"] / seconds if seconds > 0 else None,
        "out": str(out),
        "format": fmt,
    }
    return summary


def load_models(
    checkpoint: str | None, run_dir: str | None, particle: str | None, particle_column: str | None
) -> dict[str, RichModel]:
    """The models the options name, by particle (InputError for a bad combination or a missing checkpoint)."""
    if checkpoint:
        if run_dir or particle or particle_column:
            raise InputError(
                "--checkpoint: one particle's model for every track; --particle and --particle-column go with --run-dir"
            )
        model = load_rich_model(checkpoint, device="cpu")
        return {model.particle: model}
    if not run_dir:
        raise InputError("give --checkpoint CK, or --run-dir RUN with --particle P or --particle-column NAME")
    if bool(particle) == bool(particle_column):
        raise InputError("--run-dir: needs exactly one of --particle P and --particle-column NAME")
    found = run_checkpoints(run_dir, check_particle(particle) if particle else "all")
    return {p: load_rich_model(path, device="cpu") for p, path in found.items() if path is not None}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI wrapper of generate_file()."""
    ap = options.ArgumentParser(prog="python -m calogan.rich.generate", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="one particle's RICH checkpoint, applied to every track")
    ap.add_argument("--run-dir", help="the folder of `python -m calogan.rich.train --particle all --run-dir`")
    ap.add_argument("--particle", help=f"with --run-dir: every track is a {' | '.join(PARTICLES)}")
    ap.add_argument(
        "--particle-column",
        help="with --run-dir: the column holding each track's type (PDG id or particle name)",
    )
    ap.add_argument("--tracks", required=True, help="the tracks: an .npz file or a .root file (with --tree)")
    ap.add_argument(
        "--tree", default=None, help="the tree of a ROOT --tracks file (default: the file's only tree)"
    )
    add_column_options(ap, "the tracks file's")
    ap.add_argument(
        "--out", required=True, help="output file, .npz or .root (the input's tree name, else DecayTree)"
    )
    ap.add_argument("--seed", type=options.seed, default=0)
    ap.add_argument(
        "--backend",
        type=options.choice(*BACKENDS),
        default="eager",
        help="eager (torch) or onnx (onnxruntime, onnx extra)",
    )
    ap.add_argument(
        "--chunk-size",
        type=options.count(1),
        default=DEFAULT_CHUNK,
        help=f"tracks per chunk (default {DEFAULT_CHUNK})",
    )
    ap.add_argument(
        "--threads",
        type=options.count(1),
        default=None,
        help="CPU threads of torch / onnxruntime (default: theirs)",
    )
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = ap.parse_args(argv)
    columns = ColumnMap.parse(args.columns, args.p_unit)
    options.check_output_file(args.out, args.overwrite, "--out")
    file_format(args.out, "--out")
    models = load_models(args.checkpoint, args.run_dir, args.particle, args.particle_column)
    s = generate_file(
        args.tracks, args.out, models, args.tree, columns, args.particle_column, args.seed, args.chunk_size,
        args.backend, args.threads, args.overwrite,
    )  # fmt: skip
    per = " (" + ", ".join(f"{p} {n}" for p, n in s["particles"].items() if n) + ")" if s["tracks"] else ""
    print(f"wrote {s['out']}: {s['tracks']} tracks{per}, {s['no_rich_tracks']} without RICH (-999);"
          f" {s['tracks_per_second'] or 0:.0f} tracks/s ({s['backend']})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
