"""RICH particle-identification fast simulation: five conditional (P, eta, nTracks) -> 5 DLL generators.

Modules: ``simulate`` (parametric calibration samples with sWeights), ``data`` (sample I/O, validation,
pickle-free quantile transform), ``models`` (MLP generator / critic), ``train`` (weighted WGAN-GP trainer),
``evaluate`` (weighted histograms, classifier two-sample test, PID efficiencies) and ``transfer``
(evaluate a model on a sample with a different kinematic distribution).
"""

from __future__ import annotations

PARTICLES = ("electron", "muon", "pion", "kaon", "proton")
INPUT_COLUMNS = ("P", "ETA", "NTRACKS")
DLL_COLUMNS = ("RichDLLe", "RichDLLmu", "RichDLLk", "RichDLLp", "RichDLLbt")
WEIGHT_COLUMN = "sWeight"
COLUMNS = INPUT_COLUMNS + DLL_COLUMNS + (WEIGHT_COLUMN,)
SAMPLES = ("train", "test", "transfer")
SENTINEL = -999.0
"""DLL value of tracks without RICH information (all five DLLs take it together)."""
