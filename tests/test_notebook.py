"""The starter notebook runs top to bottom with small parameters, and is committed without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "starter.ipynb"


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.get("outputs", []) == [], "commit the notebook without outputs (clear them first)"
            assert cell.get("execution_count") is None


@pytest.fixture(scope="module")
def executed_notebook(tmp_path_factory):
    from nbclient import NotebookClient

    work = tmp_path_factory.mktemp("nb")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = {
        "CALOGAN_NB_DATA": str(work / "data"),
        "CALOGAN_NB_RUNS": str(work / "runs"),
        "CALOGAN_NB_SUBMISSIONS": str(work / "submissions"),
        # every cell runs, on data just large enough for the score (K = 100 clusters of each half of val)
        "CALOGAN_NB_N_TRAIN": "1500",
        "CALOGAN_NB_N_VAL": "400",
        "CALOGAN_NB_N_TEST": "400",
        "CALOGAN_NB_STEPS": "2",  # eval_every = max(STEPS // 4, 1) = 1: two periodic scores to plot
        "CALOGAN_NB_EVAL_RUNS": "3",
        "CALOGAN_NB_DEVICE": "cpu",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}
        )
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def test_notebook_executes_without_errors(executed_notebook):
    errors = [
        o
        for c in executed_notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert not errors


def test_every_figure_cell_produces_an_image(executed_notebook):
    figure_cells = [
        c for c in executed_notebook.cells if c.cell_type == "code" and "figure" in c.metadata.get("tags", [])
    ]
    assert len(figure_cells) >= 5
    for cell in figure_cells:
        images = [
            o for o in cell.outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})
        ]
        assert images, f"figure cell produced no image:\n{cell.source[:200]}"
