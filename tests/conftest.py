"""Shared fixtures: a tiny simulated data set written once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """data_{train,val,test}.npz + solutions with 2000/600/600 events, seed 123."""
    from calogan.simulate import write_dataset

    out = tmp_path_factory.mktemp("tiny_data")
    write_dataset(out, n_train=2000, n_val=600, n_test=600, seed=123, progress=False)
    return out
