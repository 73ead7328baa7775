"""The evaluator's text tables on screen: the competition score, the stricter tests and the physics checks.

Each table reads the JSON-safe result dicts ({split: summary}) and fits a 110-column terminal. A stricter
test's value is shown beside its real-vs-real reference, as ``value (reference)``, and a number computed in
one of several conventions (FPD, KPD, the field-protocol classifier) names it in its row label.
"""

from __future__ import annotations

from collections.abc import Callable

#: The widest line the tables print (a 110-column terminal).
MAX_WIDTH = 110
_LABEL, _CELL = 32, 39  # stricter-tests layout: 32 + 2 splits × 39 = 110 columns, cells 1 apart at least
_N_WORST = 5  # worst-separated observables listed


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def score_rows(results: dict) -> list[tuple[str, list[str]]]:
    """(label, one cell per split) of the competition score: score, AUCs, F-scores, ceiling, standardised."""
    rows = [
        ("score = min(img, phys)", "score", "score_std"),
        ("AUC_img", "auc_img", "auc_img_std"),
        ("AUC_phys", "auc_phys", "auc_phys_std"),
        ("F_8 img / F_1/8 img", "f8_img", "f1_8_img"),
        ("F_8 phys / F_1/8 phys", "f8_phys", "f1_8_phys"),
        ("ceiling (real vs real)", "ceiling", None),
    ]
    out = []
    for label, key, key2 in rows:
        sep = " ± " if key2 and key2.endswith("_std") else " / "
        out.append(
            (label, [_fmt(r.get(key)) + (sep + _fmt(r.get(key2)) if key2 else "") for r in results.values()])
        )
    std = [_fmt(r["standardised"]["score"]) if "standardised" in r else "n/a" for r in results.values()]
    return [*out, ("standardised-stats score", std)]


def score_note(results: dict) -> str:
    """The sample sizes and settings behind the score rows, in one line."""
    first = next(iter(results.values()))
    return (
        f"(N = {first['n']}, K = {first['clusters']}, R = {first['runs']}, seed {first['seed']}; "
        "± = std over runs; ceiling = half vs half of the true set at N/2)"
    )


def format_table(results: dict) -> str:
    """A plain-text table of the per-split results: the competition score, then the stricter tests present."""
    lines = [f"{'':26s}" + "".join(f"{s:>22s}" for s in results)]
    lines += [f"{label:26s}" + "".join(f"{c:>22s}" for c in cells) for label, cells in score_rows(results)]
    lines.append(score_note(results))
    stricter = format_stricter_table(results)
    return "\n".join(lines + (["", stricter] if stricter else []))


# ---------------------------------------------------------------- stricter tests


def _num(v) -> str:
    """A metric value: 4 decimals, 1 for large values (a very bad generator's FPD)."""
    return "n/a" if v is None else (f"{v:.1f}" if abs(v) >= 100 else f"{v:.4f}")


def _pair(d: dict | None, key: str, err: str | None = None) -> str | None:
    """``value (reference)`` of ``key`` in ``d`` (with ``± error`` where ``err`` names one), None if absent."""
    if not d or d.get(key) is None:
        return None

    def one(k: str) -> str:
        text = _num(d.get(k))
        e = d.get(f"{k}_{err}") if err else None
        return text + (f" ± {_num(e)}" if e is not None else "")

    return f"{one(key)} ({one(key + '_ref')})"


def _convention(d: dict | None, key: str = "convention") -> str:
    """The short name of a convention string of the JSON ('calogan', 'jetnet 0.2.5'), '' if none."""
    text = (d or {}).get(key)
    return f" [{text.split(':')[0]}]" if isinstance(text, str) and text else ""


def _worst(r: dict, rank: int) -> str | None:
    """The ``rank``-th worst-separated observable of a ``sep`` result: name, value (reference)."""
    table = (r.get("sep") or {}).get("table")
    if not table or rank >= len(table):
        return None
    row = sorted(table, key=lambda t: -t["sep"])[rank]
    return f"{row['observable']} {row['sep']:.4f} ({row['sep_ref']:.4f})"


