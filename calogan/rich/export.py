"""Export a RICH generator with its pre- and post-processing in the graph: python -m calogan.rich.export.

``python -m calogan.rich.export --checkpoint CKPT --format torchscript|onnx --out FILE [--overwrite]``

The exported graph (``ExportedRichGenerator``) takes ``inputs`` (B, 3) float32 = P [GeV], ETA, NTRACKS and
``noise`` (B, noise_dim) float32 standard normal, and returns ``dlls`` (B, 5) float32 = RichDLLe, RichDLLmu,
RichDLLk, RichDLLp, RichDLLbt (batch size B dynamic). Inside the graph, in float64 except the MLP: log P, the
input quantile transform to a normal (piecewise-linear interpolation of the stored quantiles, as sklearn's
QuantileTransformer does it), the EMA generator (float32), the inverse output transform and the output basis
(``from_basis``). A model with tie patterns (``--tie-patterns``) takes one more noise column: its normal CDF is
the uniform that draws the pattern, and the tied DLLs are copied exactly (calogan.rich.ties). Tracks without
RICH information (-999 in all five DLLs) are not drawn in the graph: their probability table (P and eta bin
edges and probabilities) is written beside the model as FILE.norich.json and stored in the model's metadata
(``calogan.json``); :func:`no_rich_mask` shows how to apply it. Every export is checked against the eager
``RichModel.generate`` path on fixed inputs and noise before it is written.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from torch import nn

from calogan.core import options
from calogan.core.errors import InputError
from calogan.core.runtime import (
    atomic_write,
    atomic_write_json,
    run_cli,
    torch_load_safe,
)
from calogan.ecal.export import require_onnx, trace_to_onnx
from calogan.rich import DLL_COLUMNS, INPUT_COLUMNS, SENTINEL
from calogan.rich.data import _BASIS_PAIRS, NORICH_ETA_EDGES, NORICH_P_EDGES, QuantileNormal, check_dll_basis
from calogan.rich.models import RichGenerator, RichModel, check_rich_checkpoint, load_rich_model
from calogan.rich.momentum import MomentumScaling
from calogan.rich.ties import TieModel, apply_ties

FORMATS = ("torchscript", "onnx")
INPUT_NAMES = ("inputs", "noise")
OUTPUT_NAME = "dlls"
#: Name of the JSON metadata stored inside exports (TorchScript extra file / ONNX metadata key).
META_NAME = "calogan.json"
EXPORT_FORMAT = "calogan-rich-export-v1"
NORICH_FORMAT = "calogan-rich-norich-v1"
#: The no-RICH table is written beside the model as ``FILE`` + this suffix.
NORICH_SUFFIX = ".norich.json"
#: Exported and eager DLLs must agree within this relative tolerance (absolute for |DLL| < 1).
PARITY_RTOL = 1e-4

# sklearn's QuantileTransformer: values within BOUNDS_THRESHOLD of the fitted range map to its ends; the
# normal output is clipped to the quantiles of [1e-7 - eps, 1 - (1e-7 - eps)]
BOUNDS_THRESHOLD = 1e-7
_U_CLIP = BOUNDS_THRESHOLD - float(np.spacing(1))
_Z_MIN = float(stats.norm.ppf(_U_CLIP))
_Z_MAX = float(stats.norm.ppf(1 - _U_CLIP))

# ---------------------------------------------------------------- special functions in elementary ops
# ONNX has neither searchsorted nor an inverse normal CDF, and onnxruntime has no float64 Erf, so both
# normal functions are rational approximations (float64, relative error < 1e-12, tested against scipy).


def _poly(coeffs: Sequence[float], x: torch.Tensor) -> torch.Tensor:
    """Horner evaluation, coefficients from the highest degree down."""
    out = x * coeffs[0] + coeffs[1]
    for c in coeffs[2:]:
        out = out * x + c
    return out


# Wichura, "The percentage points of the normal distribution", Applied Statistics 37 (1988), AS241 PPND16
_AS241 = {
    "a": (3.3871328727963666080e0, 1.3314166789178437745e2, 1.9715909503065514427e3, 1.3731693765509461125e4,
          4.5921953931549871457e4, 6.7265770927008700853e4, 3.3430575583588128105e4, 2.5090809287301226727e3),
    "b": (1.0, 4.2313330701600911252e1, 6.8718700749205790830e2, 5.3941960214247511077e3,
          2.1213794301586595867e4, 3.9307895800092710610e4, 2.8729085735721942674e4, 5.2264952788528545610e3),
    "c": (1.42343711074968357734e0, 4.63033784615654529590e0, 5.76949722146069140550e0,
          3.64784832476320460504e0, 1.27045825245236838258e0, 2.41780725177450611770e-1,
          2.27238449892691845833e-2, 7.74545014278341407640e-4),
    "d": (1.0, 2.05319162663775882187e0, 1.67638483018380384940e0, 6.89767334985100004550e-1,
          1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4,
          1.05075007164441684324e-9),
    "e": (6.65790464350110377720e0, 5.46378491116411436990e0, 1.78482653991729133580e0,
          2.96560571828504891230e-1, 2.65321895265761230930e-2, 1.24266094738807843860e-3,
          2.71155556874348757815e-5, 2.01033439929228813265e-7),
    "f": (1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
          7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7,
          2.04426310338993978564e-15),
}  # fmt: skip
_AS241 = {k: v[::-1] for k, v in _AS241.items()}  # listed from degree 0 up, as published

# Cephes ndtr (erf for |x| < 1/sqrt 2, erfc(x) = exp(-x^2) P(x)/Q(x) below 8 and R(x)/S(x) above)
_CEPHES = {
    "T": (9.60497373987051638749e0, 9.00260197203842689217e1, 2.23200534594684319226e3, 7.00332514112805075473e3,
          5.55923013010394962768e4),
    "U": (1.0, 3.35617141647503099647e1, 5.21357949780152679795e2, 4.59432382970980127987e3,
          2.26290000613890934246e4, 4.92673942608635921086e4),
    "P": (2.46196981473530512524e-10, 5.64189564831068821977e-1, 7.46321056442269912687e0, 4.86371970985681366614e1,
          1.96520832956077098242e2, 5.26445194995477358631e2, 9.34528527171957607540e2, 1.02755188689515710272e3,
          5.57535335369399327526e2),
    "Q": (1.0, 1.32281951154744992508e1, 8.67072140885989742329e1, 3.54937778887819891062e2,
          9.75708501743205489753e2, 1.82390916687909736289e3, 2.24633760818710981792e3, 1.65666309194161350182e3,
          5.57535340817727675546e2),
    "R": (5.64189583547755073984e-1, 1.27536670759978104416e0, 5.01905042251180477414e0, 6.16021097993053585195e0,
          7.40974269950448939160e0, 2.97886665372100240670e0),
    "S": (1.0, 2.26052863220117276590e0, 9.39603524938001434673e0, 1.20489539808096656605e1,
          1.70814450747565897222e1, 9.60896809063285878198e0, 3.36907645100081516050e0),
}  # fmt: skip
_SQRT_HALF = 0.70710678118654752440


def ndtri(p: torch.Tensor) -> torch.Tensor:
    """Standard-normal quantile of p in (0, 1) (AS241; float64 relative error ~1e-16)."""
    q = p - 0.5
    r = 0.180625 - q * q
    central = q * _poly(_AS241["a"], r) / _poly(_AS241["b"], r)
    s = torch.sqrt(-torch.log(torch.minimum(p, 1.0 - p)))
    near = _poly(_AS241["c"], s - 1.6) / _poly(_AS241["d"], s - 1.6)
    far = _poly(_AS241["e"], s - 5.0) / _poly(_AS241["f"], s - 5.0)
    tail = torch.where(s <= 5.0, near, far)
    tail = torch.where(q < 0, -tail, tail)
    return torch.where(q.abs() <= 0.425, central, tail)


def ndtr(z: torch.Tensor) -> torch.Tensor:
    """Standard-normal CDF (Cephes ndtr; float64 relative error < 1e-12)."""
    x = z * _SQRT_HALF
    a = x.abs()
    xx = x * x
    erf_small = x * _poly(_CEPHES["T"], xx) / _poly(_CEPHES["U"], xx)
    e = torch.exp(-xx)
    erfc_a = torch.where(
        a < 8.0,
        e * _poly(_CEPHES["P"], a) / _poly(_CEPHES["Q"], a),
        e * _poly(_CEPHES["R"], a) / _poly(_CEPHES["S"], a),
    )
    tail = torch.where(x > 0, 1.0 - 0.5 * erfc_a, 0.5 * erfc_a)
    return torch.where(a < _SQRT_HALF, 0.5 + 0.5 * erf_small, tail)


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Row-wise ``np.interp``: x (d, B), xp (d, n) non-decreasing, fp (d, n) -> (d, B).

    The search is a branch-free binary search of ceil(log2 n) gathers (ONNX has no searchsorted) over the
    knots padded with +inf to a power of two, so each step is one gather, one compare and one add; like
    numpy, a value tied with several knots takes the last one, and values outside [xp[0], xp[-1]] take the
    end values.
    """
    n = int(xp.shape[1])  # a constant of the graph (the knots are buffers)
    size = 1 << n.bit_length()  # a power of two > n: the steps size/2, ..., 1 reach every count 0..n
    padded = torch.cat([xp, torch.full((xp.shape[0], size - n), float("inf"), dtype=xp.dtype)], 1)
    count = torch.zeros_like(x, dtype=torch.long)  # number of knots <= x
    step = size // 2
    while step >= 1:
        count = count + (torch.gather(padded, 1, count + (step - 1)) <= x).long() * step
        step //= 2
    return _segment(x, xp, fp, count)


