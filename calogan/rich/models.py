"""MLP generator and critic for the RICH GAN (3 conditions -> 5 DLLs, all in quantile-normal space)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from calogan.core.errors import InputError, printable
from calogan.core.options import MAX_DEPTH, MAX_WIDTH
from calogan.core.runtime import one_line, require_finite_tensors, torch_load_safe
from calogan.rich import PARTICLES, SENTINEL
from calogan.rich.data import (
    DLL_BASES,
    NORICH_ETA_EDGES,
    NORICH_P_EDGES,
    QuantileNormal,
    from_basis,
    model_inputs,
    no_rich_probability,
)
from calogan.rich.momentum import MomentumScaling
from calogan.rich.ties import TIE_PAIRS, TieModel, apply_ties

N_CONDITIONS = 3
N_OUTPUTS = 5


#: frequencies of the sine/cosine condition features a critic with ``critic_features`` reads (see RichCritic)
CRITIC_FEATURE_FREQUENCIES = (1.0, 2.0, 4.0, 8.0)


def _mlp(n_in: int, n_out: int, hidden: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class ConditionalMLP(nn.Module):
    """MLP with optional pre-activation skip connections and the conditions fed again into every later layer.

    Layout: ``Linear(n_in, hidden)``, then ``depth - 1`` hidden layers ``h -> W act(h)`` (``residual``:
    ``h -> h + W act(h)``), then ``W_out act(h)``; the same number of linear layers as the plain MLP of the
    same depth. With ``n_cond > 0`` every layer after the first reads ``[act(h), cond]``, so sharp
    condition-dependent features (Cherenkov thresholds in P) need not survive a chain of smooth layers.
    """

    def __init__(
        self, n_in: int, n_out: int, hidden: int, depth: int, n_cond: int = 0, residual: bool = False
    ):
        super().__init__()
        self.residual, self.n_cond = residual, n_cond
        self.first = nn.Linear(n_in, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden + n_cond, hidden) for _ in range(depth - 1))
        self.out = nn.Linear(hidden + n_cond, n_out)
        self.act = nn.LeakyReLU(0.2)

    def _read(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """What a layer after the first reads: the activated hidden state, with the conditions if fed again."""
        a = self.act(h)
        return torch.cat([a, cond], 1) if self.n_cond and cond is not None else a

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.first(x)
        for layer in self.hidden:
            y = layer(self._read(h, cond))
            h = h + y if self.residual else y
        return self.out(self._read(h, cond))


class RichGenerator(nn.Module):
    """(noise, normalised conditions [+ one-hot tie pattern]) -> normalised DLLs.

    ``residual`` adds skip connections, ``cond_every_layer`` feeds the conditions into every hidden layer;
    with both off the network is the original plain MLP (same parameter names, same seeded initialisation).
    """

    def __init__(
        self,
        noise_dim: int = 64,
        hidden: int = 128,
        depth: int = 4,
        residual: bool = False,
        cond_every_layer: bool = False,
        n_patterns: int = 0,
    ):
        super().__init__()
        self.noise_dim = noise_dim
        self.structured = residual or cond_every_layer
        n_conditions = N_CONDITIONS + n_patterns  # the one-hot tie pattern is read as a condition
        if self.structured:
            n_cond = n_conditions if cond_every_layer else 0
            self.net = ConditionalMLP(noise_dim + n_conditions, N_OUTPUTS, hidden, depth, n_cond, residual)
        else:
            self.net = _mlp(noise_dim + n_conditions, N_OUTPUTS, hidden, depth)

    def forward(self, noise: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([noise, conditions], 1)
        return self.net(x, conditions) if self.structured else self.net(x)


def condition_features(conditions: torch.Tensor) -> torch.Tensor:
    """sin/cos of the normalised conditions at CRITIC_FEATURE_FREQUENCIES: (B, 3 * 2 * n_frequencies).

    Fixed features that vary quickly with the kinematics, so the critic can resolve narrow condition ranges
    (near a Cherenkov threshold) without first building them out of smooth layers.
    """
    scaled = torch.cat([conditions * f for f in CRITIC_FEATURE_FREQUENCIES], 1)
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], 1)


class RichCritic(nn.Module):
    """(normalised DLLs, normalised conditions) -> Wasserstein score (B,), or with ``out_dim`` > 1 the vector
    h(x, c) of shape (B, out_dim) that the Cramér objective compares; no batch norm (gradient penalty).

    ``residual`` adds skip connections; ``critic_features`` also feeds :func:`condition_features` of the
    conditions (they depend only on the conditions, so the gradient penalty, taken w.r.t. the DLLs, is
    unchanged in meaning).
    """

    def __init__(
        self,
        hidden: int = 128,
        depth: int = 4,
        residual: bool = False,
        critic_features: bool = False,
        out_dim: int = 1,
        n_patterns: int = 0,
    ):
        super().__init__()
        self.critic_features, self.out_dim = critic_features, out_dim
        n_extra = N_CONDITIONS * 2 * len(CRITIC_FEATURE_FREQUENCIES) if critic_features else 0
        n_in = N_OUTPUTS + N_CONDITIONS + n_patterns + n_extra
        self.net = (
            ConditionalMLP(n_in, out_dim, hidden, depth, 0, True)
            if residual
            else _mlp(n_in, out_dim, hidden, depth)
        )

    def forward(self, dlls: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        parts = [dlls, conditions]
        if self.critic_features:
            parts.append(condition_features(conditions[:, :N_CONDITIONS]))
        out = self.net(torch.cat(parts, 1))
        return out.squeeze(1) if self.out_dim == 1 else out


class TiePatternHead(nn.Module):
    """Normalised conditions (B, 3) -> logits (B, K) of the tie patterns (calogan.rich.ties), a plain MLP."""

    def __init__(self, n_patterns: int, hidden: int = 64, depth: int = 3):
        super().__init__()
        self.net = _mlp(N_CONDITIONS, n_patterns, hidden, depth)

    def forward(self, conditions: torch.Tensor) -> torch.Tensor:
        return self.net(conditions)


#: model-structure switches of model_config; absent (checkpoints written before them) means off
STRUCTURE_OPTIONS = ("residual", "cond_every_layer", "critic_features")


def n_tie_patterns(model_config: dict) -> int:
    """Number of modelled tie patterns (calogan.rich.ties); 0 for a model without the discrete part."""
    patterns = model_config.get("tie_patterns") or []
    return len(patterns) if len(patterns) > 1 else 0


def build_models(model_config: dict) -> tuple[RichGenerator, RichCritic]:
    """Build generator and critic from {'noise_dim', 'hidden', 'depth'}, the optional STRUCTURE_OPTIONS,
    'critic_out' (the critic's output size; absent means 1, a scalar score) and 'tie_patterns' (absent: none)."""
    flags = {k: bool(model_config.get(k, False)) for k in STRUCTURE_OPTIONS}
    n_patterns = n_tie_patterns(model_config)
    g = RichGenerator(
        model_config["noise_dim"],
        model_config["hidden"],
        model_config["depth"],
        residual=flags["residual"],
        cond_every_layer=flags["cond_every_layer"],
        n_patterns=n_patterns,
    )
    c = RichCritic(
        model_config["hidden"],
        model_config["depth"],
        residual=flags["residual"],
        critic_features=flags["critic_features"],
        out_dim=int(model_config.get("critic_out", 1)),
        n_patterns=n_patterns,
    )
    return g, c


class RichModel:
    """A trained particle model: EMA generator + input/output quantile transforms + no-RICH table, and
    optionally the tie patterns (calogan.rich.ties.TieModel), drawn from the last noise column, and the
    momentum-dependent output scaling (calogan.rich.momentum.MomentumScaling)."""

    def __init__(
        self,
        generator: RichGenerator,
        qt_in,
        qt_out,
        no_rich_table,
        particle: str,
        meta: dict,
        dll_basis: str = "raw",
        ties: TieModel | None = None,
        scaling: MomentumScaling | None = None,
    ):
        self.generator = generator.eval()
        self.scaling = scaling
        self.ties = ties.eval() if ties is not None else None
        self.dll_basis = dll_basis
        self.qt_in, self.qt_out = qt_in, qt_out
        self.no_rich_table = no_rich_table
        self.particle = particle
        self.meta = meta

    @property
    def noise_dim(self) -> int:
        """Noise columns per track: the generator's, plus one for the tie-pattern draw when the model has one."""
        return self.generator.noise_dim + (self.ties is not None)

    @torch.no_grad()
    def generate(
        self, inputs, seed: int = 0, batch_size: int = 65536, device=None, noise=None, no_rich: bool = True
    ):
        """Sample (N, 5) DLLs for raw inputs (N, 3) = P, ETA, NTRACKS; -999 rows drawn from the no-RICH table.

        ``noise`` (N, noise_dim) replaces the noise drawn from ``seed`` (the exported graph takes it as an
        input; with tie patterns its last column, through the normal CDF, is the uniform that draws the pattern);
        ``no_rich=False`` skips the -999 draw, so every track gets generated DLLs.
        """
        device = device or next(self.generator.parameters()).device
        cond = torch.from_numpy(self.qt_in.transform(model_inputs(inputs)))
        if noise is not None:
            noise = torch.as_tensor(noise, dtype=torch.float32)
            if tuple(noise.shape) != (len(cond), self.noise_dim):
                raise InputError(
                    f"noise: expected shape ({len(cond)}, {self.noise_dim}), got {tuple(noise.shape)}"
                )
        noise_rng = torch.Generator().manual_seed(seed)
        outs, bits = [], []
        for start in range(0, len(cond), batch_size):
            c = cond[start : start + batch_size]
            if noise is None:
                z = torch.randn(len(c), self.noise_dim, generator=noise_rng)
            else:
                z = noise[start : start + batch_size]
            z, c = z.to(device), c.to(device)
            if self.ties is not None:
                one_hot, tie = self.ties(c.float(), torch.special.ndtr(z[:, -1].double()))
                z, c = z[:, :-1], torch.cat([c.float(), one_hot], 1)
                bits.append(tie.cpu())
            outs.append(self.generator(z, c).cpu())
        z_out = torch.cat(outs).numpy() if outs else np.zeros((0, N_OUTPUTS), np.float32)
        y = self.qt_out.inverse_transform(z_out)
        if self.scaling is not None:
            y = self.scaling.restore(y, model_inputs(inputs)[:, 0])
        dlls = from_basis(y, self.dll_basis)
        if self.ties is not None and len(dlls):
            dlls = apply_ties(torch.from_numpy(dlls), torch.cat(bits)).numpy()
        if not no_rich:
            return dlls
        rng = np.random.default_rng(seed)
        missing = rng.random(len(dlls)) < no_rich_probability(self.no_rich_table, inputs)
        dlls[missing] = SENTINEL
        return dlls


def _field_problem(path, field: str, problem: str) -> InputError:
    return InputError(f"{path}: checkpoint field {field}: {problem}")


def _tensor(
    path, ckpt: dict, field: str, name: str | None, shape: tuple, floating: bool = True
) -> torch.Tensor:
    """``ckpt[field]`` (or ``ckpt[field][name]``): a finite tensor of ``shape`` (None: any size there)."""
    where = field if name is None else f"{field}/{name}"
    value = ckpt.get(field)
    if name is not None:
        value = value.get(name) if isinstance(value, dict) else None
    if not isinstance(value, torch.Tensor):
        raise _field_problem(path, where, "missing or not a tensor")
    if len(value.shape) != len(shape) or any(w is not None and w != n for w, n in zip(shape, value.shape)):
        want = "(" + ", ".join("n" if w is None else str(w) for w in shape) + ")"
        raise _field_problem(path, where, f"shape {tuple(value.shape)}, expected {want}")
    if floating and not value.is_floating_point():
        raise _field_problem(path, where, f"dtype {value.dtype}, expected floating point")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise _field_problem(path, where, f"{int((~torch.isfinite(value)).sum())} NaN/Inf value(s)")
    return value


def _increasing(path, where: str, values: torch.Tensor, strict: bool) -> None:
    steps = values[1:] - values[:-1]
    if bool((steps <= 0).any() if strict else (steps < 0).any()):
        raise _field_problem(
            path, where, "values must be " + ("strictly increasing" if strict else "non-decreasing")
        )


def _load_weights(path, field: str, module: nn.Module, state) -> None:
    """Load ``state`` into ``module`` (strict); a missing, foreign or mis-shaped state names ``field``."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _field_problem(path, field, "missing or not a dict of tensors")
    require_finite_tensors(path, {field: state}, (field,))
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise _field_problem(path, field, f"does not fit model_config ({one_line(str(exc), 150)})") from None


def check_rich_checkpoint(ckpt: object, path, ema: bool = True) -> tuple[RichGenerator, TieModel | None]:
    """Validate every field a RICH model is built from; returns (generator, tie model) with weights loaded.

    The one schema of a calogan.rich.train checkpoint: format, particle, model_config (sizes within the option
    domains, flags, tie patterns), the generator (EMA) weights, qt_in/qt_out (quantiles (n, 3) / (n, 5)
    non-decreasing, references (n,) increasing in [0, 1]), the no-RICH table (values in [0, 1]), the optional
    momentum scaling (knots (n,) increasing, centre and scale (n, 5), scale > 0), the tie head when
    model_config has tie patterns, and config's dll_basis. Anything else is an InputError naming the field.
    """
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a calogan RICH checkpoint (format != {CHECKPOINT_FORMAT})")
    if ckpt.get("particle") not in PARTICLES:
        raise _field_problem(
            path,
            "particle",
            f"{printable(repr(ckpt.get('particle')), 60)} is not one of {', '.join(PARTICLES)}",
        )
    config = ckpt.get("config", {})
    if not isinstance(config, dict) or config.get("dll_basis", "raw") not in DLL_BASES:
        raise _field_problem(path, "config/dll_basis", f"must be one of {', '.join(DLL_BASES)}")
    mc = ckpt.get("model_config")
    if not isinstance(mc, dict):
        raise _field_problem(path, "model_config", "missing or not a dict")
    for key, high in (
        ("noise_dim", MAX_WIDTH),
        ("hidden", MAX_WIDTH),
        ("depth", MAX_DEPTH),
        ("critic_out", MAX_WIDTH),
    ):
        value = mc.get(key, 1 if key == "critic_out" else None)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise _field_problem(
                path,
                f"model_config/{key}",
                f"must be an integer in [1, {high}], got {printable(repr(value), 40)}",
            )
    for key in STRUCTURE_OPTIONS:
        if not isinstance(mc.get(key, False), bool):
            raise _field_problem(path, f"model_config/{key}", "must be true or false")
    patterns = mc.get("tie_patterns") or []
    try:
        table = np.asarray(patterns, dtype=object)
        good = (
            table.ndim == 2
            and table.shape[1] == len(TIE_PAIRS)
            and all(isinstance(b, bool) for b in table.flat)
        )
    except ValueError:
        good = False
    if patterns and not good:
        raise _field_problem(
            path, "model_config/tie_patterns", f"must be a list of {len(TIE_PAIRS)} booleans per pattern"
        )
    generator, _ = build_models(mc)
    _load_weights(
        path,
        "generator_ema" if ema else "generator",
        generator,
        ckpt.get("generator_ema" if ema else "generator"),
    )
    ties = None
    if n_tie_patterns(mc):
        ties = TieModel(TiePatternHead(len(patterns)), np.asarray(patterns, bool))
        _load_weights(path, "tie_head", ties.head, ckpt.get("tie_head"))
    for field, width in (("qt_in", N_CONDITIONS), ("qt_out", N_OUTPUTS)):
        quantiles = _tensor(path, ckpt, field, "quantiles", (None, width))
        references = _tensor(path, ckpt, field, "references", (quantiles.shape[0],))
        if quantiles.shape[0] < 2:
            raise _field_problem(path, f"{field}/quantiles", "needs at least 2 quantiles")
        _increasing(path, f"{field}/quantiles", quantiles, strict=False)
        _increasing(path, f"{field}/references", references, strict=True)
        if not (0.0 <= float(references[0]) and float(references[-1]) <= 1.0):
            raise _field_problem(path, f"{field}/references", "values must lie in [0, 1]")
    table = _tensor(path, ckpt, "no_rich_table", None, (len(NORICH_P_EDGES) - 1, len(NORICH_ETA_EDGES) - 1))
    if bool(((table < 0) | (table > 1)).any()):
        raise _field_problem(path, "no_rich_table", "probabilities must lie in [0, 1]")
    if "momentum_scaling" in ckpt:
        knots = _tensor(path, ckpt, "momentum_scaling", "knots", (None,))
        if knots.shape[0] < 2:
            raise _field_problem(path, "momentum_scaling/knots", "needs at least 2 knots")
        _increasing(path, "momentum_scaling/knots", knots, strict=True)
        _tensor(path, ckpt, "momentum_scaling", "centre", (knots.shape[0], N_OUTPUTS))
        scale = _tensor(path, ckpt, "momentum_scaling", "scale", (knots.shape[0], N_OUTPUTS))
        if bool((scale <= 0).any()):
            raise _field_problem(path, "momentum_scaling/scale", "values must be > 0")
    return generator, ties


def load_rich_model(path, device="cpu", ema: bool = True) -> RichModel:
    """Load a calogan.rich.train checkpoint (weights_only), validated by :func:`check_rich_checkpoint`."""
    ckpt = torch_load_safe(path)
    g, ties = check_rich_checkpoint(ckpt, path, ema)
    qt_in = QuantileNormal.from_arrays(
        ckpt["qt_in"]["quantiles"].numpy(), ckpt["qt_in"]["references"].numpy()
    )
    qt_out = QuantileNormal.from_arrays(
        ckpt["qt_out"]["quantiles"].numpy(), ckpt["qt_out"]["references"].numpy()
    )
    scaling = None
    if "momentum_scaling" in ckpt:
        scaling = MomentumScaling.from_arrays(
            **{k: ckpt["momentum_scaling"][k].numpy() for k in ("knots", "centre", "scale")}
        )
    meta = {k: ckpt[k] for k in ("config", "step", "metrics", "data_sha256") if k in ckpt}
    basis = ckpt.get("config", {}).get("dll_basis", "raw")  # checkpoints before the basis option: raw
    return RichModel(
        g.to(device), qt_in, qt_out, ckpt["no_rich_table"].numpy(), ckpt["particle"], meta, basis,
        ties.to(device) if ties is not None else None, scaling,
    )  # fmt: skip


CHECKPOINT_FORMAT = "calogan-rich-checkpoint-v1"
