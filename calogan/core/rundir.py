"""Run set-up shared by every trainer (ECAL training, fine-tuning, RICH training): one meaning for each rule.

A trainer opens its run directory through :class:`RunSetup`, which decides, the same way for all three:

- **create**: a new run directory holding ``config.json`` (:meth:`RunSetup.start`);
- **refuse**: an existing run directory without ``--overwrite`` or ``--resume`` (exit 2, one line);
- **overwrite**: replace it, only when it is a calogan run directory (it holds ``config.json``);
- **resume**: ``--resume RUN_DIR`` continues the run in RUN_DIR from ``checkpoints/last.pt``
  (:meth:`RunSetup.resume`); an option given with it whose value differs from the run's recorded settings is
  refused with one line (:func:`changed_setting`), and the training data must be the same (sha256);
- **lock**: the run directory's lock (:mod:`calogan.core.locks`) is held from set-up to the end of the run,
  so a second writer exits 2 naming the holder; leaving the ``with`` block gives it back;
- **names**: a run named with ``--name`` is always a folder directly under ``runs/`` (:func:`run_path`);
- **time budget**: :func:`deadline` turns ``max_minutes`` into the engine's deadline (0: none).

The checkpoint vocabulary is the engine's (:class:`calogan.core.engine.EngineSettings`): ``checkpoint_every``
is the interval of the rolling ``last.pt``, ``keep_every`` the interval of the kept ``step_NNNNNN.pt`` files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from calogan.core import options
from calogan.core.engine import RunDirectory, dist_info
from calogan.core.errors import InputError
from calogan.core.runtime import torch_load_safe

__all__ = [
    "RUNS_FOLDER",
    "Requested",
    "RunSetup",
    "changed_setting",
    "check_run_path",
    "deadline",
    "run_path",
    "with_defaults",
]

#: The folder under which named runs live (``--name NAME`` writes ``runs/NAME``).
RUNS_FOLDER = Path("runs")

#: Options given on the command line that a resumed run must not change: option -> (config field, value).
Requested = Mapping[str, tuple[str, Any]]


def run_path(run_dir: str | os.PathLike | None, name: str = "", option: str = "--name") -> Path:
    """``run_dir`` when given, else ``runs/NAME``; NAME must be one plain folder name so it stays under runs/."""
    if name:
        options.check_name(option, name, under=f"{RUNS_FOLDER.as_posix()}/")
    if run_dir:
        return Path(run_dir)
    if not name:
        raise InputError(f"{option}: a run needs a name or a run directory")
    return RUNS_FOLDER / name


def check_run_path(
    path: str | os.PathLike, option: str, inputs: Iterable[str | os.PathLike | None] = ()
) -> Path:
    """Refuse, before any work, a run directory that is a file, not writable, or holds one of the inputs."""
    # contents=(): whether an existing run may be reused is RunSetup's decision, made when the run starts
    return options.check_output_dir(path, True, option, contents=(), inputs=inputs)


def deadline(max_minutes: float, start: float) -> float:
    """The ``time.perf_counter()`` value at which a budget of ``max_minutes`` from ``start`` is spent (0: none)."""
    return start + 60.0 * max_minutes if max_minutes > 0 else math.inf


def with_defaults(config_class: type, recorded: Mapping) -> dict:
    """Recorded settings completed with the config class's defaults, which a field added since takes on resume."""
    return {**dataclasses.asdict(config_class()), **recorded}


def changed_setting(option: str, field: str, recorded: Mapping, value: Any, path: Path, allowed: str) -> str:
    """The one line that refuses an option whose value differs from the resumed run's recorded setting."""
    was = f"was trained with {field} = {recorded[field]!r}" if field in recorded else f"records no {field}"
    return (
        f"{option}: the run in {path} {was}, and a resumed run keeps its settings "
        f"(with --resume only {allowed} may change); got {value!r}"
    )


class RunSetup:
    """One trainer invocation's use of its run directory: create, refuse, overwrite or resume, and the lock.

    Use as ``with RunSetup(path, resume=..., overwrite=...) as setup:``; with ``resume``, call
    :meth:`resume` first (it takes the lock and returns the checked ``last.pt``); check the inputs; then
    :meth:`start` returns the :class:`RunDirectory` to train into. The lock is released when the block ends.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        resume: bool = False,
        overwrite: bool = False,
        allowed: str = "--steps",
    ):
        if resume and overwrite:
            raise InputError("--resume and --overwrite exclude each other")
        self.path = Path(path)
        self.resuming = resume
        self.overwrite = overwrite
        self.allowed = allowed  # the options a resumed run may change, as its refusals name them
        self.run: RunDirectory | None = None

    def __enter__(self) -> RunSetup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Give the run directory's lock back."""
        if self.run is not None:
            self.run.release()

    def recorded_settings(self) -> dict:
        """The settings the run was created with (its ``config.json``)."""
        path = self.path / "config.json"
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read the run's settings ({exc})") from None
        if not isinstance(recorded, dict):
            raise InputError(f"{path}: not a run's settings (expected a JSON object)")
        return recorded

    def resume(
        self,
        check: Callable[[dict, Path], dict],
        requested: Requested | None = None,
        recorded: Callable[[dict], Mapping] | None = None,
    ) -> dict:
        """Lock the run to resume, refuse ``requested`` options that differ from its settings, return its last.pt.

        ``check(checkpoint, path)`` validates the loaded checkpoint (InputError when it is not this trainer's);
        ``recorded`` maps ``config.json`` to the flat settings that ``requested`` fields name.
        """
        self.run = RunDirectory.existing(self.path)
        if requested:
            settings = self.recorded_settings()
            settings = recorded(settings) if recorded is not None else settings
            for option, (field, value) in requested.items():
                if field not in settings or settings[field] != value:
                    raise InputError(changed_setting(option, field, settings, value, self.path, self.allowed))
        return check(torch_load_safe(self.run.last), self.run.last)

    def check_same_data(self, saved: dict | None, sha256: str, data_path: str | os.PathLike) -> None:
        """Refuse to resume on other training data than the run's (``saved``: its checkpoint, or None)."""
        if saved is not None and saved.get("data_sha256") != sha256:
            raise InputError(
                f"{data_path}: differs from the data the run in {self.path} was trained on (sha256)"
            )

    def start(self, config: dict) -> RunDirectory:
        """The run directory to train into: the resumed one, or a new one holding ``config`` (rank 0 writes)."""
        if self.run is None:
            if dist_info()[0] == 0:
                self.run = RunDirectory.create(self.path, config, self.overwrite)
            else:  # other ranks under torchrun neither write nor lock
                self.run = RunDirectory(self.path)
        return self.run
