"""RICH files in ROOT and npz: column mapping, units, tables read whole or in chunks, every command on ROOT input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import uproot

from calogan.core.errors import InputError
from calogan.core.runtime import run_cli
from calogan.ecal.data import open_npz, save_npz
from calogan.rich import COLUMNS, SAMPLES
from calogan.rich import evaluate as rich_eval
from calogan.rich import simulate as rich_sim
from calogan.rich import train as rich_train
from calogan.rich import transfer as rich_transfer
from calogan.rich.data import load_sample, sample_path
from calogan.rich.io import ColumnMap, SampleSource, open_table, write_table
from calogan.rich.models import load_rich_model

#: the names of the LHCb RICH calibration ntuples (P in MeV)
BRUNEL = {"P": "Brunel_P", "ETA": "Brunel_ETA", "NTRACKS": "nTracks_Brunel", "sWeight": "probe_sWeight"}
BRUNEL_SPEC = ",".join(f"{k}={v}" for k, v in BRUNEL.items())


def brunel_columns(arrays: dict) -> dict:
    """A sample's columns under the Brunel names, P in MeV (float64, so MeV / 1000 gives back the GeV float32)."""
    out = {BRUNEL.get(k, k): v for k, v in arrays.items()}
    out["Brunel_P"] = arrays["P"].astype(np.float64) * 1000.0
    return out


@pytest.fixture(scope="module")
def root_file(rich_kaon_dir, tmp_path_factory):
    """One ROOT file holding the kaon samples as trees calib/kaon_{sample}, written with uproot directly."""
    path = tmp_path_factory.mktemp("rich_root") / "calib.root"
    with uproot.recreate(path) as f:
        for sample in SAMPLES:
            write_ttree(
                f,
                f"calib/kaon_{sample}",
                brunel_columns(open_npz(sample_path(rich_kaon_dir, "kaon", sample))),
            )
    return path


def write_ttree(f, name: str, arrays: dict) -> None:
    """A TTree in an open uproot file (assigning a dict would write an RNTuple)."""
    f.mktree(name, {k: (v.dtype, v.shape[1:]) if v.ndim > 1 else v.dtype for k, v in arrays.items()})
    f[name].extend(arrays)


def test_column_map_from_option_and_file(tmp_path):
    cm = ColumnMap.parse(BRUNEL_SPEC, "MeV")
    assert cm.name("P") == "Brunel_P" and cm.name("RichDLLk") == "RichDLLk" and cm.p_unit == "MeV"
    assert ColumnMap.parse(cm.spec(), "MeV") == cm
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({**BRUNEL, "p_unit": "MeV"}))
    assert ColumnMap.parse(str(mapping)) == cm
    assert ColumnMap.parse(str(mapping), "GeV").p_unit == "GeV"  # the option wins over the file
    np.testing.assert_array_equal(cm.p_to_gev(np.array([4500.0])), [4.5])
    assert ColumnMap.parse(None) == ColumnMap() and ColumnMap().spec() == ""
    bad = [("Momentum=x", "unknown column 'Momentum'"), ("P", "no such mapping file"), ("P=x,ETA=x", "same name"),
           ("P=", "not NAME=branch")]  # fmt: skip
    for spec, message in bad:
        with pytest.raises(InputError, match=message):
            ColumnMap.parse(spec)
    mapping.write_text(json.dumps({"P": "x", "p_unit": "TeV"}))
    with pytest.raises(InputError, match="GeV or MeV"):
        ColumnMap.parse(str(mapping))


@pytest.mark.parametrize("suffix", ["npz", "root"])
def test_tables_read_whole_and_in_chunks_alike(tmp_path, suffix):
    rng = np.random.default_rng(0)
    arrays = {"b": rng.integers(-5, 5, 1001).astype(np.int16), "a": rng.normal(size=1001),
              "v": rng.normal(size=(1001, 3)).astype(np.float32), "flag": rng.random(1001) < 0.5}  # fmt: skip
    path = tmp_path / f"t.{suffix}"
    schema = {k: np.dtype((v.dtype, v.shape[1:])) if v.ndim > 1 else v.dtype for k, v in arrays.items()}
    chunks = ({k: v[i : i + 300] for k, v in arrays.items()} for i in range(0, 1001, 300))
    write_table(path, chunks, schema, 1001, tree="dir/T")
    with open_table(path, "dir/T" if suffix == "root" else None) as table:
        assert list(table.columns) == list(arrays) and table.n_rows() == 1001  # the writer's column order
        whole = table.read(list(arrays))
        parts = list(table.iterate(list(arrays), 256))
    assert [len(p["a"]) for p in parts] == [256, 256, 256, 233]
    for k, v in arrays.items():
        np.testing.assert_array_equal(whole[k], v)
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), v)
        assert whole[k].dtype == v.dtype


