"""FPD and KPD estimators (calogan.metrics.distances): honest FPD errors on null replicas, agreement with jetnet 0.2.5."""

from __future__ import annotations
import __future__

import ast
import importlib.util
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmark_scripts import load_benchmark
from numpy.typing import ArrayLike
from scipy import linalg
from scipy.optimize import curve_fit
from scipy.stats import iqr

from calogan.metrics import distances as dist

#: Fixed inputs and options of the jetnet comparison (small, so that jetnet's dense Gram matrices stay cheap).
FIXED_FPD = {"min_samples": 500, "max_samples": 2000, "num_batches": 5, "num_points": 4, "seed": 3}
FIXED_KPD = {"num_batches": 5, "batch_size": 400, "seed": 3}
#: jetnet 0.2.5's (value, error) on :func:`fixed_inputs`, computed once by its own fpd and kpd (numpy 2.4.6,
#: scipy 1.17.1, 2026-12-06) after `.venv/bin/pip install --no-deps jetnet==0.2.5`, with
#: `python -c "import sys; sys.path.insert(0, 'tests'); import test_distances as t; r, g = t.fixed_inputs();
#: jn = t.jetnet_functions(); print(jn['fpd'](r, g, **t.FIXED_FPD), jn['kpd'](r, g, **t.FIXED_KPD))"`.
JETNET_FPD = (0.003374664758586293, 0.00042145934831973596)
JETNET_KPD = (0.0033465579182494487, 0.0014127303556858346)


def fixed_inputs() -> tuple[np.ndarray, np.ndarray]:
    """3000 × 5 real and generated features with different means, scales and a heavy-tailed column."""
    rng = np.random.default_rng(2024)
    real = rng.normal(size=(3000, 5)) * [1.0, 2.0, 0.5, 1.0, 3.0] + [0.0, 1.0, -2.0, 5.0, 0.0]
    gen = rng.normal(size=(3000, 5)) * [1.1, 2.0, 0.5, 0.9, 3.0] + [0.1, 1.0, -2.1, 5.0, 0.3]
    real[:, 3] = np.exp(real[:, 3] / 3)
    gen[:, 3] = np.exp(gen[:, 3] / 3)
    return real, gen


def jetnet_functions() -> dict:
    """fpd, kpd and their helpers from jetnet 0.2.5's evaluation/gen_metrics.py, without its heavy imports.

    The module imports energyflow, numba and jetnet's data sets at the top; fpd and kpd need only numpy and
    scipy, so their definitions are taken from the source (numba's @njit dropped: plain Python, same arithmetic).
    """
    spec = importlib.util.find_spec("jetnet")
    if spec is None:
        pytest.skip("jetnet is not installed (pip install --no-deps jetnet==0.2.5)")
    path = Path(spec.submodule_search_locations[0]) / "evaluation" / "gen_metrics.py"
    tree = ast.parse(path.read_text())
    wanted = {"_check_get_ndarray", "_calculate_frechet_distance", "_normalise_features", "_linear", "fpd",
              "_poly_kernel_pairwise", "_mmd_quadratic_unbiased", "_mmd_poly_quadratic_unbiased", "_kpd_batches",
              "kpd"}  # fmt: skip
    body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in wanted]
    assert {node.name for node in body} == wanted, "jetnet's gen_metrics.py changed"
    for node in body:
        node.decorator_list = []
    namespace = {"np": np, "linalg": linalg, "curve_fit": curve_fit, "iqr": iqr, "warnings": warnings,
                 "logger": logging.getLogger("jetnet"), "Tensor": torch.Tensor, "ArrayLike": ArrayLike}  # fmt: skip
    code = compile(ast.Module(body=body, type_ignores=[]), str(path), "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)  # fmt: skip
    exec(code, namespace)  # the installed jetnet's own source, nothing else
    return namespace


def _ours(real: np.ndarray, gen: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    f = dist.fpd_jetnet(real, gen, **FIXED_FPD)
    k = dist.kpd_jetnet(real, gen, **FIXED_KPD)
    return (f["value"], f["fit_error"]), (k["value"], k["error"])


def test_jetnet_convention_matches_recorded_jetnet_values():
    fpd, kpd = _ours(*fixed_inputs())
    np.testing.assert_allclose(fpd, JETNET_FPD, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(kpd, JETNET_KPD, rtol=1e-6, atol=1e-9)


def test_jetnet_convention_matches_installed_jetnet():
    jn = jetnet_functions()
    real, gen = fixed_inputs()
    fpd, kpd = _ours(real, gen)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # jetnet warns below 50,000 samples and on scipy's deprecated sqrtm(disp)
        np.testing.assert_allclose(fpd, jn["fpd"](real, gen, **FIXED_FPD), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(kpd, jn["kpd"](real, gen, **FIXED_KPD), rtol=1e-6, atol=1e-9)


def test_conventions_are_named():
    assert dist.check_convention("jetnet") == "jetnet"
    with pytest.raises(ValueError, match="calogan, jetnet"):
        dist.check_convention("fastjet")


def test_fpd_breakdown_finds_the_feature_that_differs():
    """diagnose_features.fpd_breakdown: one feature shifted by 1 sd carries the distance, in the mean part."""
    from calogan.metrics.two_sample import HIGH_LEVEL_NAMES

    rng = np.random.default_rng(0)
    real, floor, gen = (rng.normal(size=(20000, len(HIGH_LEVEL_NAMES))) for _ in range(3))
    gen[:, 3] += 1.0
    out = load_benchmark("diagnose_features").fpd_breakdown(gen, real, floor)
    name = HIGH_LEVEL_NAMES[3]
    assert out["total"] == pytest.approx(1.0, abs=0.05) and out["real_vs_real"] < 0.05
    assert out["mean_part"] == pytest.approx(1.0, abs=0.05) and abs(out["covariance_part"]) < 0.05
    assert out["one_d"][name] == pytest.approx(1.0, abs=0.05)
    assert max(out["drop_when_left_out"], key=out["drop_when_left_out"].get) == name


@pytest.mark.parametrize("convention", ["calogan", "jetnet"])
def test_fpd_error_is_a_unit_pull_on_null_replicas(convention):
    res = load_benchmark("bench_fpd_pull").pull_replicas(
        replicas=100, n=500, dims=10, conventions=(convention,), repeats=5
    )
    summary = res["conventions"][convention]
    pull = summary["value_pull"] if convention == "calogan" else summary["error"]
    assert 0.8 <= pull["pull_sd"] <= 1.25, pull
    assert pull["frac_abs_pull_gt_3"] <= 0.03, pull
    if convention == "calogan":
        assert 0.8 <= summary["diff_pull"]["pull_sd"] <= 1.25, summary["diff_pull"]
    else:  # jetnet's own fit error is too small: the reason for the honest one
        assert summary["fit_error"]["pull_sd"] > 1.4, summary["fit_error"]