def _stricter_rows(results: dict) -> list[tuple[str, Callable[[dict], str | None]]]:
    """(label, cell of one split's result) for every stricter-test number, in reading order."""
    first = next(iter(results.values()))

    def full_or_fidelity(name: str) -> Callable[[dict], dict | None]:
        return lambda r: r.get(name) or r.get("fidelity")

    cls, fpd, sep = full_or_fidelity("cls"), full_or_fidelity("fpd"), full_or_fidelity("sep")
    fpd_conv = _convention(first.get("fpd")) or _convention(first.get("fidelity"), "fpd_convention")
    cc = " [CaloChallenge]" if first.get("cls_cc") else ""
    rows: list[tuple[str, Callable[[dict], str | None]]] = [
        ("classifier AUC, low-level", lambda r: _pair(r.get("cls"), "auc_low")),
        ("classifier AUC, high-level", lambda r: _pair(cls(r), "auc_high")),
        ("classifier JSD, low-level", lambda r: _pair(r.get("cls"), "jsd_low")),
        ("classifier JSD, high-level", lambda r: _pair(r.get("cls"), "jsd_high")),
        (f"cls_cc AUC, high{cc}", lambda r: _pair(r.get("cls_cc"), "auc_high")),
        (f"cls_cc AUC, low{cc}", lambda r: _pair(r.get("cls_cc"), "auc_low")),
        (f"FPD ± err{fpd_conv}", lambda r: _pair(fpd(r), "fpd", "err")),
        (f"KPD ± err{_convention(first.get('kpd'))}", lambda r: _pair(r.get("kpd"), "kpd", "err")),
    ]
    rows += [
        (f"PRDC {k}", lambda r, k=k: _pair(r.get("prdc"), k))
        for k in ("precision", "recall", "density", "coverage")
    ]
    rows += [
        ("separation power, max", lambda r: _pair(sep(r), "sep_max")),
        ("separation power, mean", lambda r: _pair(r.get("sep"), "sep_mean")),
        ("W1 / σ_true, mean", lambda r: _pair(r.get("sep"), "w1_scaled_mean")),
    ]
    if any((r.get("sep") or {}).get("table") for r in results.values()):
        rows += [(f"  worst-separated #{i + 1}", lambda r, i=i: _worst(r, i)) for i in range(_N_WORST)]
    else:
        rows.append(("  worst-separated", lambda r: (sep(r) or {}).get("sep_max_observable")))
    return rows


def stricter_rows(results: dict) -> list[tuple[str, list[str | None]]]:
    """(label, one cell per split) for each stricter-test number present in ``results``."""
    rows = []
    for label, cell in _stricter_rows(results):
        cells = [cell(r) for r in results.values()]
        if any(c is not None for c in cells):
            rows.append((label, cells))
    return rows


#: What the stricter-tests table's values mean, under the table.
STRICTER_NOTE = (
    "(AUC 0.5, JSD 0, FPD/KPD 0, separation 0, density 1 mean indistinguishable from real; compare each",
    " value with its reference in brackets; [..] names the convention; docs/metrics.md)",
)
STRICTER_TITLE = "stricter tests: generated vs real (real vs real), half samples"


def format_stricter_table(results: dict) -> str:
    """The stricter tests present in the results, each as value (real-vs-real reference) per split; '' if none."""
    rows = stricter_rows(results)
    if not rows:
        return ""
    lines = [STRICTER_TITLE, f"{'':{_LABEL}s}" + "".join(f" {s:>{_CELL - 1}s}" for s in results)]
    lines += [
        f"{label:{_LABEL}s}" + "".join(f" {c or 'n/a':>{_CELL - 1}s}" for c in cells) for label, cells in rows
    ]
    return "\n".join([*lines, *STRICTER_NOTE])


# ---------------------------------------------------------------- conditional physics


def format_physics_table(physics: dict) -> str:
    """Plain-text table of calogan.metrics.response.physics_checks: per-bin response and resolution ratios, barycentre."""
    tol = physics["tolerances"]
    lines = [
        f"{'|p| bin [GeV]':>16s} {'n':>7s} {'response ratio':>18s} {'resolution ratio':>18s} {'core res. ratio':>16s}"
    ]
    for row in physics["energy_bins"]:
        label = f"{row['p_lo']:.1f}-{row['p_hi']:.1f}"
        if row["response_ratio"] is None:
            lines.append(f"{label:>16s} {row['n']:7d} {'(too few)':>18s} {'':>18s}")
            continue
        resp = f"{row['response_ratio']:.3f} ± {row['response_ratio_err']:.3f}"
        res = f"{row['resolution_ratio']:.3f} ± {row['resolution_ratio_err']:.3f}"
        core = row.get("core_resolution_ratio")
        core = "" if core is None else f"{core:.3f}"
        lines.append(f"{label:>16s} {row['n']:7d} {resp:>18s} {res:>18s} {core:>16s}")
    bary = physics["barycentre"]
    if bary.get("bias_x") is not None:
        lines.append(
            f"barycentre bias (generated - real, contained showers, n = {bary['n']}): "
            f"x {bary['bias_x']:+.3f} cm, y {bary['bias_y']:+.3f} cm"
        )
    core = [r for r in physics.get("core", []) if "max_cell_real" in r]
    if core:
        lines.append("shower core, mean energy fraction real / generated (hottest cell; 3x3 around it):")
        for r in core:
            lines.append(
                f"{r['p_lo']:.1f}-{r['p_hi']:.1f}".rjust(16)
                + f" {r['max_cell_real']:.3f} / {r['max_cell_gen']:.3f};  {r['e3x3_real']:.3f} / {r['e3x3_gen']:.3f}"
            )
    lines.append(
        "(core res. = half the 16-84 % range / median of E/|p|: the Gaussian core, no tails; no target)"
    )
    lines.append(
        f"targets: response within ±{tol['response']:.0%}, resolution within ±{tol['resolution']:.0%}, "
        f"|barycentre bias| < {tol['barycentre_cm']} cm"
    )
    return "\n".join(lines)