def test_writer_leaves_nothing_when_a_chunk_fails(tmp_path):
    def chunks():
        yield {"a": np.zeros(10)}
        raise InputError("bad chunk")

    for suffix in ("npz", "root"):
        with pytest.raises(InputError, match="bad chunk"):
            write_table(tmp_path / f"t.{suffix}", chunks(), {"a": np.dtype(np.float64)}, 20)
    assert list(tmp_path.iterdir()) == []


def test_root_sample_reads_like_the_npz_one(rich_kaon_dir, root_file):
    """Brunel names and MeV in a ROOT tree give the very sample the npz file holds."""
    want = load_sample(sample_path(rich_kaon_dir, "kaon", "test"))
    source = SampleSource(str(root_file), "calib/{particle}_{sample}", ColumnMap.parse(BRUNEL_SPEC, "MeV"))
    got = source.load("kaon", "test")
    for field in ("inputs", "dlls", "weights"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    assert got.path == root_file
    with pytest.raises(
        InputError, match=r"calib/kaon_test: missing branches P, ETA, NTRACKS, sWeight \(name the"
    ):
        SampleSource(str(root_file), "calib/{particle}_{sample}").load("kaon", "test")
    misnamed = ColumnMap.parse(BRUNEL_SPEC + ",ETA=Brunel_Eta", "MeV")
    with pytest.raises(
        InputError, match=r"calib/kaon_test: missing branch Brunel_Eta \(column ETA\) \(name the"
    ):
        SampleSource(str(root_file), "calib/kaon_test", misnamed).load("kaon", "test")
    with pytest.raises(InputError, match="choose the tree with --tree"):
        SampleSource(str(root_file)).load("kaon", "test")
    with pytest.raises(
        InputError, match=r"no tree 'calib/kaon_tset' \(trees in the file: calib/kaon_train, calib/kaon_test"
    ):
        SampleSource(str(root_file), "calib/kaon_tset").load("kaon", "test")


def test_simulate_writes_root_that_train_evaluate_and_transfer_read(
    rich_kaon_dir, root_file, tmp_path, capsys
):
    """rich.simulate --format root with analysis names in MeV; the other commands read it back with the same
    mapping (a folder of ROOT files, or one file with {particle}/{sample} in the tree), and the ROOT reports
    equal the npz ones."""
    data = tmp_path / "data"
    argv = ["--out", str(data), "--n", "300", "--particles", "kaon", "--format", "root", "--tree", "DecayTree",
            "--columns", BRUNEL_SPEC, "--p-unit", "MeV"]  # fmt: skip
    assert run_cli(rich_sim.main, argv) == 0
    path = data / "rich_kaon_train.root"
    with uproot.open(path) as f:
        tree = f["DecayTree"]
        assert {"Brunel_P", "nTracks_Brunel", "probe_sWeight", "RichDLLk", "Mass", "IsSignal"} <= set(
            tree.keys()
        )
        p_mev = tree["Brunel_P"].array(library="np")
    assert 3000.0 <= p_mev.min() and p_mev.max() <= 200000.0  # the simulator's 3-200 GeV, in MeV
    manifest = json.loads((data / "rich_manifest.json").read_text())
    assert manifest["tree"] == "DecayTree" and manifest["p_unit"] == "MeV"
    assert not list(data.glob("*.npz"))

    run = tmp_path / "run"
    train_argv = ["--particle", "kaon", "--data", str(data), "--columns", BRUNEL_SPEC, "--p-unit", "MeV",
                  "--preset", "tiny", "--steps", "3", "--weights", "sweights", "--run-dir", str(run)]  # fmt: skip
    assert run_cli(rich_train.main, train_argv) == 0
    model = load_rich_model(run / "checkpoints" / "last.pt")
    assert model.meta["config"]["columns"] == BRUNEL_SPEC and model.meta["config"]["p_unit"] == "MeV"
    assert model.qt_in.qt.quantiles_[:, 0].max() < np.log(201.0)  # log P of GeV values, not MeV
    # without the mapping every renamed branch is missing: named before any training starts
    assert (
        run_cli(rich_train.main, [*train_argv[:4], "--preset", "tiny", "--run-dir", str(tmp_path / "r2")])
        == 2
    )
    assert "missing branches P, ETA, NTRACKS, sWeight" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()

    ckpt = str(run / "checkpoints" / "last.pt")
    common = ["--checkpoint", ckpt, "--classifier-iters", "5", "--no-plots"]
    npz_out, root_out = tmp_path / "eval_npz", tmp_path / "eval_root"
    assert run_cli(rich_transfer.main, [*common, "--data", str(rich_kaon_dir), "--out", str(npz_out)]) == 0
    root_args = ["--data", str(root_file), "--tree", "calib/{particle}_{sample}", "--columns", BRUNEL_SPEC,
                 "--p-unit", "MeV"]  # fmt: skip
    assert run_cli(rich_transfer.main, [*common, *root_args, "--out", str(root_out)]) == 0
    for sample in ("test", "transfer"):
        a = json.loads((npz_out / sample / "report.json").read_text())
        b = json.loads((root_out / sample / "report.json").read_text())
        assert a["summary"] == b["summary"] and a["n_events"] == b["n_events"]
        assert b["sample"] == str(root_file)
    eval_out, mapping = tmp_path / "eval_one", tmp_path / "brunel.json"
    mapping.write_text(json.dumps({**BRUNEL, "p_unit": "MeV"}))
    root_args = ["--data", str(root_file), "--tree", "calib/kaon_{sample}", "--columns", str(mapping)]
    assert run_cli(rich_eval.main, [*common, *root_args, "--sample", "transfer", "--out", str(eval_out)]) == 0
    rep = json.loads((eval_out / "report.json").read_text())
    assert rep["summary"] == json.loads((npz_out / "transfer" / "report.json").read_text())["summary"]


def test_root_input_errors_exit_2_naming_the_problem(rich_kaon_dir, root_file, tmp_path, capsys):
    ckpt_free = [
        "--data",
        str(root_file),
        "--out",
        str(tmp_path / "o"),
        "--classifier-iters",
        "5",
        "--no-plots",
    ]
    cases = [
        # one tree for two samples: the transfer test would compare a sample with itself
        (rich_transfer.main, ["--checkpoint", "x.pt", *ckpt_free, "--tree", "calib/kaon_test"], "put {sample}"),
        # five particles from one tree
        (rich_train.main, ["--particle", "all", "--data", str(root_file), "--tree", "calib/kaon_train"],
         "put {particle}"),
        (rich_train.main, ["--particle", "kaon", "--data", str(root_file), "--tree", "calib/kaon_train",
                           "--columns", "P=Brunel_P,ETA=Brunel_ETA,NTRACKS=nTracks_Brunel", "--p-unit", "MeV",
                           "--run-dir", str(tmp_path / "r")], "missing branch sWeight"),
        (rich_train.main, ["--particle", "kaon", "--data", str(root_file), "--tree", "nope"], "no tree 'nope'"),
        (rich_train.main, ["--particle", "kaon", "--data", str(tmp_path / "none.root"), "--tree", "t"],
         "file not found"),
        (rich_train.main, ["--particle", "kaon", "--data", str(root_file), "--p-unit", "keV"], "--p-unit"),
    ]  # fmt: skip
    for main, argv, message in cases:
        assert run_cli(main, argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    rntuple = tmp_path / "rntuple.root"
    with uproot.recreate(rntuple) as f:
        f["ntuple"] = {"P": np.ones(20)}  # uproot writes a dict as an RNTuple
    assert run_cli(rich_train.main, ["--particle", "kaon", "--data", str(rntuple)]) == 2
    assert "holds RNTuples (ntuple), not TTrees" in capsys.readouterr().err
    rntuple.unlink()
    not_root = tmp_path / "fake.root"
    not_root.write_bytes(b"not a ROOT file at all" * 10)
    assert run_cli(rich_train.main, ["--particle", "kaon", "--data", str(not_root)]) == 2
    assert "not a readable ROOT file" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name != "fake.root"]


def test_npz_columns_can_be_renamed_too(rich_kaon_dir, tmp_path):
    """The mapping works for npz files as well (one .npz file as --data)."""
    arrays = brunel_columns(open_npz(sample_path(rich_kaon_dir, "kaon", "test")))
    path = save_npz(tmp_path / "kaon_calib.npz", arrays)
    got = SampleSource(str(path), None, ColumnMap.parse(BRUNEL_SPEC, "MeV")).load("kaon", "test")
    np.testing.assert_array_equal(got.inputs, load_sample(sample_path(rich_kaon_dir, "kaon", "test")).inputs)
    with pytest.raises(InputError, match=r"kaon_calib.npz: missing columns P, ETA, NTRACKS, sWeight"):
        SampleSource(str(path)).load("kaon", "test")
    with pytest.raises(InputError, match="--tree t: goes with a ROOT file"):
        SampleSource(str(path), "t").load("kaon", "test")
    assert set(COLUMNS) - set(BRUNEL) <= set(arrays)
