"""Zips read as untrusted uploads: the central directory is checked before anything is extracted.

:func:`check_upload` refuses, with one :class:`InputError` line naming the zip and the problem: a file that is
not a readable zip, encrypted entries, names with a path (folders, ``..``, absolute or drive paths,
backslashes), symlink entries, duplicate names, missing or unexpected names, an entry whose declared size
exceeds its limit, a total beyond the total limit, a compression ratio beyond ``max_ratio`` (a zip bomb),
and local headers that disagree with the central directory or entries whose data overlap. Before the
central directory is parsed at all, the end-of-central-directory record (zip64 aware) must declare at most
``max_entries`` entries and a directory of at most :data:`MAX_DIRECTORY_BYTES`, so an archive of millions of
entries costs a few reads, not gigabytes. :func:`check_npz` adds, for an npz (a zip of npy arrays), that each
array's npy header declares exactly the bytes its entry holds (shape x itemsize, below the entry's limit)
before numpy allocates anything. :func:`extract_upload` then streams the wanted entries out with a size limit that does not trust the
declared sizes. The submission checker (``package --check``), ``evaluate`` and the Codalab scorer all read
zips through these two functions; prediction npz files (zips themselves) go through :func:`check_upload` too.
"""

from __future__ import annotations

import os
import re
import struct
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from calogan.core.errors import InputError, printable

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_MAX_ENTRY_BYTES",
    "DEFAULT_MAX_RATIO",
    "MAX_DIRECTORY_BYTES",
    "RATIO_FLOOR_BYTES",
    "check_npz",
    "check_upload",
    "extract_upload",
    "read_end_record",
    "read_npy_header",
]

#: Per-entry limit when the caller knows no better bound (1 GiB).
DEFAULT_MAX_ENTRY_BYTES = 1 << 30
#: Largest accepted uncompressed/compressed ratio of an entry: real showers deflate to ~60 %, zeros to ~0.1 %.
DEFAULT_MAX_RATIO = 100.0
#: Entries up to this size are not ratio-checked (a small constant prediction is a legal, poor submission).
RATIO_FLOOR_BYTES = 16 << 20
#: Most entries a zip may declare when the caller names no exact set (an npz of data holds a handful).
DEFAULT_MAX_ENTRIES = 64
#: Largest central directory read (bytes): thousands of entries with long names fit in it.
MAX_DIRECTORY_BYTES = 1 << 20
_CHUNK = 1 << 20
_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_S_IFMT, _S_IFLNK = 0o170000, 0o120000
_DRIVE = re.compile(r"^[A-Za-z]:")


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _shown(name: str) -> str:
    """An entry name as messages print it: control characters escaped."""
    return printable(name, limit=120)


def read_end_record(path: str | os.PathLike, label: str | None = None) -> tuple[int, int, int]:
    """(entries, central directory bytes, its offset) from a zip's end record, without reading the directory.

    Reads at most 64 KiB + 22 bytes from the end (the record and its comment), plus the zip64 record when the
    classic one is saturated. InputError when there is no end record or it points outside the file.
    """
    path = Path(path)
    label = label or str(path)
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        tail_len = min(size, _EOCD.size + 0xFFFF)
        handle.seek(size - tail_len)
        tail = handle.read(tail_len)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + _EOCD.size > len(tail):
            raise InputError(f"{label}: not a readable zip file (no end of central directory record)")
        _, _, _, _, entries, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
        if entries == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
            where = size - tail_len + at - _EOCD64_LOCATOR.size
            if where < 0:
                raise InputError(f"{label}: not a readable zip file (zip64 record missing)")
            handle.seek(where)
            sig, _, record_at, _ = _EOCD64_LOCATOR.unpack(handle.read(_EOCD64_LOCATOR.size))
            if sig != b"PK\x06\x07" or record_at + _EOCD64.size > size:
                raise InputError(f"{label}: not a readable zip file (zip64 record missing)")
            handle.seek(record_at)
            fields = _EOCD64.unpack(handle.read(_EOCD64.size))
            if fields[0] != b"PK\x06\x06":
                raise InputError(f"{label}: not a readable zip file (zip64 record missing)")
            entries, cd_size, cd_offset = fields[7], fields[8], fields[9]
    if cd_offset + cd_size > size:
        raise InputError(f"{label}: not a readable zip file (its directory points past the end of the file)")
    return int(entries), int(cd_size), int(cd_offset)


