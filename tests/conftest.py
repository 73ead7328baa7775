"""Shared fixtures: tiny simulated ECAL and RICH data sets, written once per pytest run."""

from __future__ import annotations

import os

import pytest

from calogan.ecal.simulate import write_dataset
from calogan.ecal.train import make_config, train
from calogan.rich import simulate as rich_sim

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """data_{train,val,test}.npz + solutions with 2000/600/600 events, seed 123."""
    out = tmp_path_factory.mktemp("tiny_data")
    write_dataset(out, n_train=2000, n_val=600, n_test=600, seed=123, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data_dir, tmp_path_factory):
    """checkpoints/best.pt of a run of the tiny training preset on tiny_data_dir (in-process, seconds)."""
    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    train(make_config("tiny", data=str(tiny_data_dir), run_dir=str(run_dir)), progress=False)
    return run_dir / "checkpoints" / "best.pt"


@pytest.fixture(scope="session")
def rich_kaon_dir(tmp_path_factory):
    """A RICH kaon sample of 3000 tracks (seed 5), for the RICH model and export tests."""
    out = tmp_path_factory.mktemp("rich_kaon_data")
    rich_sim.write_samples(out, n=3000, seed=5, particles=("kaon",), progress=False)
    return out


@pytest.fixture(scope="session")
def rich_kaon_run(rich_kaon_dir, tmp_path_factory):
    """RUN/kaon: a 15-step tiny kaon run on rich_kaon_dir (sWeights) with tie patterns and momentum scaling.

    Every optional field of a RICH checkpoint is present (tie head, momentum scaling); trained once per
    pytest run, as the tie head's fit is the slow part. Tests only read it (copy it to change it).
    """
    from calogan.rich import train as rich_train

    run = tmp_path_factory.mktemp("rich_kaon_run") / "kaon"
    cfg = rich_train.TrainConfig.from_preset(
        "tiny", particle="kaon", data=str(rich_kaon_dir), run_dir=str(run), steps=15, weights="sweights",
        tie_patterns=True, momentum_scaling=True,
    )  # fmt: skip
    cfg.progress = False
    return rich_train.train(cfg)
