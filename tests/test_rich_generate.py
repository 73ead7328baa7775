"""python -m calogan.rich.generate: generated DLLs added to a track file (npz or ROOT), in chunks, atomically."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import uproot

from calogan.core.runtime import run_cli
from calogan.ecal.data import open_npz, save_npz
from calogan.rich import DLL_COLUMNS, SENTINEL
from calogan.rich import generate as rich_generate
from calogan.rich import simulate as rich_sim
from calogan.rich import train as rich_train
from calogan.rich.data import load_sample, sample_path
from calogan.rich.export import parity_error


@pytest.fixture(scope="module")
def run_dir(rich_kaon_run, tmp_path_factory):
    """RUN/{kaon,pion}/checkpoints/last.pt: the shared tiny kaon model with tie patterns and momentum scaling
    (every step of the exported graph) and a tiny plain pion model."""
    run = tmp_path_factory.mktemp("rich_generate_run")
    shutil.copytree(rich_kaon_run, run / "kaon")
    pion_data = tmp_path_factory.mktemp("rich_generate_pion")
    rich_sim.write_samples(pion_data, n=1000, seed=6, particles=("pion",), progress=False)
    cfg = rich_train.TrainConfig.from_preset(
        "tiny", particle="pion", data=str(pion_data), run_dir=str(run / "pion"), steps=10, weights="sweights"
    )
    cfg.progress = False
    rich_train.train(cfg)
    return run


@pytest.fixture(scope="module")
def tracks(rich_kaon_dir, tmp_path_factory):
    """1,500 tracks (the kaon test sample's kinematics) with a signed PDG id, an event number and a vector."""
    sample = load_sample(sample_path(rich_kaon_dir, "kaon", "test"))
    n = len(sample)
    rng = np.random.default_rng(1)
    arrays = {
        "eventNumber": np.arange(n, dtype=np.uint64) * 7,
        "P": sample.inputs[:, 0],
        "TRUEID": (rng.choice([211, 321], n) * rng.choice([-1, 1], n)).astype(np.int32),
        "ETA": sample.inputs[:, 1],
        "NTRACKS": sample.inputs[:, 2].astype(np.int32),
        "origin": rng.normal(size=(n, 3)),
    }
    return save_npz(tmp_path_factory.mktemp("rich_tracks") / "tracks.npz", arrays)


def generate(*argv: str) -> int:
    return run_cli(rich_generate.main, [str(a) for a in argv])


def dlls_of(arrays: dict) -> np.ndarray:
    return np.column_stack([arrays[c] for c in DLL_COLUMNS])


def test_output_holds_every_input_column_in_order_plus_the_dlls(run_dir, tracks, tmp_path):
    ckpt = run_dir / "kaon" / "checkpoints" / "last.pt"
    out = tmp_path / "out.npz"
    assert generate("--checkpoint", ckpt, "--tracks", tracks, "--out", out, "--chunk-size", 400) == 0
    inp, got = open_npz(tracks), open_npz(out)
    assert list(got) == [*inp, *DLL_COLUMNS]
    for key, value in inp.items():
        np.testing.assert_array_equal(got[key], value)
        assert got[key].dtype == value.dtype
    dlls = dlls_of(got)
    assert dlls.dtype == np.float32 and np.isfinite(dlls).all()
    missing = dlls == SENTINEL
    assert 0 < missing.all(1).sum() < 0.5 * len(dlls) and (missing.any(1) == missing.all(1)).all()
    assert (dlls[~missing.any(1)] > -500).all()
    again, other = tmp_path / "again.npz", tmp_path / "other.npz"
    assert generate("--checkpoint", ckpt, "--tracks", tracks, "--out", again, "--chunk-size", 400) == 0
    np.testing.assert_array_equal(dlls_of(open_npz(again)), dlls)  # the seed fixes the draws
    assert (
        generate("--checkpoint", ckpt, "--tracks", tracks, "--out", other, "--chunk-size", 400, "--seed", 1)
        == 0
    )
    assert not np.array_equal(dlls_of(open_npz(other)), dlls)


def test_root_tracks_with_analysis_names_in_mev(run_dir, tracks, tmp_path):
    """A ROOT tree with other branch names and P in MeV: the same DLLs as the npz file in GeV, every branch
    (types and fixed-size arrays included) copied to the ROOT output under the input's tree name."""
    inp = open_npz(tracks)
    branches = {("Brunel_P" if k == "P" else "Brunel_ETA" if k == "ETA" else k): v for k, v in inp.items()}
    branches["Brunel_P"] = inp["P"].astype(np.float64) * 1000.0
    root_in = tmp_path / "tracks.root"
    with uproot.recreate(root_in) as f:
        f.mktree(
            "Tuple/DecayTree",
            {k: (v.dtype, v.shape[1:]) if v.ndim > 1 else v.dtype for k, v in branches.items()},
        )
        f["Tuple/DecayTree"].extend(branches)
    ckpt = run_dir / "kaon" / "checkpoints" / "last.pt"
    mapping = ["--columns", "P=Brunel_P,ETA=Brunel_ETA", "--p-unit", "MeV"]
    root_out, npz_out, ref = tmp_path / "out.root", tmp_path / "from_root.npz", tmp_path / "ref.npz"
    argv = [
        "--checkpoint",
        ckpt,
        "--tracks",
        root_in,
        "--tree",
        "Tuple/DecayTree",
        *mapping,
        "--chunk-size",
        500,
    ]
    assert generate(*argv, "--out", root_out) == 0
    assert generate(*argv, "--out", npz_out) == 0
    assert generate("--checkpoint", ckpt, "--tracks", tracks, "--out", ref, "--chunk-size", 500) == 0
    want = dlls_of(open_npz(ref))
    with uproot.open(root_out) as f:
        assert f.keys(filter_classname="TTree", cycle=False) == ["Tuple/DecayTree"]
        tree = f["Tuple/DecayTree"]
        assert tree.keys() == [*branches, *DLL_COLUMNS]
        got = tree.arrays(tree.keys(), library="np")
    for key, value in branches.items():
        np.testing.assert_array_equal(got[key], value)
        assert got[key].dtype == value.dtype
    np.testing.assert_array_equal(dlls_of(got), want)
    np.testing.assert_array_equal(dlls_of(open_npz(npz_out)), want)


def test_onnx_backend_gives_the_eager_dlls(run_dir, tracks, tmp_path):
    ckpt = run_dir / "kaon" / "checkpoints" / "last.pt"
    outs = {}
    for backend in ("eager", "onnx"):
        outs[backend] = tmp_path / f"{backend}.npz"
        argv = ["--checkpoint", ckpt, "--tracks", tracks, "--out", outs[backend], "--backend", backend]
        assert generate(*argv, "--chunk-size", 700, "--threads", 1) == 0
    eager, onnx = dlls_of(open_npz(outs["eager"])), dlls_of(open_npz(outs["onnx"]))
    np.testing.assert_array_equal(eager == SENTINEL, onnx == SENTINEL)
    assert parity_error(onnx, eager) < 1e-4


def test_particle_column_gives_each_track_its_own_model(run_dir, tracks, tmp_path):
    """Signed PDG ids or particle names choose the model; a track's DLLs are those --particle gives it."""
    mixed = tmp_path / "mixed.npz"
    assert (
        generate("--run-dir", run_dir, "--particle-column", "TRUEID", "--tracks", tracks, "--out", mixed) == 0
    )
    inp, got = open_npz(tracks), open_npz(mixed)
    kaons = np.abs(inp["TRUEID"]) == 321
    kaon_file = save_npz(tmp_path / "kaons.npz", {k: v[kaons] for k, v in inp.items()})
    only = tmp_path / "only.npz"
    assert generate("--run-dir", run_dir, "--particle", "kaon", "--tracks", kaon_file, "--out", only) == 0
    np.testing.assert_array_equal(dlls_of(got)[kaons], dlls_of(open_npz(only)))
    named = save_npz(tmp_path / "named.npz", {**inp, "TRUEID": np.where(kaons, "kaon", "Pion")})
    by_name = tmp_path / "by_name.npz"
    assert (
        generate("--run-dir", run_dir, "--particle-column", "TRUEID", "--tracks", named, "--out", by_name)
        == 0
    )
    np.testing.assert_array_equal(dlls_of(open_npz(by_name)), dlls_of(got))
    # pion and kaon models differ: kaons above the kaon threshold have larger DLLk
    high = inp["P"] > 20
    ok = dlls_of(got)[:, 2] > SENTINEL
    assert np.median(got["RichDLLk"][kaons & high & ok]) != np.median(got["RichDLLk"][~kaons & high & ok])


def test_bad_input_exits_2_with_one_line_and_writes_nothing(run_dir, tracks, tmp_path, capsys):
    inp = open_npz(tracks)
    ckpt = str(run_dir / "kaon" / "checkpoints" / "last.pt")
    nan_p = inp["P"].copy()
    nan_p[1234] = np.nan  # in the third chunk of 500: the first two are generated before it is seen
    proton = inp["TRUEID"].copy()
    proton[5] = 2212
    files = {
        "nan.npz": {**inp, "P": nan_p},
        "neutron.npz": {**inp, "TRUEID": np.where(np.arange(len(proton)) == 9, 2112, inp["TRUEID"])},
        "proton.npz": {**inp, "TRUEID": proton},
        "clash.npz": {**inp, "RichDLLk": inp["ETA"]},
        "names.npz": {**inp, "kind": np.full(len(proton), "kaon")},
    }
    paths = {name: save_npz(tmp_path / "in" / name, arrays) for name, arrays in files.items()}
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "gen.npz"
    existing = out_dir / "existing.npz"
    existing.write_bytes(b"x")
    root_in = tmp_path / "in" / "tracks.root"
    with uproot.recreate(root_in) as f:
        branches = {"Brunel_P": inp["P"] * 1000.0, "ETA": inp["ETA"], "NTRACKS": inp["NTRACKS"]}
        f.mktree("Tuple/DecayTree", {k: v.dtype for k, v in branches.items()})
        f["Tuple/DecayTree"].extend(branches)
    one = ["--checkpoint", ckpt, "--tracks"]
    cases = [
        ([*one, tracks, "--columns", "P=Brunel_P", "--out", out], "missing column Brunel_P (column P)"),
        ([*one, paths["nan.npz"], "--out", out, "--chunk-size", 500], "column P holds NaN/Inf or P <= 0 (first at row 1234)"),
        ([*one, paths["nan.npz"], "--out", out_dir / "gen.root", "--chunk-size", 500], "first at row 1234"),
        (["--run-dir", run_dir, "--particle-column", "TRUEID", "--tracks", paths["neutron.npz"], "--out", out],
         "1 tracks of types no model covers (2112)"),
        (["--run-dir", run_dir, "--particle-column", "TRUEID", "--tracks", paths["proton.npz"], "--out", out],
         "has 1 proton tracks, but there is no proton model"),
        ([*one, paths["clash.npz"], "--out", out], "already has a column RichDLLk; name the generated one with --columns RichDLLk=NAME"),
        ([*one, paths["names.npz"], "--out", out_dir / "gen.root"], "column 'kind' has type <U4"),
        ([*one, tracks, "--out", existing], "already exists"),
        ([*one, tracks, "--out", out_dir / "gen.csv"], "unknown file type"),
        ([*one, tracks, "--out", out, "--particle", "kaon"], "--particle and --particle-column go with --run-dir"),
        (["--run-dir", run_dir, "--tracks", tracks, "--out", out], "exactly one of --particle P and --particle-column"),
        ([*one, tracks, "--tree", "t", "--out", out], "--tree t: goes with a ROOT file"),
        ([*one, tmp_path / "none.npz", "--out", out], "file not found"),
        ([*one, root_in, "--columns", "P=Brunel_P,ETA=Brunel_ETA", "--p-unit", "MeV", "--out", out_dir / "gen.root"],
         "tracks.root:Tuple/DecayTree: missing branch Brunel_ETA (column ETA)"),
        ([*one, root_in, "--tree", "DecayTree", "--out", out], "no tree 'DecayTree' (trees in the file: Tuple/DecayTree)"),
    ]  # fmt: skip
    for argv, message in cases:
        assert generate(*argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert [p.name for p in out_dir.iterdir()] == ["existing.npz"]  # no output, no temp file or folder
    assert existing.read_bytes() == b"x"


def test_a_file_without_tracks_gives_an_empty_output(run_dir, tracks, tmp_path, capsys):
    """Zero rows (npz or an empty ROOT tree): a valid output with every input column and the five DLLs, no rows."""
    inp = open_npz(tracks)
    empty = {k: v[:0] for k, v in inp.items()}
    npz_in = save_npz(tmp_path / "empty.npz", empty)
    root_in = tmp_path / "empty.root"
    with uproot.recreate(root_in) as f:
        f.mktree(
            "DecayTree", {k: (v.dtype, v.shape[1:]) if v.ndim > 1 else v.dtype for k, v in empty.items()}
        )
    ckpt = run_dir / "kaon" / "checkpoints" / "last.pt"
    runs = [
        (npz_in, "a.npz", ["--checkpoint", ckpt]),
        (npz_in, "b.root", ["--checkpoint", ckpt, "--backend", "onnx"]),
        (npz_in, "c.npz", ["--run-dir", run_dir, "--particle-column", "TRUEID"]),
        (root_in, "d.root", ["--run-dir", run_dir, "--particle", "pion"]),
        (root_in, "e.npz", ["--run-dir", run_dir, "--particle-column", "TRUEID"]),
    ]
    for source, name, argv in runs:
        assert generate(*argv, "--tracks", source, "--out", tmp_path / name) == 0, argv
        assert ": 0 tracks, 0 without RICH" in capsys.readouterr().out
        if name.endswith(".npz"):
            got = open_npz(tmp_path / name)
        else:
            with uproot.open(tmp_path / name) as f:
                tree = f["DecayTree"]
                got = tree.arrays(tree.keys(), library="np")
        assert list(got) == [*inp, *DLL_COLUMNS], name
        assert all(len(v) == 0 for v in got.values())
        assert all(got[c].dtype == np.float32 for c in DLL_COLUMNS)
        assert got["origin"].shape == (0, 3) and got["TRUEID"].dtype == np.int32