def interp_uniform(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """:func:`interp` for equally spaced knots xp (every row ``linspace(xp[0], xp[-1], n)``): the segment
    comes from one floor instead of a search (a value on a knot may take the segment on either side of it,
    which gives the same value)."""
    n = int(xp.shape[1])
    lo, hi = float(xp[0, 0]), float(xp[0, -1])
    j = torch.floor((x - lo) * ((n - 1) / (hi - lo))).clamp(0, n - 2).long()
    count = torch.where(x >= hi, torch.full_like(j, n), torch.where(x < lo, torch.zeros_like(j), j + 1))
    return _segment(x, xp, fp, count)


def _segment(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """np.interp's value given ``count``, the number of knots <= x (the segment's right end)."""
    n = int(xp.shape[1])
    j = (count - 1).clamp(0, n - 2)
    x0, x1 = torch.gather(xp, 1, j), torch.gather(xp, 1, j + 1)
    y0, y1 = torch.gather(fp, 1, j), torch.gather(fp, 1, j + 1)
    width = torch.where(x1 > x0, x1 - x0, torch.ones_like(x0))
    inside = (y1 - y0) / width * (x - x0) + y0  # numpy's formula: slope * (x - xp[j]) + fp[j]
    out = torch.where(count == n, fp[:, n - 1 :], inside)
    return torch.where(count == 0, fp[:, :1], out)


def equally_spaced(knots: np.ndarray) -> bool:
    """True when every row of ``knots`` (d, n) is ``np.linspace`` of its ends (sklearn's references)."""
    knots = np.asarray(knots, np.float64)
    lo, hi = knots[:, :1], knots[:, -1:]
    if knots.shape[1] < 3 or not np.all(hi > lo):
        return False
    grid = lo + (hi - lo) * np.arange(knots.shape[1]) / (knots.shape[1] - 1)
    return bool(np.all(np.abs(knots - grid) <= 1e-12 * np.maximum(1.0, np.abs(grid))))


class _QuantileTable(nn.Module):
    """A fitted quantile transform's tables as float64 buffers: ``q`` (d, n) quantiles, ``r`` (d, n) references."""

    def __init__(self, quantiles: np.ndarray, references: np.ndarray):
        super().__init__()
        q = torch.as_tensor(np.asarray(quantiles, np.float64).T.copy())  # (d, n)
        r = torch.as_tensor(np.asarray(references, np.float64)).expand_as(q).contiguous()
        self.register_buffer("q", q)
        self.register_buffer("r", r)


class QuantileToNormal(_QuantileTable):
    """``QuantileNormal.transform`` in torch: (B, d) float64 -> (B, d) float64 standard-normal values."""

    def __init__(self, quantiles: np.ndarray, references: np.ndarray):
        super().__init__(quantiles, references)
        # sklearn averages an upward and a downward interpolation, so a tied value maps to its step's middle
        self.register_buffer("q_down", -self.q.flip(1))
        self.register_buffer("r_down", -self.r.flip(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xt = x.t()
        u = 0.5 * (interp(xt, self.q, self.r) - interp(-xt, self.q_down, self.r_down))
        u = torch.where(xt + BOUNDS_THRESHOLD > self.q[:, -1:], torch.ones_like(u), u)
        u = torch.where(xt - BOUNDS_THRESHOLD < self.q[:, :1], torch.zeros_like(u), u)
        z = ndtri(u.clamp(_U_CLIP, 1.0 - _U_CLIP)).clamp(_Z_MIN, _Z_MAX)
        return z.t()


class NormalToQuantile(_QuantileTable):
    """``QuantileNormal.inverse_transform`` in torch: (B, d) float64 normal values -> (B, d) float64."""

    def __init__(self, quantiles: np.ndarray, references: np.ndarray):
        super().__init__(quantiles, references)
        self.uniform = equally_spaced(self.r.numpy())  # sklearn's references: a search-free lookup

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = ndtr(z.t())
        x = (interp_uniform if self.uniform else interp)(u, self.r, self.q)
        x = torch.where(u + BOUNDS_THRESHOLD > 1.0, self.q[:, -1:], x)
        x = torch.where(u - BOUNDS_THRESHOLD < 0.0, self.q[:, :1], x)
        return x.t()


class MomentumRestore(nn.Module):
    """``MomentumScaling.restore`` in torch: (y (B, d), log P (B,)) -> (B, d) float64."""

    def __init__(self, scaling: MomentumScaling):
        super().__init__()
        d = scaling.centre.shape[1]
        self.register_buffer("knots", torch.as_tensor(scaling.knots).expand(d, -1).contiguous())  # (d, n)
        self.register_buffer("centre", torch.as_tensor(scaling.centre.T.copy()))
        self.register_buffer("scale", torch.as_tensor(scaling.scale.T.copy()))

    def forward(self, y: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        x = log_p.double().unsqueeze(0).expand(self.knots.shape[0], -1)
        return (y.t() * interp(x, self.knots, self.scale) + interp(x, self.knots, self.centre)).t()


class ExportedRichGenerator(nn.Module):
    """Raw inputs (B, 3) = P, ETA, NTRACKS and noise (B, noise_dim) -> (B, 5) DLLs in the raw basis.

    The same computation as ``RichModel.generate(inputs, noise=noise, no_rich=False)``: log P, input
    quantile transform, (the tie pattern, drawn from the last noise column,) generator, inverse output
    transform, (the momentum scaling undone,) output basis, (the tied copies); no -999 draw.
    """

    def __init__(
        self,
        generator: RichGenerator,
        qt_in: QuantileNormal,
        qt_out: QuantileNormal,
        dll_basis: str,
        ties: TieModel | None = None,
        scaling: MomentumScaling | None = None,
    ):
        super().__init__()
        self.generator, self.ties = generator, ties
        self.noise_dim = int(generator.noise_dim) + (ties is not None)
        self.to_normal = QuantileToNormal(**qt_in.to_arrays())
        self.from_normal = NormalToQuantile(**qt_out.to_arrays())
        self.restore = MomentumRestore(scaling) if scaling is not None else None
        self.pairs = _BASIS_PAIRS[check_dll_basis(dll_basis)]
        self.dll_basis = dll_basis

    @classmethod
    def from_model(cls, model: RichModel) -> ExportedRichGenerator:
        """The graph of a loaded checkpoint (CPU, float32 generator, eval mode)."""
        ties = model.ties.cpu().float() if model.ties is not None else None
        module = cls(
            model.generator.cpu().float(), model.qt_in, model.qt_out, model.dll_basis, ties, model.scaling
        )
        return module.eval()

    def forward(self, inputs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = inputs.double()
        x = torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)  # calogan.rich.data.model_inputs
        conditions = self.to_normal(x).float()
        tie = None
        if self.ties is not None:  # the last noise column draws the tie pattern (RichModel.generate)
            one_hot, tie = self.ties(conditions, ndtr(noise[:, -1].double()))
            noise, conditions = noise[:, :-1], torch.cat([conditions, one_hot], 1)
        y = self.from_normal(self.generator(noise, conditions).double())
        if self.restore is not None:
            y = self.restore(y, x[:, 0])
        cols = list(y.unbind(1))
        for col, ref in self.pairs:  # calogan.rich.data.from_basis
            cols[col] = cols[col] + cols[ref]
        dlls = torch.stack(cols, 1).float()
        return dlls if tie is None else apply_ties(dlls, tie)


# ---------------------------------------------------------------- the no-RICH table


def no_rich_table(model: RichModel) -> dict:
    """The JSON form of a model's no-RICH table: bin edges, probabilities and how to apply them."""
    return {
        "format": NORICH_FORMAT,
        "particle": model.particle,
        "p_edges": [float(v) for v in NORICH_P_EDGES],
        "eta_edges": [float(v) for v in NORICH_ETA_EDGES],
        "probability": np.asarray(model.no_rich_table, np.float64).tolist(),
        "sentinel": SENTINEL,
        "rule": (
            "i = clip(searchsorted(p_edges, P, 'left') - 1, 0, len(p_edges) - 2), the same for eta with "
            "eta_edges -> j; a track gets the sentinel in all five DLLs when a uniform draw u in [0, 1) is "
            "below probability[i][j]"
        ),
    }


def no_rich_mask(table: dict, inputs: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """True for the tracks (rows of raw inputs) that get -999 in all five DLLs, given uniform draws in [0, 1).

    Bin i of P holds p_edges[i] < P <= p_edges[i + 1]; values outside the edges fall into the first or last
    bin (the same for eta). ``RichModel.generate`` draws ``uniform`` with ``np.random.default_rng(seed)``.
    """
    p_edges, eta_edges = np.asarray(table["p_edges"]), np.asarray(table["eta_edges"])
    inputs = np.asarray(inputs)
    i = np.clip(np.searchsorted(p_edges, inputs[:, 0]) - 1, 0, len(p_edges) - 2)
    j = np.clip(np.searchsorted(eta_edges, inputs[:, 1]) - 1, 0, len(eta_edges) - 2)
    return np.asarray(uniform) < np.asarray(table["probability"])[i, j]


def norich_path(out: str | os.PathLike) -> Path:
    """Where the no-RICH table of the export ``out`` is written: FILE.norich.json."""
    out = Path(out)
    return out.with_name(out.name + NORICH_SUFFIX)


# ---------------------------------------------------------------- checkpoint, serialisation, parity


def check_checkpoint(path: str | os.PathLike) -> None:
    """Refuse (InputError, one line naming the file and the field) a checkpoint that is not a valid RICH one."""
    check_rich_checkpoint(torch_load_safe(path), path)


def example_inputs(model: RichModel, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw inputs spanning the fitted range (and a little beyond it) plus noise, for tracing and parity."""
    rng = np.random.default_rng(seed)
    q = model.qt_in.qt.quantiles_
    lo, hi = q[0], q[-1]
    span = hi - lo
    x = rng.uniform(lo - 0.05 * span, hi + 0.05 * span, (n, q.shape[1]))
    x[: min(n, 4)] = np.stack([lo, hi, q[len(q) // 2], lo - span])[: min(n, 4)]  # the ends, the middle, below
    inputs = np.column_stack([np.exp(x[:, 0]), x[:, 1:]]).astype(np.float32)  # model_inputs takes log P
    noise = rng.standard_normal((n, model.noise_dim)).astype(np.float32)
    # reach the tails of the output transform (not with the tie-pattern column, whose draw is a threshold)
    noise[: n // 8, : model.generator.noise_dim] *= 3.0
    return torch.from_numpy(inputs), torch.from_numpy(noise)


def export_metadata(model: RichModel, info: dict | None = None) -> dict:
    """JSON-able description stored in the export: layout, particle, basis, the no-RICH table, provenance."""
    return {
        "format": EXPORT_FORMAT,
        "inputs": {
            "inputs": f"(B,3) float32 {', '.join(INPUT_COLUMNS)} (P in GeV)",
            "noise": f"(B,{model.noise_dim}) float32 N(0,1)"
            + (", the last column draws the tie pattern" if model.ties is not None else ""),
        },
        "output": f"dlls (B,5) float32 {', '.join(DLL_COLUMNS)}",
        "noise_dim": int(model.noise_dim),
        "particle": model.particle,
        "dll_basis": model.dll_basis,
        "momentum_scaling": model.scaling is not None,
        "no_rich": no_rich_table(model),
        **{k: v for k, v in (info or {}).items() if isinstance(v, str | int | float | bool)},
    }


def torchscript_bytes(module: ExportedRichGenerator, meta: dict) -> bytes:
    """The traced module as a TorchScript file (metadata in the extra file calogan.json)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, _trace_example(module), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={META_NAME: json.dumps(meta)})
    return buffer.getvalue()


def onnx_bytes(module: ExportedRichGenerator, meta: dict, opset: int = 17) -> bytes:
    """The module as an ONNX model (dynamic batch axis, metadata key calogan.json), checked by onnx.checker."""
    require_onnx()
    import onnx

    with tempfile.TemporaryDirectory(prefix="calogan-rich-export-") as tmp:
        staged = Path(tmp) / "model.onnx"
        trace_to_onnx(module, _trace_example(module), INPUT_NAMES, OUTPUT_NAME, staged, opset)
        model = onnx.load(str(staged))
    entry = model.metadata_props.add()
    entry.key, entry.value = META_NAME, json.dumps(meta)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _trace_example(module: ExportedRichGenerator) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.tensor([[10.0, 3.0, 100.0]] * 8)
    return inputs, torch.zeros(8, module.noise_dim)


def run_exported(data: bytes | str | os.PathLike, fmt: str, inputs, noise) -> np.ndarray:
    """Run an exported model (file path or bytes) on raw inputs and noise; returns (B, 5) float32 numpy."""
    inputs, noise = np.asarray(inputs, np.float32), np.asarray(noise, np.float32)
    if fmt == "torchscript":
        source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            module = torch.jit.load(source, map_location="cpu").eval()
            return module(torch.from_numpy(inputs), torch.from_numpy(noise)).numpy()
    require_onnx()
    import onnxruntime as ort

    session = ort.InferenceSession(
        data if isinstance(data, bytes) else str(data), providers=["CPUExecutionProvider"]
    )
    return session.run([OUTPUT_NAME], {"inputs": inputs, "noise": noise})[0]


def parity_error(exported: np.ndarray, eager: np.ndarray) -> float:
    """Worst |exported - eager| / max(|eager|, 1): relative error, absolute below one DLL unit."""
    if exported.shape != eager.shape:
        return float("inf")
    return float((np.abs(exported.astype(np.float64) - eager) / np.maximum(np.abs(eager), 1.0)).max())


def check_parity(model: RichModel, data: bytes | str | os.PathLike, fmt: str, batch_sizes=(5, 257)) -> float:
    """Worst :func:`parity_error` of an export against the eager model on fixed batches of several sizes."""
    worst = 0.0
    for i, n in enumerate(batch_sizes):
        inputs, noise = example_inputs(model, n, seed=100 + i)
        eager = model.generate(inputs.numpy(), noise=noise, no_rich=False)
        worst = max(worst, parity_error(run_exported(data, fmt, inputs, noise), eager))
    return worst


def export_checkpoint(
    checkpoint: str | os.PathLike, out: str | os.PathLike, fmt: str = "torchscript", overwrite: bool = False
) -> tuple[Path, Path, float]:
    """Export ``checkpoint``'s EMA generator to ``out`` and its no-RICH table to FILE.norich.json.

    Both are refused when they exist without ``overwrite``; the model is checked against the eager path
    before anything is written (RuntimeError beyond PARITY_RTOL). Returns (model path, table path, parity).
    """
    if fmt not in FORMATS:
        raise InputError(f"--format: unknown format '{fmt}' (use {' or '.join(FORMATS)})")
    out = options.check_output_file(out, overwrite, "--out", inputs=[checkpoint])
    table_path = options.check_output_file(norich_path(out), overwrite, "--out", inputs=[checkpoint])
    if fmt == "onnx":
        require_onnx()
    check_checkpoint(checkpoint)
    model = load_rich_model(checkpoint, device="cpu")
    data, meta, err = export_model(model, fmt, Path(checkpoint).name, str(out))
    atomic_write(out, lambda handle: handle.write(data))
    atomic_write_json(table_path, meta["no_rich"])
    return out, table_path, err


def export_model(model: RichModel, fmt: str, checkpoint_name: str, label: str) -> tuple[bytes, dict, float]:
    """(serialised export, its metadata, parity error) of a loaded model; RuntimeError naming ``label`` when
    the export differs from the eager model by more than PARITY_RTOL."""
    module = ExportedRichGenerator.from_model(model)
    info = {"checkpoint": checkpoint_name, "ema": True}
    info |= {k: model.meta[k] for k in ("step", "data_sha256") if k in model.meta}
    meta = export_metadata(model, info)
    data = onnx_bytes(module, meta) if fmt == "onnx" else torchscript_bytes(module, meta)
    err = check_parity(model, data, fmt)
    if not err <= PARITY_RTOL:
        raise RuntimeError(
            f"{label}: exported {fmt} model differs from the eager model by {err:.2e} (relative)"
        )
    return data, meta, err


def onnx_tracks_per_second(
    path: str | os.PathLike, batch_size: int = 10_000, repeats: int = 20, threads: int | None = None
) -> float:
    """Tracks per second of an ONNX export with onnxruntime on CPU (median of ``repeats`` batches)."""
    require_onnx()
    import onnxruntime as ort

    sess_options = ort.SessionOptions()
    if threads:
        sess_options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), sess_options=sess_options, providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map[META_NAME])
    rng = np.random.default_rng(0)
    feeds = {
        "inputs": np.column_stack(
            [
                rng.uniform(3, 100, batch_size),
                rng.uniform(1.5, 5.5, batch_size),
                rng.uniform(1, 400, batch_size),
            ]
        ).astype(np.float32),
        "noise": rng.standard_normal((batch_size, meta["noise_dim"])).astype(np.float32),
    }
    session.run([OUTPUT_NAME], feeds)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run([OUTPUT_NAME], feeds)
        times.append(time.perf_counter() - start)
    return batch_size / float(np.median(times))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: export a RICH checkpoint's EMA generator to TorchScript or ONNX."""
    ap = options.ArgumentParser(prog="python -m calogan.rich.export", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--checkpoint", required=True, help="checkpoint written by `python -m calogan.rich.train`"
    )
    ap.add_argument(
        "--format", type=options.choice(*FORMATS), default="torchscript", help="torchscript | onnx"
    )
    ap.add_argument("--out", required=True, help="output file; its no-RICH table goes to FILE.norich.json")
    ap.add_argument("--overwrite", action="store_true", help="replace existing output files")
    args = ap.parse_args(argv)
    path, table, err = export_checkpoint(args.checkpoint, args.out, args.format, args.overwrite)
    print(f"wrote {path} ({args.format}) and {table}; parity vs eager: {err:.1e} (relative)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
