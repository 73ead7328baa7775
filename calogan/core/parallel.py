"""Independent jobs in parallel processes: one spawned process per job, at most ``workers`` at once.

Small networks use many CPU threads poorly, so several trainings side by side, each with its share of the
threads, finish sooner than the same trainings one after another with all of them. Each job runs in a fresh
process (``spawn``: safe with torch's threads on every platform) that exits when its job ends, so no idle
worker is ever left to signal. A stop is orderly: the first failure, a Ctrl-C or a SIGTERM sends SIGTERM to
the running jobs (the trainers finish their step and write last.pt), starts no more, and raises
:class:`JobsStopped` with what finished, what was stopped and what never started.
"""

from __future__ import annotations

import importlib
import multiprocessing
import pickle
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

from calogan.core.errors import Interrupted


@dataclass
class Job:
    """One unit of work, known by ``name`` in messages: ``target`` ("package.module:function") called with ``args``
    in its own process. The function is named rather than passed, so that a command run as ``python -m`` (whose
    functions live in ``__main__``) hands its children the importable module; ``args`` should be plain data."""

    name: str
    target: str
    args: tuple = ()


@dataclass
class JobsStopped(Exception):
    """The jobs ended early: ``cause`` (a job's exception, or :class:`Interrupted`) and where each job stands."""

    cause: BaseException
    failed: str | None = None
    finished: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.failed + ': ' if self.failed else ''}{self.cause}"


def threads_per_job(workers: int, total: int | None = None) -> int:
    """The CPU threads each of ``workers`` parallel jobs gets: an equal share of ``total`` (torch's), at least 1."""
    total = torch.get_num_threads() if total is None else total
    return max(1, total // max(1, workers))


def sharing(workers: int, threads: int, total: int | None = None) -> float:
    """How many jobs share each of the ``total`` CPU threads (torch's) when ``workers`` jobs use ``threads`` each:
    at least 1. A job's wall-clock time budget stretches by this factor."""
    total = torch.get_num_threads() if total is None else total
    return max(1.0, workers * threads / max(1, total))


def _raise_interrupt(signum, frame):  # noqa: ARG001
    raise Interrupted("", signum=signum)


def _child(job: Job, threads: int, conn: Connection) -> None:
    """A job's process: its share of the threads, SIGTERM as an exception (cleanup runs), the outcome to the parent."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    torch.set_num_threads(threads)
    try:
        module, function = job.target.split(":")
        outcome: tuple[str, Any] = ("done", getattr(importlib.import_module(module), function)(*job.args))
    except BaseException as exc:  # noqa: BLE001 - every way a job ends goes back to the parent
        outcome = ("error", exc)
    try:
        conn.send(outcome)
    except (pickle.PicklingError, TypeError, AttributeError):  # an exception that cannot cross processes
        conn.send(("error", RuntimeError(f"{type(outcome[1]).__name__}: {outcome[1]}")))
    conn.close()


def run_jobs(
    jobs: Sequence[Job],
    workers: int,
    on_done: Callable[[str, Any], None] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Run ``jobs`` in at most ``workers`` processes at once, in order; {name: result} when every job succeeded.

    ``on_done(name, result)`` is called in this process as each job finishes. ``threads``: CPU threads per job
    (default :func:`threads_per_job`). Raises :class:`JobsStopped` after the first failure or a Ctrl-C/SIGTERM,
    once every running job has stopped.
    """
    context = multiprocessing.get_context("spawn")
    threads = threads_per_job(workers) if threads is None else threads
    pending = list(jobs)
    # receiving end of each running job's pipe -> (job, process): a pipe turns readable when its job sends the
    # outcome or its process ends, so the parent reads every outcome before joining (no full pipe can block a child)
    running: dict[Connection, tuple[Job, Any]] = {}
    results: dict[str, Any] = {}
    stopped: list[str] = []
    terminated: set[Connection] = set()
    failure: tuple[str | None, BaseException] | None = None

    def collect(conn: Connection) -> None:
        nonlocal failure
        job, process = running.pop(conn)
        try:
            outcome = conn.recv()
        except EOFError:  # the process ended without a word (killed)
            outcome = None
        conn.close()
        process.join()
        if outcome is None:
            outcome = ("error", RuntimeError(f"its process ended with code {process.exitcode}"))
        if outcome[0] == "done":
            results[job.name] = outcome[1]
            if on_done is not None:
                on_done(job.name, outcome[1])
            return
        if isinstance(outcome[1], KeyboardInterrupt):
            stopped.append(job.name)
        if failure is None:
            failure = (job.name, outcome[1])

    def stop_running() -> None:
        for conn, (_, process) in running.items():
            if conn not in terminated and process.is_alive():
                process.terminate()  # SIGTERM, once: a trainer finishes its step and writes last.pt
                terminated.add(conn)

    try:
        while pending or running:
            while pending and len(running) < workers and failure is None:
                job = pending.pop(0)
                receive, send = context.Pipe(duplex=False)
                process = context.Process(
                    target=_child, args=(job, threads, send), name=f"calogan-{job.name}"
                )
                process.start()
                send.close()
                running[receive] = (job, process)
            if not running:
                break
            for conn in wait(list(running)):
                collect(conn)
            if failure is not None:
                stop_running()
    except KeyboardInterrupt as exc:  # Ctrl-C (which the jobs got too) or SIGTERM to this process
        stop_running()
        for conn in list(running):
            collect(conn)
        cause = exc if isinstance(exc, Interrupted) else Interrupted(str(exc))
        failure = (None, cause)
    if failure is not None:
        name, cause = failure
        finished = [j.name for j in jobs if j.name in results]
        raise JobsStopped(
            cause, name, finished, [j.name for j in jobs if j.name in stopped], [j.name for j in pending]
        )
    return results
