"""ONNX export and the torch-free ONNX Runtime engine: parity with torch, the CSV, the imports, the errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from stew.cli import app
from stew.data.formats.native import write_native
from stew.deploy import export, predict_dataset
from stew.deploy.integrity import artefact_digests
from stew.deploy.onnx import max_difference, to_onnx
from stew.models.specs import ConflictNetSpec, RawAudioSpec
from tests.conftest import tiny_clips, tiny_frames, tiny_utterances, tiny_waves
from tests.onnx_models import make_fused_run, make_run, random_model, small_spec

runner = CliRunner()

KINDS = ["unimodal", "cmstew", "linear", "sew", "emobed", "cermtl"]
# Real steps of each padded batch: single steps, ragged batches, and longer sequences than the trace saw.
BATCHES = ([1], [5], [37, 12, 3], [80, 80, 1], [150])


def one_line_error(res):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


# Every kind as a regression model; the other tasks' activations (sigmoid, softmax) on two kinds each.
STUDENTS = [(k, "regression") for k in KINDS] + [("unimodal", "binary"), ("sew", "binary"),
                                                  ("cermtl", "multiclass"), ("emobed", "multiclass")]


@pytest.mark.parametrize("kind,task", STUDENTS)
def test_onnx_runtime_equals_torch_for_every_student(kind, task):
    """Every deployable student kind and task: ONNX Runtime reproduces torch to 1e-5 on the real steps of
    random padded batches of several lengths (export itself refuses a graph beyond 1e-4)."""
    spec = small_spec(kind, d_in=6, task=task, targets=("y", "z") if task == "regression" else ("y",),
                      n_classes=3 if task == "multiclass" else None)
    model = random_model(spec)
    assert max_difference(model, to_onnx(model), BATCHES) <= 1e-5


@pytest.mark.parametrize("kind", ["cmstew", "emobed"])
def test_onnx_pooling_students_equal_torch(kind):
    """One prediction per sequence (the modality's present mask is pooled): padded clips give their own output."""
    model = random_model(small_spec(kind, d_in=4, task="multiclass", n_classes=3, pool="mean"))
    assert max_difference(model, to_onnx(model), BATCHES) <= 1e-5


def test_conflictnet_exports_and_equals_torch():
    """The raw-waveform ConflictNET (conv, BatchNorm, LSTMs, additive attention, last real step): clips of
    several lengths, padded, one output each."""
    from stew.models.conflictnet import RawAudioModel

    for ablation in ("+gap",):  # ConflictNET itself (last real step) is exported in the CSV test below
        spec = RawAudioSpec(modality="audio", targets=["y"], net=ConflictNetSpec(samples=8000, ablation=ablation))
        torch.manual_seed(0)
        model = RawAudioModel(spec).eval()
        assert max_difference(model, to_onnx(model), ([1], [3, 1], [9, 4, 2])) <= 1e-5


CASES = {
    # regression at 25 Hz: 2 s windows (the last one short), a label delay, AVEC post-processing, label scale
    "frames-cmstew": (tiny_frames, "b", "cmstew", dict(window_steps=50, delay=3, label_scale={"original": [-10, 10]},
                      postprocess={"y": {"median_frames": 5, "centre": True, "scale": False, "shift_frames": 2}})),
    "frames-cermtl": (tiny_frames, "a", "cermtl", dict(window_steps=40, delay=0)),  # feature images: context
    "frames-sew": (tiny_frames, "b", "sew", dict(window_steps=50)),
    "utterances-binary": (tiny_utterances, "audio", "unimodal", dict()),  # whole videos, ragged
    "clips-multiclass": (tiny_clips, "long", "emobed", dict()),  # one label per clip, own clock, pooled
    "waves-conflictnet": (lambda: tiny_waves(n=10), "audio", "conflictnet", dict(label_scale={"original": [-10, 10]})),
}


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_and_torch_engines_write_the_same_csv(case, tmp_path):
    """`stew predict --engine onnx` and `--engine torch` on the same model folder and data: same rows,
    same columns, numbers equal to 1e-5 (windows, delay, stitching, post-processing, label scale)."""
    make_ds, modality, kind, kw = CASES[case]
    ds = make_ds()
    pool = "mean" if ds.label_level == "sequence" else "none"
    if kind == "conflictnet":
        spec = RawAudioSpec(modality=modality, targets=ds.targets, net=ConflictNetSpec(samples=8000))
    else:
        spec = small_spec(kind, d_in=ds.modalities[modality], task=ds.task, targets=tuple(ds.targets),
                          n_classes=ds.n_classes, pool=pool)
    make_run(tmp_path / "run", spec, ds, modality, **kw)
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "model")])
    assert res.exit_code == 0, res.output
    data = write_native(ds, tmp_path / "data")
    csvs = {}
    for engine in ("onnx", "torch"):
        out = tmp_path / f"{engine}.csv"
        res = runner.invoke(app, ["predict", str(tmp_path / "model"), "--data", str(data), "--out", str(out),
                                  "--engine", engine])
        assert res.exit_code == 0, res.output
        csvs[engine] = pd.read_csv(out)
    a, b = csvs["onnx"], csvs["torch"]
    assert list(a.columns) == list(b.columns) and len(a) == len(b) == ds.n_steps()
    num = [c for c in a.columns if c.startswith(("pred", "prob"))]
    pd.testing.assert_frame_equal(a.drop(columns=num), b.drop(columns=num))
    np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float), atol=1e-5, rtol=0)
    if case == "frames-cmstew":
        assert "pred_y_original" in a.columns
    # auto picks ONNX Runtime when the folder has model.onnx
    auto = predict_dataset(tmp_path / "model", data)
    np.testing.assert_allclose(auto[num].to_numpy(float), a[num].to_numpy(float), atol=1e-6)


