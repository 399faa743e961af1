"""Training and everything after it with tensors on a CUDA GPU (docs/devices.md): every method trains with
``accelerator: gpu``; its predictions, exported model (ONNX and safetensors), latents, KNN memory bank and LIME
agree with the CPU's. Skipped on a machine without a CUDA GPU: run ``pytest -m gpu`` on one."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from stew.config import TrainConfig
from stew.data.preprocess import device_of, predict_windows
from stew.deploy import export, load_model, predict_dataset, save_model
from stew.deploy.onnx import to_onnx
from stew.errors import DataError
from stew.methods.base import STUDENT_KNOBS
from stew.training.evaluate import validation_latents
from stew.training.run import run
from tests.conftest import FAST, tiny_clips, tiny_frames, tiny_waves

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pytest -m gpu on one)")]

# GPU float32 (cuDNN may use TF32 in convolutions) against the CPU: agreement to a few thousandths.
CLOSE = {"rtol": 1e-2, "atol": 3e-3}
NO_STUDENT = {k: v for k, v in FAST.items() if k not in STUDENT_KNOBS}
SETUPS = {
    "unimodal": (tiny_frames, {**FAST, "modality": "a"}),
    "cmstew": (tiny_frames, {**FAST, "method": "cmstew", "recipe": "paper", "modality": "b", "teacher": "a",
                             "cmstew": {"alpha": 0.1, "beta": 0.1}}),
    "sew": (tiny_frames, {**FAST, "method": "sew", "modality": "b", "teacher": "a", "max_epochs": 2}),
    "emobed": (tiny_frames, {**FAST, "method": "emobed", "modality": "b", "teacher": "a", "emobed": {"units": 8}}),
    "cermtl": (tiny_frames, {**FAST, "method": "cermtl", "modality": "a",
                             "cermtl": {"image_steps": 6, "image_stride_s": 0.08}}),
    "fusion": (tiny_clips, {**NO_STUDENT, "method": "fusion", "max_epochs": 4,
                            "fusion": {"gru_units": 8, "heads": 2, "clf_hidden": 16, "moddrop_p": 0.3,
                                       "impute": "knn", "k": 3}}),
    "conflictnet": (tiny_waves, {**NO_STUDENT, "method": "conflictnet", "modality": "audio", "max_epochs": 2}),
}


def train(tmp_path, name, **kw):
    make, base = SETUPS[name]
    ds = make()
    cfg = TrainConfig(data=tmp_path, out=tmp_path / name, accelerator="gpu", **{**base, **kw})
    return run(cfg, ds), ds


def pred_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame if c.startswith(("pred_", "prob"))]


@pytest.mark.parametrize("name", list(SETUPS))
def test_every_method_trains_on_the_gpu_and_deploys_anywhere(tmp_path, name):
    r, ds = train(tmp_path, name)
    assert r["device"]["accelerator"] == "gpu" and r["device"]["name"] == torch.cuda.get_device_name(0)
    assert r.model is not None and device_of(r.model).type == "cpu"  # the result is handed back in host memory
    out = tmp_path / name
    preds = pd.read_csv(out / "predictions.csv")
    assert np.isfinite(preds[pred_columns(preds)].to_numpy()).all()
    # The model folder loads on the CPU (weights saved from the CPU) and predicts what the GPU predicted.
    model, _ = load_model(out / "model")
    assert device_of(model).type == "cpu"
    again = predict_dataset(out / "model", ds, engine="torch").merge(preds[["sequence", "step"]],
                                                                     on=["sequence", "step"])
    mine = preds.merge(again, on=["sequence", "step"], suffixes=("", "_cpu"))
    for c in pred_columns(preds):
        if f"{c}_cpu" in mine:
            np.testing.assert_allclose(mine[f"{c}_cpu"], mine[c], **CLOSE)
    # ONNX export of the run's model folder (checked against torch inside).
    export(out, tmp_path / f"{name}-export")
    assert (tmp_path / f"{name}-export" / "model.onnx").is_file()


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("name", ["unimodal", "cmstew"])
def test_mixed_precision_on_the_gpu(tmp_path, name, precision):
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    r, _ = train(tmp_path, name, precision=precision)
    assert r["device"]["precision"] == precision
    assert all(np.isfinite(v) for v in r["val"].values())


def test_a_seed_gives_the_same_gpu_run_twice(tmp_path):
    a, _ = train(tmp_path / "a", "unimodal", arch="bigru")
    b, _ = train(tmp_path / "b", "unimodal", arch="bigru")
    assert a["val"] == b["val"] and a["test"] == b["test"]
    pa, pb = pd.read_csv(tmp_path / "a" / "unimodal" / "predictions.csv"), pd.read_csv(
        tmp_path / "b" / "unimodal" / "predictions.csv")
    pd.testing.assert_frame_equal(pa, pb)


def test_more_devices_than_gpus_is_refused(tmp_path):
    with pytest.raises(DataError, match="--devices"):
        train(tmp_path, "unimodal", devices=torch.cuda.device_count() + 1)
    assert not (tmp_path / "unimodal").exists()


def test_knn_bank_latents_and_export_from_cuda_tensors(tmp_path):
    r, _ = train(tmp_path, "fusion")
    method, bundle = r.model, r.bundle
    cpu_latents = validation_latents(method, bundle)
    model = method.student
    seqs = bundle.val + bundle.test
    model.absent = frozenset({"short"})  # every clip without 'short': the KNN bank fills it in
    cpu = predict_windows(model, seqs, bundle.eval_win, bundle.k_delay)
    model.cuda()
    assert device_of(model).type == "cuda"
    gpu = predict_windows(model, seqs, bundle.eval_win, bundle.k_delay)
    for a, b in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(b, a, **CLOSE)
    model.absent = frozenset()
    gpu_latents = validation_latents(method.cuda(), bundle)
    np.testing.assert_allclose(gpu_latents["latent"], cpu_latents["latent"], **CLOSE)
    # Export and save from a model on the GPU: CPU weights, and the caller's model stays where it was.
    from stew.deploy.onnx import fused_to_onnx

    assert fused_to_onnx(model)[:2] and device_of(model).type == "cuda"
    save_model(model, bundle, r.cfg, tmp_path / "saved")
    loaded, _ = load_model(tmp_path / "saved")
    assert device_of(loaded).type == "cpu"


def test_single_modality_export_from_a_cuda_model(tmp_path):
    r, _ = train(tmp_path, "unimodal")
    student = r.model.student.cuda()
    assert to_onnx(student)[:2] and device_of(student).type == "cuda"


def test_lime_on_the_gpu_explains_as_on_the_cpu(tmp_path):
    from stew.api import synth_data
    from stew.eval.explain import explain_model

    data = synth_data("conflict", tmp_path / "data", clips=8, clip_s=3)
    r = run(TrainConfig(data=data, method="conflictnet", max_epochs=1, out=tmp_path / "run", accelerator="gpu",
                        progress=False))
    assert r["device"]["accelerator"] == "gpu"
    export(tmp_path / "run", tmp_path / "model")
    wav = next(data.glob("*.wav"))
    cpu, _, _ = explain_model(tmp_path / "model", wav, tmp_path / "e-cpu", n_samples=40, device="cpu")
    gpu, _, _ = explain_model(tmp_path / "model", wav, tmp_path / "e-gpu", n_samples=40, device="cuda")
    assert gpu.prediction == pytest.approx(cpu.prediction, abs=3e-3)
    w_cpu = {s["index"]: s["weight"] for s in json.loads((tmp_path / "e-cpu" / "explanation.json").read_text())[
        "segments"]}
    w_gpu = {s["index"]: s["weight"] for s in json.loads((tmp_path / "e-gpu" / "explanation.json").read_text())[
        "segments"]}
    assert w_gpu.keys() == w_cpu.keys()
    np.testing.assert_allclose([w_gpu[i] for i in w_cpu], list(w_cpu.values()), rtol=5e-2, atol=1e-3)
