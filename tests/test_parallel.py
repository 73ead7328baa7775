"""Jobs in parallel processes: results by name, and the first failure stops the rest with a clear account."""

from __future__ import annotations

import time

import pytest

from calogan.core.parallel import Job, JobsStopped, run_jobs, sharing, threads_per_job


def test_results_by_name_and_a_callback_per_finished_job():
    seen = []
    results = run_jobs([Job("a", "math:sqrt", (4.0,)), Job("b", "math:sqrt", (9.0,)), Job("c", "math:sqrt", (16.0,))],
                       workers=2, on_done=lambda name, value: seen.append(name))  # fmt: skip
    assert results == {"a": 2.0, "b": 3.0, "c": 4.0}
    assert sorted(seen) == ["a", "b", "c"]


def test_first_failure_stops_the_running_jobs_and_starts_no_more():
    start = time.monotonic()
    jobs = [
        Job("slow", "time:sleep", (60,)),
        Job("bad", "math:sqrt", (-1.0,)),
        Job("later", "math:sqrt", (1.0,)),
    ]
    with pytest.raises(JobsStopped) as info:
        run_jobs(jobs, workers=2)
    stop = info.value
    assert stop.failed == "bad" and isinstance(stop.cause, ValueError)
    assert stop.stopped == ["slow"] and stop.not_started == ["later"] and stop.finished == []
    assert "bad: math domain error" in str(stop)
    assert time.monotonic() - start < 30  # the sleeping job was stopped, not waited for


def test_threads_are_shared_out():
    assert threads_per_job(2, total=16) == 8
    assert threads_per_job(5, total=2) == 1
    assert sharing(5, 1, total=2) == 2.5 and sharing(2, 1, total=2) == 1.0 and sharing(1, 8, total=16) == 1.0


def test_a_result_larger_than_a_pipe_buffer_comes_back():
    """The parent reads each outcome as it arrives, so a child never blocks on a full pipe."""
    results = run_jobs([Job("big", "os:urandom", (1_000_000,))], workers=1)
    assert len(results["big"]) == 1_000_000
