"""SEW and CM-StEW on tiny data: what trains, what is frozen, what is exported."""

import json

import pytest
import torch
from safetensors.torch import load_file

from stew.config import CMStEWConfig, TrainConfig
from stew.data.splits import carve_validation
from stew.errors import DataError
from stew.methods import prepare
from stew.methods.cmstew import build as build_cmstew
from stew.methods.sew import build as build_sew
from stew.training import fit, make_bundle, resolve, run
from tests.conftest import FAST, tiny_frames

SEW_FAST = {**FAST, "max_epochs": 1}


def _bundle(cfg, ds):
    cfg = resolve(cfg, ds)
    return cfg, make_bundle(cfg, carve_validation(ds, 4, 0), [cfg.modality, cfg.teacher])


def test_sew_modules_sizes_and_gradients_reach_both_encoders():
    ds = tiny_frames()
    cfg, bundle = _bundle(TrainConfig(data="x", method="sew", modality="b", teacher="a", **SEW_FAST), ds)
    sew = build_sew(cfg, bundle, None)
    assert sew.weak_encoder.net[-1].out_features == 128  # latent 128 without video_app
    assert sew.strong_decoder.net[-1].out_features == 4 and sew.strong_autodecoder.net[-1].out_features == 4
    loss, parts = sew.training_loss(_collate(bundle))
    loss.backward()
    assert set(parts) == {"prediction", "translation", "autoencode", "alignment"}
    for name in ("weak_encoder", "strong_encoder", "strong_decoder", "strong_autodecoder", "regressor"):
        grads = [p.grad for p in getattr(sew, name).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


def _collate(bundle):
    from stew.data.preprocess import WindowDataset

    wds = WindowDataset.for_training(bundle.train, 25, 25)
    return wds.collate([wds[i] for i in range(min(16, len(wds)))])


@pytest.mark.parametrize("ablation,off", [("-SD2", "beta"), ("-CCA", "gamma"), ("-SD1", "alpha")])
def test_sew_ablations_switch_off_their_term(ablation, off):
    ds = tiny_frames()
    cfg, bundle = _bundle(
        TrainConfig(data="x", method="sew", modality="b", teacher="a", ablation=ablation, **SEW_FAST), ds
    )
    sew = build_sew(cfg, bundle, None)
    assert getattr(sew, off) == 0.0
    if ablation == "-CCA":  # without CCA and with S_D2 off nothing else would reach S_E; here S_D2 still does
        sew.training_loss(_collate(bundle))[0].backward()
        assert sew.strong_encoder.net[0].weight.grad.abs().sum() > 0


def test_sew_video_app_pair_uses_latent_168():
    ds = tiny_frames()
    ds.modalities["video_app"] = ds.modalities.pop("a")
    for s in ds.sequences:
        s.features["video_app"], s.masks["video_app"] = s.features.pop("a"), s.masks.pop("a")
    cfg, bundle = _bundle(TrainConfig(data="x", method="sew", modality="b", teacher="video_app", **SEW_FAST), ds)
    assert build_sew(cfg, bundle, None).weak_encoder.net[-1].out_features == 168


def test_sew_run_exports_only_weak_encoder_and_regressor(frames_dir, tmp_path):
    r = run(TrainConfig(data=frames_dir, method="sew", modality="b", teacher="a", out=tmp_path / "s", **SEW_FAST))
    keys = load_file(str(tmp_path / "s" / "model" / "model.safetensors"))
    assert keys and all(k.startswith(("encoder.", "head.")) for k in keys)
    assert "head.gru.weight_ih_l3" in keys  # R = 4 single-step GRU layers
    assert r["method"]["teacher"] == "a" and r["method"]["k"] == 10


def test_cmstew_teacher_frozen_bit_identical(frames_dir, tmp_path):
    ds = tiny_frames()
    cfg = resolve(TrainConfig(data=frames_dir, method="cmstew", modality="b", teacher="a",
                              cmstew=CMStEWConfig(alpha=0.5, beta=0.5), **FAST), ds)
    ds = carve_validation(ds, 4, 0)
    cfg = prepare(cfg, ds, tmp_path)  # stage 1: trains the teacher into tmp_path/teacher
    bundle = make_bundle(cfg, ds, ["b", "a"])
    method = build_cmstew(cfg, bundle, tmp_path)
    before = {k: v.clone() for k, v in method.strong_encoder.state_dict().items()}
    weak_before = {k: v.clone() for k, v in method.student.state_dict().items()}
    fit(method, cfg, bundle, tmp_path / "stage2")
    after = method.strong_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad for p in method.strong_encoder.parameters())
    assert any(not torch.equal(weak_before[k], v) for k, v in method.student.state_dict().items())
    # Shapes of spec §6.7: latents (B, N, 100), decoder output (B, N, d_strong).
    batch = _collate(bundle)
    m_sw = method.weak_encoder(batch["x"]["b"], batch["mask"])
    assert m_sw.shape[-1] == cfg.d_model
    assert method.strong_decoder(m_sw, batch["mask"]).shape == (*batch["mask"].shape, 4)


def test_cmstew_ablations_and_grid(frames_dir, tmp_path):
    grid = CMStEWConfig(alpha_grid=[0.01, 1.0], beta_grid=[0.1])
    r = run(TrainConfig(data=frames_dir, method="cmstew", modality="b", teacher="a", cmstew=grid,
                        out=tmp_path / "full", **FAST))
    assert len(r["selection"]["grid"]) == 2 and r["method"]["alpha"] in (0.01, 1.0)
    m = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert m["method"]["stage1_run"].endswith("teacher")
    teacher = tmp_path / "full" / "teacher"
    lfa = run(TrainConfig(data=frames_dir, method="cmstew", modality="b", teacher="a", ablation="-LFA",
                          cmstew=grid.model_copy(update={"teacher_run": teacher}), **FAST))
    assert lfa["method"]["alpha"] == 0.0 and lfa["method"]["beta"] == 0.1
    dec = run(TrainConfig(data=frames_dir, method="cmstew", modality="b", teacher="a", ablation="-Decoder",
                          cmstew=CMStEWConfig(alpha=0.1, teacher_run=teacher), **FAST))
    assert dec["method"]["beta"] == 0.0 and dec["_method"].strong_decoder is None


def test_cmstew_refuses_teacher_with_other_validation_carve(utt_dir, tmp_path):
    run(TrainConfig(data=utt_dir, modality="text", seed=0, out=tmp_path / "t", **FAST))
    with pytest.raises(DataError, match="validation carve"):
        run(TrainConfig(data=utt_dir, method="cmstew", modality="audio", teacher="text", seed=1,
                        cmstew=CMStEWConfig(alpha=0.1, beta=0.1, teacher_run=tmp_path / "t"), **FAST))