FUSED = {
    "clips-intra-knn": (tiny_clips, "intra", "knn"),  # per clip, own clocks, 'short' absent from every 8th
    "clips-cross-zero": (tiny_clips, "cross+intra", "zero"),
    "utterances-per-step": (tiny_utterances, "intra", "zero"),  # one label per utterance: no time pooling
}


@pytest.mark.parametrize("case", list(FUSED))
def test_fusion_models_export_and_engines_agree(case, tmp_path):
    """Attention fusion (with KNN imputation) exports to ONNX; both engines give the same CSV, also on data
    that hold only one of its modalities (the other absent, imputed)."""
    make_ds, fusion, impute = FUSED[case]
    ds = make_ds()
    make_fused_run(tmp_path / "run", ds, fusion, impute)
    export(tmp_path / "run", tmp_path / "model")
    assert (tmp_path / "model" / "model.onnx").is_file()
    first = next(iter(ds.modalities))
    for name, data in {"all": ds, "one": ds.select_modalities([first])}.items():
        a = predict_dataset(tmp_path / "model", data, engine="onnx")
        b = predict_dataset(tmp_path / "model", data, engine="torch")
        num = [c for c in a.columns if c.startswith(("pred", "prob"))]
        pd.testing.assert_frame_equal(a.drop(columns=num), b.drop(columns=num))
        np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float), atol=1e-5, rtol=0, err_msg=name)


