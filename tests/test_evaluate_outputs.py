"""The evaluator's outputs beyond the score: the full table on screen, the FPD convention, the plots folder and
the HTML report."""

from __future__ import annotations

import contextlib
import html
import io
import json
import subprocess
import sys
import textwrap
from html.parser import HTMLParser

import numpy as np
import pytest

from calogan.core.locks import LOCK_NAME
from calogan.core.runtime import run_cli
from calogan.ecal.data import load_npz, save_prediction, split_path
from calogan.ecal.simulate import simulate_showers
from calogan.metrics.embedder import train_embedder
from calogan.metrics.evaluate import main
from calogan.metrics.report import flatten_scalars
from calogan.metrics.tables import MAX_WIDTH


@pytest.fixture(scope="module")
def inputs(tiny_data_dir, tmp_path_factory):
    """(prediction folder: an independent re-simulation of the val and test events, embedder file)."""
    root = tmp_path_factory.mktemp("eval_outputs")
    emb = root / "embedder.safetensors"
    train_embedder(tiny_data_dir, out=emb, epochs=1, batch_size=128, progress=False)
    pred = root / "pred"
    pred.mkdir()
    for split, seed in (("val", 987), ("test", 988)):
        t = load_npz(split_path(tiny_data_dir, split, "solution"), require_energy=True)
        images = simulate_showers(t.point, t.momentum, t.pdg, np.random.default_rng(seed))
        save_prediction(pred / f"data_{split}_prediction.npz", images)
    return pred, emb


def _run(args, tiny_data_dir, inputs) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of the evaluator on the fixture's predictions with a small K and R."""
    pred, emb = inputs
    out, err = io.StringIO(), io.StringIO()
    base = ["--solution-dir", str(tiny_data_dir), "--embedder", str(emb), "--clusters", "10", "--runs", "2"]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run_cli(main, [str(pred), *args, *base])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def all_metrics(tiny_data_dir, inputs, tmp_path_factory):
    """One run of ``--metrics all`` on both splits (300 events each): stdout, the JSON, plots and report."""
    out = tmp_path_factory.mktemp("all_metrics")
    args = ["--metrics", "all", "--sample-size", "300", "--json", str(out / "score.json"),
            "--plots", str(out / "plots"), "--report", str(out / "report.html")]  # fmt: skip
    rc, stdout, stderr = _run(args, tiny_data_dir, inputs)
    assert rc == 0, stderr
    return {"stdout": stdout, "json": json.loads((out / "score.json").read_text()), "dir": out}


def test_all_metrics_table_names_every_metric_with_its_reference(all_metrics):
    text, res = all_metrics["stdout"], all_metrics["json"]
    assert max(len(line) for line in text.splitlines()) <= MAX_WIDTH
    lines = {line.strip().split("  ")[0]: line for line in text.splitlines() if "  " in line.strip()}
    for label in ("classifier AUC, low-level", "classifier AUC, high-level", "cls_cc AUC, high [CaloChallenge]",
                  "cls_cc AUC, low [CaloChallenge]", "FPD ± err [calogan]", "KPD ± err [calogan]",
                  "PRDC precision", "PRDC recall", "PRDC density", "PRDC coverage",
                  "separation power, max", "ceiling (real vs real)"):  # fmt: skip
        assert label in lines, label
    for split in ("val", "test"):  # value (reference) as in the JSON, per split
        r = res[split]
        assert (
            f"{r['cls']['auc_low']:.4f} ({r['cls']['auc_low_ref']:.4f})" in lines["classifier AUC, low-level"]
        )
        cc = f"{r['cls_cc']['auc_high']:.4f} ({r['cls_cc']['auc_high_ref']:.4f})"
        assert cc in lines["cls_cc AUC, high [CaloChallenge]"]
        fpd = f"{r['fpd']['fpd']:.4f} ± {r['fpd']['fpd_err']:.4f} ({r['fpd']['fpd_ref']:.4f}"
        assert fpd in lines["FPD ± err [calogan]"]
        assert f"{r['prdc']['coverage']:.4f} ({r['prdc']['coverage_ref']:.4f})" in lines["PRDC coverage"]
        worst = sorted(r["sep"]["table"], key=lambda t: -t["sep"])[:5]
        for i, row in enumerate(worst):  # the five worst-separated observables, worst first
            assert f"{row['observable']} {row['sep']:.4f}" in lines[f"worst-separated #{i + 1}"]
    assert "conditional physics" in text


def test_fpd_convention_option(tiny_data_dir, inputs, tmp_path):
    out = tmp_path / "j.json"
    args = ["--split", "val", "--metrics", "fpd", "--fpd-convention", "jetnet", "--json", str(out)]
    rc, stdout, stderr = _run(args, tiny_data_dir, inputs)
    assert rc == 0, stderr
    res = json.loads(out.read_text())["val"]
    assert res["fpd"]["convention"].startswith("jetnet 0.2.5")
    assert "fpd_diff_err" not in res["fpd"]  # the jetnet procedure has no paired error
    assert "FPD ± err [jetnet 0.2.5]" in stdout  # (KPD takes the same option; slow in this convention)
    rc, _, stderr = _run(["--split", "val", "--fpd-convention", "nonsense"], tiny_data_dir, inputs)
    assert rc == 2 and "--fpd-convention" in stderr


