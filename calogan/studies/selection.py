"""A small event-selection grammar for transfer studies: ``p<20``, ``pdg==11 & r<5`` (parsed, never eval).

Grammar: ``SEL := TERM ('&' TERM)*``, ``TERM := VAR OP NUMBER``, OP one of ``< <= > >= == !=``.
Variables (units of the competition files, docs/data.md):

==========  =====================================================
``p``       |p|, GeV
``pt``      transverse momentum sqrt(px² + py²), GeV
``px``      ``py`` ``pz``: momentum components, GeV
``x``       ``y``: impact point at the ECAL plane, cm
``r``       sqrt(x² + y²), cm (distance of the impact point from the image centre)
``theta``   polar angle of the track, mrad (arctan(pt/pz))
``pdg``     11 (electron) or 22 (photon)
==========  =====================================================

``all`` (or an empty string) selects every event.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from calogan.core.errors import InputError
from calogan.ecal.data import CaloData

_OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}


def _p(d: CaloData) -> np.ndarray:
    return d.p_abs


def _pt(d: CaloData) -> np.ndarray:
    return np.hypot(d.momentum[:, 0].astype(np.float64), d.momentum[:, 1].astype(np.float64))


#: Variable name -> function of a CaloData returning one float64 value per event.
VARIABLES: dict[str, Callable[[CaloData], np.ndarray]] = {
    "p": _p,
    "pt": _pt,
    "px": lambda d: d.momentum[:, 0].astype(np.float64),
    "py": lambda d: d.momentum[:, 1].astype(np.float64),
    "pz": lambda d: d.momentum[:, 2].astype(np.float64),
    "x": lambda d: d.point[:, 0].astype(np.float64),
    "y": lambda d: d.point[:, 1].astype(np.float64),
    "r": lambda d: np.hypot(d.point[:, 0].astype(np.float64), d.point[:, 1].astype(np.float64)),
    "theta": lambda d: 1e3 * np.arctan2(_pt(d), d.momentum[:, 2].astype(np.float64)),
    "pdg": lambda d: d.pdg.astype(np.float64),
}

_TERM = re.compile(r"^\s*([A-Za-z_]+)\s*(<=|>=|==|!=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Term:
    """One comparison ``variable op value``."""

    variable: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.variable}{self.op}{self.value:g}"


@dataclass(frozen=True)
class Selection:
    """A conjunction of terms; ``mask(data)`` gives the boolean event mask."""

    terms: tuple[Term, ...]
    text: str

    def mask(self, data: CaloData) -> np.ndarray:
        """Boolean (N,) mask of the events passing every term."""
        keep = np.ones(len(data), dtype=bool)
        for term in self.terms:
            keep &= _OPS[term.op](VARIABLES[term.variable](data), term.value)
        return keep

    def __str__(self) -> str:
        return " & ".join(map(str, self.terms)) or "all"


def parse_selection(text: str, option: str = "selection") -> Selection:
    """Parse ``text`` into a Selection; a malformed term raises InputError naming ``option``."""
    stripped = (text or "").strip()
    if stripped.lower() in ("", "all"):
        return Selection((), "all")
    terms = []
    for part in stripped.split("&"):
        match = _TERM.match(part)
        if not match:
            raise InputError(
                f"{option}: cannot parse '{part.strip()}' in '{text}' "
                f"(expected VAR OP NUMBER joined by '&', e.g. 'p<20 & pdg==11')"
            )
        var, op, value = match.group(1).lower(), match.group(2), float(match.group(3))
        if var not in VARIABLES:
            raise InputError(
                f"{option}: unknown variable '{var}' in '{text}' (valid: {', '.join(VARIABLES)})"
            )
        if var == "pdg" and value not in (11.0, 22.0):
            raise InputError(f"{option}: pdg must be compared with 11 or 22, got {value:g}")
        terms.append(Term(var, op, value))
    return Selection(tuple(terms), stripped)


def apply_selection(data: CaloData, selection: Selection | str, option: str = "selection") -> CaloData:
    """The events of ``data`` passing ``selection``; an empty result raises InputError."""
    sel = parse_selection(selection, option) if isinstance(selection, str) else selection
    keep = sel.mask(data)
    if not keep.any():
        raise InputError(f"{option}: '{sel.text}' selects no events of {data.path} ({len(data)} events)")
    return data.subset(keep)


def overlap_fraction(data: CaloData, first: Selection, second: Selection) -> float:
    """Fraction of the events of ``data`` passing both selections (0 for disjoint selections)."""
    return float((first.mask(data) & second.mask(data)).mean())
