"""Codalab scoring program: INPUT_DIR/ref (solutions) + INPUT_DIR/res (participant files) → OUTPUT_DIR/scores.txt.

scores.txt holds ``set1_score`` (val) and ``set2_score`` (test) plus the AUCs; scores.html shows a table.
On bad input the error goes to stderr, the exit status is 2 and scores.txt is not written.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from calogan.core import options
from calogan.core.errors import InputError
from calogan.core.runtime import atomic_write_text, run_cli, select_device
from calogan.metrics.embedder import load_embedder
from calogan.metrics.inputs import PREDICTION_NAMES, SPLITS
from calogan.metrics.scoring import EvalSettings, evaluate_predictions

SET_NAMES = {"val": "set1", "test": "set2"}
EMBEDDER_NAME = "embedder.safetensors"


def _participant_files(res: Path) -> Path:
    """The folder holding the two prediction files: res itself, or a single zip inside it (extracted)."""
    if not res.is_dir():
        raise InputError(f"{res}: participant result folder not found")
    if all((res / n).is_file() for n in PREDICTION_NAMES.values()):
        return res
    zips = sorted(res.glob("*.zip"))
    if len(zips) == 1:
        return zips[0]
    missing = [n for n in PREDICTION_NAMES.values() if not (res / n).is_file()]
    raise InputError(f"{res}: missing {', '.join(missing)} in the submission")


def score_submission(
    input_dir: str | Path,
    output_dir: str | Path,
    embedder_path: str | Path | None = None,
    clusters: int = 100,
    runs: int = 100,
    seed: int = 1337,
    device=None,
) -> dict:
    """Score INPUT_DIR/res against INPUT_DIR/ref and write scores.txt and scores.html into OUTPUT_DIR."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    # Codalab hands over a fresh folder; locally an earlier scores.txt is replaced
    options.check_output_dir(
        output_dir, overwrite=True, option="OUTPUT_DIR", inputs=[input_dir, embedder_path]
    )
    ref = input_dir / "ref"
    if not ref.is_dir():
        raise InputError(f"{ref}: reference (solution) folder not found")
    pred = _participant_files(input_dir / "res")
    emb = Path(embedder_path) if embedder_path else ref / EMBEDDER_NAME
    if not emb.is_file():
        raise InputError(
            f"{emb}: embedder weights not found (build the program with python -m calogan.codalab.bundle)"
        )
    scored = evaluate_predictions(
        pred,
        ref,
        "both",
        EvalSettings(clusters=clusters, runs=runs, seed=seed, device=device),
        # loaded once the submission and the options are checked; no training file on Codalab: trusted
        embedder_loader=lambda: load_embedder(emb, device=device),
        progress=False,
    )
    results = {split: r.summary for split, r in scored.items()}
    lines = []
    for split in SPLITS:
        r, tag = results[split], SET_NAMES[split]
        lines += [
            f"{tag}_score: {r['score']:.6f}",
            f"{tag}_auc_img: {r['auc_img']:.6f}",
            f"{tag}_auc_phys: {r['auc_phys']:.6f}",
            f"{tag}_score_std: {r['score_std']:.6f}",
            f"{tag}_ceiling: {r.get('ceiling', float('nan')):.6f}",
        ]
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "scores.html", _html(results))
    atomic_write_text(output_dir / "scores.txt", "\n".join(lines) + "\n")
    return results


def _html(results: dict) -> str:
    keys = (
        "score",
        "auc_img",
        "auc_phys",
        "f8_img",
        "f1_8_img",
        "f8_phys",
        "f1_8_phys",
        "score_std",
        "ceiling",
    )
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    rows = "".join(
        f"<tr><td>{SET_NAMES[s]} ({s})</td>"
        + "".join(f"<td>{r.get(k, float('nan')):.4f}</td>" for k in keys)
        + "</tr>"
        for s, r in results.items()
    )
    return (
        "<html><body><h2>calogan score: min(AUC_img, AUC_phys)</h2>"
        f"<table border='1'><tr><th>split</th>{head}</tr>{rows}</table>"
        "<p>AUC_img embeds the generated images (the 2019 program embedded the true ones twice). "
        "ceiling = one half of the true set against the other half.</p></body></html>\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = options.ArgumentParser(
        prog="python -m calogan.codalab.score", description=__doc__.splitlines()[0]
    )
    parser.add_argument("input_dir")
    parser.add_argument("output_dir")
    parser.add_argument(
        "--embedder", default=None, help=f"embedder weights (default INPUT_DIR/ref/{EMBEDDER_NAME})"
    )
    parser.add_argument(
        "--clusters", type=options.count(2), default=100, help="PRD clusters K, 2 <= K <= events (100)"
    )
    parser.add_argument("--runs", type=options.count(1), default=100)
    parser.add_argument("--seed", type=options.seed, default=1337)
    args = parser.parse_args(argv)
    results = score_submission(
        args.input_dir,
        args.output_dir,
        args.embedder,
        args.clusters,
        args.runs,
        args.seed,
        select_device("auto"),
    )
    for split, r in results.items():
        print(f"{SET_NAMES[split]}_score ({split}): {r['score']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