FAST = ["--split", "val", "--metrics", "prd", "--sample-size", "300", "--no-ceiling"]


def test_plots_folder_has_one_writer(tiny_data_dir, inputs, tmp_path):
    """A second writer of a plots folder exits 2 naming the holder, before scoring, and writes nothing."""
    plots, out = tmp_path / "plots", tmp_path / "r.json"
    code = textwrap.dedent(
        f"""
        import sys
        from calogan.core.locks import lock_directory
        lock = lock_directory({str(plots)!r}, "plots folder")
        print("held", flush=True)
        sys.stdin.read()
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        args = [*FAST, "--plots", str(plots), "--json", str(out), "--overwrite"]
        rc, _, stderr = _run(args, tiny_data_dir, inputs)
        assert rc == 2 and "in use by another calogan process" in stderr and str(plots) in stderr
        assert not out.exists() and sorted(p.name for p in plots.iterdir()) == [LOCK_NAME]
    finally:
        holder.stdin.close()
        holder.wait()
    assert not plots.exists()  # the holder made it only to lock it


def test_interrupted_plots_leave_no_partial_folder(tiny_data_dir, inputs, tmp_path, monkeypatch):
    """Ctrl-C while the plots are drawn: a new folder does not appear, an existing one keeps its old content."""
    import calogan.metrics.plots as plots_module

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt  # after the PRD, statistics and shower plots were drawn

    monkeypatch.setattr(plots_module, "plot_energy_response", interrupted)
    fresh, old, out = tmp_path / "fresh", tmp_path / "old", tmp_path / "r.json"
    rc, _, _ = _run([*FAST, "--plots", str(fresh), "--json", str(out)], tiny_data_dir, inputs)
    assert rc == 130 and not fresh.exists() and not out.exists()
    old.mkdir()
    (old / "val_prd.png").write_bytes(b"old plot")
    rc, _, _ = _run([*FAST, "--plots", str(old), "--overwrite"], tiny_data_dir, inputs)
    assert rc == 130
    assert [p.name for p in old.iterdir()] == ["val_prd.png"] and (
        old / "val_prd.png"
    ).read_bytes() == b"old plot"


VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Checker(HTMLParser):
    """Collects tags and their attributes, and checks that every element opened is closed in order."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unexpected </{tag}>")


def test_report_is_one_self_contained_well_formed_page(all_metrics):
    text = (all_metrics["dir"] / "report.html").read_text()
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert text.startswith("<!DOCTYPE html>") and not checker.errors and not checker.stack
    tags = [t for t, _ in checker.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    for tag, attrs in checker.tags:
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert not value.startswith(("http:", "https:", "//", "file:")), (tag, value)
    images = [attrs for tag, attrs in checker.tags if tag == "img"]
    assert all(a["src"].startswith("data:image/png;base64,") for a in images)
    alts = " ".join(a["alt"] for a in images)
    for split in ("val", "test"):  # showers, the 24 statistics, response/resolution, PRD, ROC, separation
        for caption in (
            "Showers",
            "24 physical statistics",
            "response and resolution",
            "PRD",
            "ROC",
            "Separation",
        ):
            assert f"({split})" in alts and caption in alts, caption
    assert len(images) == 12


def test_report_names_every_value_of_the_json(all_metrics):
    text, res = (all_metrics["dir"] / "report.html").read_text(), all_metrics["json"]
    for split in ("val", "test"):  # the score table
        for key in ("score", "ceiling", "auc_img", "auc_phys"):
            assert f"{res[split][key]:.4f}" in text
    scalars = list(flatten_scalars(res))
    assert len(scalars) > 300
    for key, value in scalars:  # each key path with its value as the JSON writes it
        assert f"<td>{html.escape(key)}</td><td>{html.escape(json.dumps(value))}</td>" in text, key
    assert "Conditional physics, val" in text and "cls_cc AUC, high [CaloChallenge]" in text


def test_report_path_refused_like_json(tiny_data_dir, inputs, tmp_path):
    pred, _ = inputs
    existing = tmp_path / "r.html"
    existing.write_text("keep")
    cases = [
        ([str(existing)], "already exists"),
        ([str(split_path(tiny_data_dir, "val", "solution")), "--overwrite"], "is also an input"),
        ([str(pred / "report.html"), "--overwrite"], "lies inside the input folder"),
        ([str(tmp_path / "same"), "--json", str(tmp_path / "same"), "--overwrite"], "is also an input"),
    ]
    for args, message in cases:
        rc, _, stderr = _run([*FAST, "--report", *args], tiny_data_dir, inputs)
        assert rc == 2 and message in stderr and "--report" in stderr, stderr
    assert existing.read_text() == "keep" and not (tmp_path / "same").exists()