def _check_end_record(path: Path, label: str, max_entries: int) -> None:
    """Entry count and directory size from the end record, before zipfile parses the directory."""
    entries, cd_size, _ = read_end_record(path, label)
    if entries > max_entries:
        raise InputError(f"{label}: declares {entries} entries, more than the {max_entries} accepted")
    if cd_size > MAX_DIRECTORY_BYTES:
        raise InputError(
            f"{label}: a central directory of {_human(cd_size)}, more than the {_human(MAX_DIRECTORY_BYTES)} "
            "accepted"
        )


def _path_problem(name: str) -> str | None:
    if not name:
        return "an empty name"
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "an absolute path"
    if "\\" in name:
        return "a backslash in its name"
    parts = name.rstrip("/").split("/")
    if ".." in parts or "." in parts:
        return "a '..' or '.' path component"
    if "/" in name:
        return "a folder in its path"
    if any(not ch.isprintable() for ch in name):
        return "control characters in its name"
    return None


def _limit_for(limits: int | Mapping[str, int], name: str) -> int:
    if isinstance(limits, Mapping):
        return int(limits.get(name, DEFAULT_MAX_ENTRY_BYTES))
    return int(limits)


def _check_local_headers(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], label: str) -> None:
    """Each local header must match its central entry, and no two entries' data may overlap."""
    fp = zf.fp
    spans = []
    for info in infos:
        fp.seek(info.header_offset)
        head = fp.read(zipfile.sizeFileHeader)
        if len(head) != zipfile.sizeFileHeader:
            raise InputError(f"{label}: entry '{_shown(info.filename)}' points past the end of the file")
        fields = struct.unpack(zipfile.structFileHeader, head)
        if fields[zipfile._FH_SIGNATURE] != zipfile.stringFileHeader:
            raise InputError(f"{label}: entry '{_shown(info.filename)}' has no local header (corrupt zip)")
        name_len, extra_len = fields[zipfile._FH_FILENAME_LENGTH], fields[zipfile._FH_EXTRA_FIELD_LENGTH]
        raw_name = fp.read(name_len)
        encoding = "utf-8" if fields[zipfile._FH_GENERAL_PURPOSE_FLAG_BITS] & 0x800 else "cp437"
        if raw_name.decode(encoding, "replace") != info.orig_filename:
            raise InputError(
                f"{label}: entry '{_shown(info.filename)}': the local header names another file (a disguised zip)"
            )
        local_size = fields[zipfile._FH_UNCOMPRESSED_SIZE]
        descriptor = fields[zipfile._FH_GENERAL_PURPOSE_FLAG_BITS] & 0x08
        if not descriptor and local_size not in (0xFFFFFFFF, info.file_size):
            raise InputError(
                f"{label}: entry '{_shown(info.filename)}': the local header declares {local_size} bytes, the central "
                f"directory {info.file_size} (a disguised zip)"
            )
        start = info.header_offset + zipfile.sizeFileHeader + name_len + extra_len
        spans.append((info.header_offset, start + info.compress_size, info.filename))
    spans.sort()
    for (_, end, name), (begin, _, other) in zip(spans, spans[1:]):
        if end > begin:
            raise InputError(f"{label}: entries '{_shown(name)}' and '{_shown(other)}' overlap (a zip bomb?)")
    if spans and spans[-1][1] > zf.start_dir:
        raise InputError(
            f"{label}: entry '{_shown(spans[-1][2])}' runs into the central directory (corrupt zip)"
        )