def test_onnx_predict_imports_neither_torch_nor_lightning(tmp_path):
    """A deployment machine needs no torch: `stew predict` on an ONNX model (in a fresh interpreter)."""
    ds = tiny_frames()
    make_run(tmp_path / "run", small_spec("cmstew", d_in=5), ds, "b", window_steps=50)
    export(tmp_path / "run", tmp_path / "model", fmt="onnx")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model.json", "model.onnx"]
    data = write_native(ds, tmp_path / "data")
    code = (
        "import sys\n"
        "from stew.cli import app\n"
        f"try:\n    app(['predict', {str(tmp_path / 'model')!r}, '--data', {str(data)!r}, '--out', "
        f"{str(tmp_path / 'p.csv')!r}])\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "import stew.deploy.serve\n"
        "print(json.dumps(['torch' in sys.modules, 'lightning' in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'torchmetrics'))[:5]]))\n"
    ).replace("import sys\n", "import json, sys\n", 1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [False, False, []]
    assert len(pd.read_csv(tmp_path / "p.csv")) == ds.n_steps()


def rehash(folder: Path) -> None:
    """Record the current digests in model.json, as if the folder had been written so: the checks behind the
    digests (stew.deploy.integrity) then see the damage."""
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "sha256": artefact_digests(folder)}))


def test_export_formats_and_one_line_errors(tmp_path, clips_dir):
    ds = tiny_frames()
    run = make_run(tmp_path / "run", small_spec("sew", d_in=5), ds, "b", window_steps=50)
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "st"), "--format", "safetensors"])
    assert res.exit_code == 0 and sorted(p.name for p in (tmp_path / "st").iterdir()) == ["model.json",
                                                                                         "model.safetensors"]
    # bad format, missing run, an ONNX-only folder with --engine torch, --engine onnx without model.onnx
    line = one_line_error(runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "x"), "--format", "pt"]))
    assert "--format" in line and not (tmp_path / "x").exists()
    line = one_line_error(runner.invoke(app, ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]))
    assert "nope" in line and not (tmp_path / "x").exists()
    export(run, tmp_path / "onnx-only", fmt="onnx")
    data = write_native(ds, tmp_path / "data")
    line = one_line_error(runner.invoke(app, ["predict", str(tmp_path / "onnx-only"), "--data", str(data), "--out",
                                              str(tmp_path / "p.csv"), "--engine", "torch"]))
    assert "model.safetensors" in line and not (tmp_path / "p.csv").exists()
    line = one_line_error(runner.invoke(app, ["predict", str(tmp_path / "st"), "--data", str(data), "--out",
                                              str(tmp_path / "p.csv"), "--engine", "onnx"]))
    assert "model.onnx" in line and not (tmp_path / "p.csv").exists()
    # a corrupt graph is one line, never a traceback (its digest re-recorded: the graph's own check runs)
    (tmp_path / "onnx-only" / "model.onnx").write_bytes(b"\x80\x04not a graph")
    rehash(tmp_path / "onnx-only")
    line = one_line_error(runner.invoke(app, ["predict", str(tmp_path / "onnx-only"), "--data", str(data), "--out",
                                              str(tmp_path / "p.csv")]))
    assert "not a readable ONNX model" in line and not (tmp_path / "p.csv").exists()
    # a valid graph of another model (another feature dimension) beside this model.json
    other = make_run(tmp_path / "run-other", small_spec("sew", d_in=4), ds, "a", window_steps=50)
    export(other, tmp_path / "other", fmt="onnx")
    (tmp_path / "onnx-only" / "model.onnx").write_bytes((tmp_path / "other" / "model.onnx").read_bytes())
    rehash(tmp_path / "onnx-only")
    line = one_line_error(runner.invoke(app, ["predict", str(tmp_path / "onnx-only"), "--data", str(data), "--out",
                                              str(tmp_path / "p.csv")]))
    assert "does not match model.json" in line and not (tmp_path / "p.csv").exists()
    # the wrong data for the model: same check as the torch engine
    line = one_line_error(runner.invoke(app, ["predict", str(tmp_path / "st"), "--data", str(clips_dir), "--out",
                                              str(tmp_path / "p.csv"), "--engine", "torch"]))
    export(run, tmp_path / "both")
    line2 = one_line_error(runner.invoke(app, ["predict", str(tmp_path / "both"), "--data", str(clips_dir), "--out",
                                               str(tmp_path / "p.csv")]))
    assert "modality 'b'" in line and "modality 'b'" in line2
