"""Peak memory and wall time of the Codalab scoring program on hostile uploads (docs/submission.md).

``python benchmarks/bench_hostile.py --ref data [--json FILE]``

Builds each hostile upload in a temp folder, runs ``python -m calogan.codalab.score INPUT_DIR OUTPUT_DIR`` on
it in its own process (INPUT_DIR/ref holds links to REF's solution files and embedder) and reports the exit
status, the first stderr line, the wall time and the peak RSS of that process (its VmHWM). The builders
are also the fixtures of tests/test_reliability.py, at small sizes.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

NAMES = ("data_val_prediction.npz", "data_test_prediction.npz")


def entry_flood(path: Path, entries: int) -> Path:
    """A zip of ``entries`` empty stored entries (zip64 end records beyond 65,535), written without zipfile."""
    local = struct.Struct("<4s5H3L2H")
    central = struct.Struct("<4s6H3L5H2L")
    with open(path, "wb") as out, tempfile.TemporaryFile() as directory:
        for i in range(entries):
            name = f"e{i:07d}".encode()
            offset = out.tell()
            out.write(local.pack(b"PK\x03\x04", 20, 0, 0, 0, 0x21, 0, 0, 0, len(name), 0) + name)
            directory.write(central.pack(b"PK\x01\x02", 20, 20, 0, 0, 0, 0x21, 0, 0, 0, len(name), 0, 0, 0, 0, 0,
                                         offset) + name)  # fmt: skip
        cd_offset, cd_size = out.tell(), directory.tell()
        directory.seek(0)
        while block := directory.read(1 << 22):
            out.write(block)
        if entries > 0xFFFF:
            record = out.tell()
            out.write(
                struct.pack(
                    "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, cd_size, cd_offset
                )
            )
            out.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, record, 1))
            entries = 0xFFFF
        out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, cd_size, cd_offset, 0))
    return path


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed npz of ``arrays`` in memory."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def zeros_npz(inner_bytes: int) -> bytes:
    """An npz whose EnergyDeposit.npy declares ``inner_bytes`` of float32 zeros, deflated (a nested bomb)."""
    n = inner_bytes // (900 * 4)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (n, 30, 30)}
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("EnergyDeposit.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            zero = bytes(1 << 22)
            left = n * 900 * 4
            while left > 0:
                member.write(zero[: min(left, len(zero))])
                left -= len(zero)
    return buf.getvalue()


def huge_header_npz(shape: tuple[int, ...]) -> bytes:
    """An npz whose EnergyDeposit.npy header declares ``shape`` of float32 over a 64-byte body."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("EnergyDeposit.npy", header.getvalue() + bytes(64))
    return buf.getvalue()


def results_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    """A results zip of the given {name: bytes} members."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def filled_predictions(n: dict[str, int], value, dtype) -> dict[str, bytes]:
    """Both prediction files filled with ``value`` as ``dtype`` (N events each)."""
    return {name: npz_bytes({"EnergyDeposit": np.full((n[s], 30, 30), value, dtype)})
            for s, name in zip(("val", "test"), NAMES)}  # fmt: skip


def extreme_predictions(n: dict[str, int]) -> dict[str, bytes]:
    """Both prediction files with finite float32 cells of 1e37 to 1e38 (random, so deflate cannot shrink them)."""
    rng = np.random.default_rng(0)
    return {name: npz_bytes({"EnergyDeposit": (rng.random((n[s], 30, 30), np.float32) + 0.1) * np.float32(9e37)})
            for s, name in zip(("val", "test"), NAMES)}  # fmt: skip


def hostile_uploads(folder: Path, n: dict[str, int], scale: float = 1.0) -> dict[str, Callable[[], Path]]:
    """name -> builder of each hostile upload (``scale`` < 1 shrinks the bombs for tests)."""
    gib = int((1 << 30) * scale)
    return {
        "3 million empty entries": lambda: entry_flood(folder / "flood.zip", int(3_000_000 * scale)),
        "nested bomb: npz members declaring 1 GiB of zeros each": lambda: results_zip(
            folder / "nested.zip", {name: zeros_npz(gib) for name in NAMES}
        ),
        "npy header declaring 1e9 x 30 x 30 float32 over 64 bytes": lambda: results_zip(
            folder / "header.zip", {name: huge_header_npz((10**9, 30, 30)) for name in NAMES}
        ),
        "entry names with a newline and an escape sequence": lambda: results_zip(
            folder / "names.zip", {NAMES[0]: b"", "evil\n\x1b[31mname": b""}
        ),
        "float64 1e300 (inf after float32 conversion)": lambda: results_zip(
            folder / "f64.zip", filled_predictions(n, 1e300, np.float64)
        ),
        "complex values with NaN": lambda: results_zip(
            folder / "complex.zip", filled_predictions(n, complex(np.nan, 1.0), np.complex64)
        ),
        "finite extreme showers (1e38 per cell, incompressible)": lambda: results_zip(
            folder / "extreme.zip", extreme_predictions(n)
        ),
    }


#: Runs the scoring program and reports its own peak RSS (VmHWM of the process after exec) on stderr's last
#: line; a parent's ``ru_maxrss`` would also count the pages the child inherited at fork from this process.
_RUNNER = (
    "import atexit, runpy, sys\n"
    "def peak():\n"
    "    line = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0]\n"
    "    sys.stderr.write('PEAK ' + line.split()[1] + '\\n')\n"
    "atexit.register(peak)\n"
    "sys.argv = ['score', *sys.argv[1:]]\n"
    "runpy.run_module('calogan.codalab.score', run_name='__main__')\n"
)


def run_scorer(upload: Path, ref: Path, work: Path) -> dict:
    """Run the scoring program on ``upload``; exit status, first stderr line, wall time, peak RSS."""
    inp = work / "input"
    (inp / "res").mkdir(parents=True, exist_ok=True)
    (inp / "ref").mkdir(exist_ok=True)
    for name in ("data_val_solution.npz", "data_test_solution.npz", "embedder.safetensors"):
        if not (inp / "ref" / name).exists():
            (inp / "ref" / name).symlink_to((ref / name).resolve())
    for old in (inp / "res").iterdir():
        old.unlink()
    (inp / "res" / "submission.zip").symlink_to(upload.resolve())
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(inp), str(work / "output")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines = proc.stderr.splitlines()
    peak_kib = int(lines.pop()[len("PEAK ") :]) if lines and lines[-1].startswith("PEAK ") else -1
    return {
        "exit": proc.returncode,
        "stderr_lines": len(lines),
        "message": (lines or [""])[0][:160],
        "seconds": round(time.perf_counter() - start, 2),
        "peak_rss_mb": round(peak_kib / 1024, 1),
        "upload_mb": round(upload.stat().st_size / 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="data", help="folder with data_{val,test}_solution.npz and embedder")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    ref = Path(args.ref)
    n = {s: int(np.load(ref / f"data_{s}_solution.npz")["ParticlePDG"].shape[0]) for s in ("val", "test")}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, build in hostile_uploads(tmp, n).items():
            upload = build()
            rows[name] = run_scorer(upload, ref, tmp / "work")
            upload.unlink()
            print(json.dumps({name: rows[name]}), flush=True)
    print(
        f"largest peak RSS: {max(r['peak_rss_mb'] for r in rows.values()):.0f} MB (N val {n['val']}, test {n['test']})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"n": n, "uploads": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