def check_upload(
    path: str | os.PathLike,
    expected_names: Iterable[str] | None = None,
    max_entry_bytes: int | Mapping[str, int] = DEFAULT_MAX_ENTRY_BYTES,
    max_total_bytes: int | None = None,
    max_ratio: float | None = DEFAULT_MAX_RATIO,
    label: str | None = None,
    max_entries: int | None = None,
) -> list[zipfile.ZipInfo]:
    """Check a zip's central directory (nothing is extracted); return its entries or raise one InputError line.

    ``expected_names``: the exact set of names the zip must hold, each at the root (None: any root names).
    ``max_entry_bytes``: the largest declared uncompressed size of one entry (an int, or per name).
    ``max_total_bytes``: the largest sum of declared sizes (default: the sum of the per-entry limits of the
    expected names, else unlimited beyond the per-entry limit). ``max_ratio``: the largest
    uncompressed/compressed ratio of an entry above :data:`RATIO_FLOOR_BYTES` (None: not checked).
    ``label``: how messages name the zip (default: its path). ``max_entries``: the most entries the end
    record may declare (default :data:`DEFAULT_MAX_ENTRIES`, checked before the directory is parsed).
    """
    path = Path(path)
    label = label or str(path)
    if not path.is_file():
        raise InputError(f"{label}: file not found")
    if expected_names is not None:
        expected_names = list(expected_names)
    if max_entries is None:  # a few entries too many are parsed, so that the message can name them
        max_entries = max(DEFAULT_MAX_ENTRIES, len(expected_names or ()))
    try:
        _check_end_record(path, label, max_entries)
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            _check_entries(infos, label, expected_names, max_entry_bytes, max_total_bytes, max_ratio)
            _check_local_headers(zf, infos, label)
    except zipfile.BadZipFile as exc:
        raise InputError(f"{label}: not a readable zip file ({exc})") from None
    except (OSError, EOFError, struct.error, ValueError) as exc:
        raise InputError(f"{label}: not a readable zip file (corrupt: {type(exc).__name__})") from None
    return infos


def _check_entries(
    infos: list[zipfile.ZipInfo],
    label: str,
    expected_names: Iterable[str] | None,
    max_entry_bytes: int | Mapping[str, int],
    max_total_bytes: int | None,
    max_ratio: float | None,
) -> None:
    expected = None if expected_names is None else list(dict.fromkeys(expected_names))
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        problem = _path_problem(name)
        if problem == "a folder in its path":
            raise InputError(
                f"{label}: entry '{_shown(name)}' is inside a folder; the files must be at the zip root"
            )
        if problem:
            raise InputError(
                f"{label}: entry '{_shown(name)}' has {problem}; the files must be plain names at the zip root"
            )
        if info.create_system == 3 and (info.external_attr >> 16) & _S_IFMT == _S_IFLNK:
            raise InputError(
                f"{label}: entry '{_shown(name)}' is a symbolic link; only plain files are accepted"
            )
        if info.flag_bits & 0x1:
            raise InputError(f"{label}: entry '{_shown(name)}' is encrypted; upload a plain zip")
        if name in seen:
            raise InputError(f"{label}: duplicate entry '{_shown(name)}' (each file may appear only once)")
        seen.add(name)
    if expected is not None:
        missing = [n for n in expected if n not in seen]
        if missing:
            has = ", ".join(_shown(n) for n in sorted(seen)[:5]) or "nothing"
            raise InputError(f"{label}: missing {', '.join(missing)} at the zip root (has: {has})")
        extra = sorted(seen - set(expected))
        if extra:
            raise InputError(
                f"{label}: unexpected entries {', '.join(_shown(n) for n in extra[:5])} (extra files; the zip must hold exactly "
                f"{' and '.join(expected)} at its root, nothing else)"
            )
    total = 0
    for info in infos:
        limit = _limit_for(max_entry_bytes, info.filename)
        if info.file_size > limit:
            raise InputError(
                f"{label}: entry '{_shown(info.filename)}' declares {_human(info.file_size)} uncompressed, more than "
                f"the {_human(limit)} it can hold"
            )
        if max_ratio is not None and info.file_size > RATIO_FLOOR_BYTES:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > max_ratio:
                raise InputError(
                    f"{label}: entry '{_shown(info.filename)}' expands {ratio:.0f}:1 ({_human(info.compress_size)} -> "
                    f"{_human(info.file_size)}), beyond the {max_ratio:.0f}:1 accepted (a zip bomb?)"
                )
        total += info.file_size
    if max_total_bytes is None and expected is not None:
        max_total_bytes = sum(_limit_for(max_entry_bytes, n) for n in expected)
    if max_total_bytes is not None and total > max_total_bytes:
        raise InputError(
            f"{label}: {_human(total)} uncompressed in all, more than the {_human(max_total_bytes)} accepted"
        )


def check_npz(
    path: str | os.PathLike,
    max_entry_bytes: int | Mapping[str, int] = DEFAULT_MAX_ENTRY_BYTES,
    max_total_bytes: int | None = None,
    max_ratio: float | None = DEFAULT_MAX_RATIO,
    label: str | None = None,
) -> list[zipfile.ZipInfo]:
    """:func:`check_upload` for an npz, then every array's npy header, before numpy allocates anything.

    Each ``.npy`` entry's header must be readable (no object dtype) and declare exactly the bytes the entry
    holds after its header (shape x itemsize = declared size - header size), so the array numpy allocates
    is never larger than the entry's checked size. Entries that are not ``.npy`` files are left to numpy.
    Returns the entries; a file that is not a zip at all is left to the npz reader (empty list).
    """
    path = Path(path)
    label = label or str(path)
    if not (path.is_file() and zipfile.is_zipfile(path)):
        return []
    infos = check_upload(path, None, max_entry_bytes, max_total_bytes, max_ratio, label)
    try:
        with zipfile.ZipFile(path) as zf:
            for info in infos:
                if info.filename.endswith(".npy"):
                    _check_npy_header(zf, info, label)
    except zipfile.BadZipFile as exc:
        raise InputError(f"{label}: not a readable npz file ({exc})") from None
    except (OSError, EOFError, struct.error) as exc:
        raise InputError(f"{label}: not a readable npz file (corrupt: {type(exc).__name__})") from None
    return infos


def read_npy_header(handle, label: str, key: str) -> tuple[tuple[int, ...], bool, object]:
    """(shape, fortran order, dtype) from the npy header at ``handle``'s position, which it moves past it."""
    import numpy as np  # here: the zip checks need no numpy

    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(handle)
        return np.lib.format.read_array_header_2_0(handle)
    except ValueError as exc:
        raise InputError(
            f"{label}: array '{_shown(key)}' has an unreadable npy header ({printable(str(exc), 120)})"
        ) from None


def _check_npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> None:
    """The npy header of ``info`` must declare exactly the bytes that follow it in the entry."""
    key = _shown(info.filename.removesuffix(".npy"))
    with zf.open(info) as handle:
        shape, _, dtype = read_npy_header(handle, label, info.filename.removesuffix(".npy"))
        header = handle.tell()
    if dtype.hasobject:
        raise InputError(f"{label}: array '{key}' holds Python objects (pickled data is refused)")
    count = 1
    for dim in shape:
        count *= int(dim)
    declared = count * dtype.itemsize
    if declared != info.file_size - header:
        raise InputError(
            f"{label}: array '{key}' declares shape {tuple(shape)} of {dtype} ({_human(declared)}) but its entry "
            f"holds {_human(max(info.file_size - header, 0))} (a corrupt or hostile file)"
        )


def extract_upload(
    path: str | os.PathLike,
    names: Iterable[str],
    dest: str | os.PathLike,
    expected_names: Iterable[str] | None = None,
    max_entry_bytes: int | Mapping[str, int] = DEFAULT_MAX_ENTRY_BYTES,
    max_total_bytes: int | None = None,
    max_ratio: float | None = DEFAULT_MAX_RATIO,
    label: str | None = None,
) -> dict[str, Path]:
    """:func:`check_upload`, then stream ``names`` into ``dest`` (same names); returns {name: path}.

    The copy stops with an InputError as soon as an entry yields more than its limit, whatever its header
    declares; a CRC mismatch or truncated data is an InputError too. A refused entry's partial file is removed.
    """
    path, dest = Path(path), Path(dest)
    label = label or str(path)
    names = list(names)
    expected = names if expected_names is None else list(expected_names)
    check_upload(path, expected, max_entry_bytes, max_total_bytes, max_ratio, label)
    out: dict[str, Path] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in names:
                limit = _limit_for(max_entry_bytes, name)
                target = dest / name
                written = 0
                try:
                    with zf.open(name) as src, open(target, "wb") as dst:
                        while block := src.read(_CHUNK):
                            written += len(block)
                            if written > limit:
                                raise InputError(
                                    f"{label}: entry '{_shown(name)}' expands beyond the {_human(limit)} it can hold"
                                )
                            dst.write(block)
                except BaseException:
                    target.unlink(missing_ok=True)
                    raise
                out[name] = target
    except zipfile.BadZipFile as exc:
        raise InputError(f"{label}: not a readable zip file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{label}: cannot be extracted ({type(exc).__name__}: {exc})") from None
    return out
