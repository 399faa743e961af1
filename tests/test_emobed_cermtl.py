"""EmoBed and CER-MTL: the parts, the methods through the shared trainer, export and predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from stew.cli import app
from stew.config import TrainConfig
from stew.data.dataset import Dataset
from stew.data.formats.native import write_native
from stew.data.preprocess import Standardizer, WindowDataset, loader, prepare
from stew.data.splits import carve_validation
from stew.deploy import load_model, predict_dataset
from stew.methods.base import prediction_loss
from stew.methods.emobed import EmoBed
from stew.models.encoders import EncoderSpec, FeatureImageCNN
from stew.objectives import crossmodal_triplet_loss, l2_penalty
from stew.scoring import metrics
from stew.training.resolve import fuse_inputs
from stew.training.run import run
from tests.conftest import FAST, tiny_frames, tiny_utterances

EMO = {"emobed": {"units": 8}}
runner = CliRunner()


# --------------------------------------------------------------------------------------------------
# CER-MTL's feature images


def naive_feature_images(x: torch.Tensor, conv: torch.nn.Conv1d, spec: EncoderSpec) -> torch.Tensor:
    """Build every step's P x N image explicitly (edges clamped) and convolve each image on its own."""
    b, steps, _ = x.shape
    n, t = spec.image_steps, spec.image_stride
    offsets = torch.arange(n) * t - (n - 1) // 2 * t
    idx = (torch.arange(steps)[:, None] + offsets).clamp(0, steps - 1)  # [T, N]
    images = x[:, idx]  # [B, T, N, P]
    w = torch.nn.Conv1d(spec.d_in, spec.filters, spec.kernel)  # the same weights, no dilation
    w.weight.data, w.bias.data = conv.weight.data, conv.bias.data
    g = torch.relu(w(images.reshape(b * steps, n, -1).transpose(1, 2)))  # [B*T, F, N-k+1]
    g = torch.nn.functional.max_pool1d(g, spec.pool)  # [B*T, F, pooled]
    return g.transpose(1, 2).reshape(b, steps, -1)


@pytest.mark.parametrize("n,t", [(20, 10), (7, 3), (6, 1)])
def test_feature_image_cnn_equals_convolving_every_image(n, t):
    torch.manual_seed(0)
    spec = EncoderSpec(kind="feature-image", d_in=5, image_steps=n, image_stride=t, filters=4)
    enc = FeatureImageCNN(spec)
    x = torch.randn(2, 40, 5)
    mask = torch.ones(2, 40, dtype=torch.bool)
    out = enc(x, mask)  # edges replicated inside the encoder
    assert out.shape == (2, 40, spec.out_dim)
    torch.testing.assert_close(out, naive_feature_images(x, enc.conv, spec), rtol=1e-5, atol=1e-5)


def test_window_context_gives_the_same_outputs_as_the_whole_recording():
    """Windows carry L/R context from the recording, so a window's features equal the whole-sequence ones."""
    ds = tiny_frames()
    seqs = prepare(ds.split("train"), ["a"], [0], Standardizer.fit(ds.split("train"), ["a"]), 0)
    spec = EncoderSpec(kind="feature-image", d_in=4, image_steps=8, image_stride=3, filters=3)
    enc = FeatureImageCNN(spec)
    whole = enc(seqs[0].x["a"][None], torch.ones(1, len(seqs[0].y), dtype=torch.bool))[0]
    wds = WindowDataset.for_evaluation(seqs[:1], 25, spec.context)
    batch = wds.collate([wds[i] for i in range(len(wds))])
    assert batch["x"]["a"].shape[1] == 25 + sum(spec.context)
    parts = enc(batch["x"]["a"], batch["mask"])
    for (_, a, b), o in zip(batch["spans"].tolist(), parts, strict=True):
        torch.testing.assert_close(o[: b - a], whole[a:b])


# --------------------------------------------------------------------------------------------------
# Early fusion


def test_fusion_keeps_a_present_part_when_another_is_missing():
    ds = tiny_frames()
    fused = ds.fuse(["a", "b"])
    s = fused.sequences[0]
    assert fused.modalities["a+b"] == 9
    assert s.masks["a+b"].all()  # 'a' is always present, 'b' is missing on steps 10-19
    assert np.isnan(s.features["a+b"][10:20, 4:]).all() and not np.isnan(s.features["a+b"][10:20, :4]).any()
    scaler = Standardizer.fit(fused.split("train"), ["a+b"])
    z = scaler.transform("a+b", s.features["a+b"], s.masks["a+b"])
    assert np.isfinite(z).all() and (z[10:20, 4:] == 0).all() and (z[10:20, :4] != 0).any()
    cfg, _ = fuse_inputs(TrainConfig(data="x", modality="all"), ds)
    assert cfg.modality == "a+b"


# --------------------------------------------------------------------------------------------------
# CER-MTL through the trainer


CER = {**FAST, "method": "cermtl", "cermtl": {"image_steps": 6, "image_stride_s": 0.08}}


def two_targets() -> Dataset:
    """tiny_frames with a second target: 'valence' = a rescaled, shifted copy of the first, so the two
    tasks' losses differ."""
    ds = tiny_frames()
    ds.targets, ds.sequences = ["arousal", "valence"], [
        s.__class__(**{**s.__dict__, "targets": np.concatenate([s.targets, 0.5 * s.targets[::-1] - 0.2], 1)})
        for s in ds.sequences
    ]
    return ds


def _cermtl_batch(cfg: TrainConfig, ds: Dataset):
    """A resolved config, its bundle and a training batch (with the feature images' context)."""
    from stew.data.preprocess import context_of
    from stew.methods import build_method, required_modalities
    from stew.training.resolve import make_bundle, resolve

    cfg = resolve(cfg, ds)
    bundle = make_bundle(cfg, ds, required_modalities(cfg))
    torch.manual_seed(0)
    method = build_method(cfg, bundle, Path("."))
    wds = WindowDataset.for_training(bundle.train, bundle.win, bundle.hop, context_of(method))
    return method, wds.collate(wds.spans[:8])


def _reference_task_losses(method, batch, loss: str) -> list[float]:
    """1 - CCC (or 1 - PCC) of each task over the batch's valid steps, from stew.metrics (numpy)."""
    with torch.no_grad():
        pred = method.student.predict(batch)
    valid = batch["mask"]
    score = {"ccc": metrics.ccc, "pcc": metrics.pcc}[loss]
    return [1.0 - score(batch["y"][..., m][valid].numpy(), pred[..., m][valid].numpy())
            for m in range(pred.shape[-1])]


def test_cermtl_multitask_keys_weights_and_export(tmp_path):
    data = write_native(two_targets(), tmp_path / "two")
    r = run(TrainConfig(data=data, **CER, modality="all", targets=["arousal", "valence"], out=tmp_path / "run"))
    assert r["config"]["loss"] == "ccc"  # CER-MTL's default loss
    assert r["method"]["task_weights"] == [0.5, 0.5]
    # The trained multi-task objective is the uniform mean of the two tasks' 1 - CCC (spec §2.3-2.4).
    method = r.model.eval()
    wds = WindowDataset.for_training(r.bundle.train, r.bundle.win, r.bundle.hop, method.student.context)
    batch = wds.collate(wds.spans[:8])
    loss, parts = method.training_loss(batch)
    ref = _reference_task_losses(method, batch, "ccc")
    assert float(parts["loss_arousal"]) == pytest.approx(ref[0], abs=1e-4)
    assert float(parts["loss_valence"]) == pytest.approx(ref[1], abs=1e-4)
    assert float(loss.detach()) == pytest.approx(0.5 * ref[0] + 0.5 * ref[1], abs=1e-4)
    for key in ("ccc_arousal", "pcc_arousal", "ccc_valence", "pcc_valence", "ccc_mean"):
        assert key in r["val"] and key in r["test"]
    model, meta = load_model(tmp_path / "run" / "model")
    assert meta["inputs"] == ["a", "b"] and meta["modality"] == "a+b"
    assert len(model.head.grus) == 2  # one GRU head per task
    # predict rebuilds the fused input from the separate modalities and matches the run's predictions.
    pred = predict_dataset(tmp_path / "run" / "model", data)
    ref = pd.read_csv(tmp_path / "run" / "predictions.csv")
    merged = ref.merge(pred, on=["sequence", "step"], suffixes=("", "_p"))
    np.testing.assert_allclose(merged["pred_valence"], merged["pred_valence_p"], atol=1e-5)


def test_cermtl_weights_must_match_the_targets(tmp_path):
    with pytest.raises(Exception, match="task_weights"):
        run(TrainConfig(data="x", **{**CER, "cermtl": {**CER["cermtl"], "task_weights": [1, 2]}}, modality="a"),
            tiny_frames())


def test_cermtl_single_task_and_weighted_loss():
    """STL: the loss is the one task's 1 - PCC. MTL with weights alpha_m: the loss is sum_m alpha_m L_m of
    the per-task losses (a joint loss over all columns would be their plain mean), and a task's weight
    scales its share of the gradient: 0 cuts its head off, and the shared CNN's gradient is linear in it."""
    stl, batch = _cermtl_batch(TrainConfig(data="x", **CER, modality="a", loss="pcc"), tiny_frames())
    stl.eval()
    loss, parts = stl.training_loss(batch)
    assert stl.task_weights.tolist() == [1.0]
    assert float(loss.detach()) == pytest.approx(_reference_task_losses(stl, batch, "pcc")[0], abs=1e-4)

    ds = two_targets()

    def build(weights):
        cer = {**CER["cermtl"], "task_weights": weights}
        method, batch = _cermtl_batch(TrainConfig(data="x", **{**CER, "cermtl": cer}, modality="a"), ds)
        return method.eval(), batch

    method, batch = build([0.8, 0.2])
    loss, parts = method.training_loss(batch)
    ref = _reference_task_losses(method, batch, "ccc")
    assert abs(ref[0] - ref[1]) > 0.01  # distinct tasks: another weighting would move the loss by > 1e-3
    assert [float(parts["loss_arousal"]), float(parts["loss_valence"])] == pytest.approx(ref, abs=1e-4)
    assert float(loss.detach()) == pytest.approx(0.8 * ref[0] + 0.2 * ref[1], abs=1e-4)

    def grads(weights):
        m, b = build(weights)
        m.load_state_dict(method.state_dict())
        loss, _ = m.training_loss(b)
        loss.backward()
        return {k: (p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in m.named_parameters()}

    g_a, g_v, g_w = grads([1.0, 0.0]), grads([0.0, 1.0]), grads([0.8, 0.2])
    head_v = [k for k in g_a if k.startswith(("student.head.grus.1", "student.head.fcs.1"))]
    head_a = [k for k in g_a if k.startswith(("student.head.grus.0", "student.head.fcs.0"))]
    assert head_a and head_v
    assert all(g_a[k].abs().sum() == 0 for k in head_v)  # weight 0: no gradient reaches that task's head
    assert any(g_a[k].abs().sum() > 0 for k in head_a)
    shared = [k for k in g_a if k.startswith("student.encoder")]
    assert any(g_a[k].abs().sum() > 0 and g_v[k].abs().sum() > 0 for k in shared)
    for k in g_w:
        torch.testing.assert_close(g_w[k], 0.8 * g_a[k] + 0.2 * g_v[k], rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# EmoBed through the trainer


@pytest.mark.parametrize("method,alpha,beta,l2", [("joint", 0.5, 0.0, 1e-4), ("triplet", 0.0, 1.0, 1e-4),
                                                  ("emobed", 0.5, 1.0, 1e-4)])
def test_emobed_modes_switch_the_right_terms(method, alpha, beta, l2, tmp_path):
    r = run(TrainConfig(data="x", **FAST, **EMO, method=method, modality="b", teacher="a", out=tmp_path / method),
            tiny_frames())
    assert (r["method"]["alpha"], r["method"]["beta"], r["method"]["l2"]) == (alpha, beta, l2)
    logs = pd.read_csv(next((tmp_path / method / "logs").rglob("metrics.csv")))
    assert ("train_auxiliary" in logs) == bool(alpha)
    assert ("train_triplet" in logs) == bool(beta)
    assert ("train_l2" in logs) == bool(l2)
    assert r["config"]["label_delay_s"] == 2.4  # spec §1.4


@pytest.mark.parametrize("method,lr", [("emobed", 1e-3), ("triplet", 1e-3), ("cermtl", 5e-5), ("unimodal", 1e-5)])
def test_paper_learning_rates_are_the_defaults(method, lr):
    from stew.training.resolve import resolve

    teacher = "a" if method in ("emobed", "triplet") else None
    assert resolve(TrainConfig(data="x", method=method, modality="b", teacher=teacher), tiny_frames()).lr == lr


@pytest.mark.parametrize("method", ["joint", "triplet", "emobed", "classic"])
def test_emobed_paper_defaults_unpaired_batches_and_l2_in_every_network(method):
    """Spec §1.3-1.4: mini-batches unpaired by default, and L2 1e-4 on every network the paper trains,
    the classic system (``--method unimodal --arch gru``) included: the penalty adds lambda * theta to
    every trainable parameter's gradient."""
    from stew.config import EmoBedConfig
    from stew.methods import build_method, required_modalities
    from stew.training.resolve import make_bundle, resolve

    assert EmoBedConfig().pairing == "unpaired" and EmoBedConfig().l2 == 1e-4
    ds = tiny_frames()
    kw = {"method": "unimodal", "arch": "gru"} if method == "classic" else {"method": method, "teacher": "a"}
    built = []
    for l2 in (1e-4, 0.0):
        cfg = resolve(TrainConfig(data="x", **FAST, emobed={"units": 8, "l2": l2}, modality="b", **kw), ds)
        bundle = make_bundle(cfg, ds, required_modalities(cfg))
        torch.manual_seed(0)
        built.append(build_method(cfg, bundle, Path(".")).eval())
    with_l2, without = built
    without.load_state_dict(with_l2.state_dict())
    if method != "classic":
        assert with_l2.aux_pool is not None  # unpaired: the auxiliary windows are drawn on their own
        without.generator.set_state(with_l2.generator.get_state())  # the same auxiliary draws
    assert with_l2.l2 == 1e-4 and without.l2 == 0.0
    wds = WindowDataset.for_training(bundle.train, bundle.win, bundle.hop)
    batch = wds.collate(wds.spans[:4])
    a, parts = with_l2.training_loss(batch)
    b, _ = without.training_loss(batch)
    params = list(with_l2.trainable_parameters())
    penalty = 0.5 * sum(float(p.detach().square().sum()) for p in params)
    assert float(parts["l2"]) == pytest.approx(penalty, rel=1e-5)
    torch.testing.assert_close(a, b + 1e-4 * parts["l2"])
    ga = torch.autograd.grad(a, params, allow_unused=True)
    gb = torch.autograd.grad(b, list(without.trainable_parameters()), allow_unused=True)
    for p, x, y in zip(params, ga, gb, strict=True):
        x, y = (torch.zeros_like(p) if g is None else g for g in (x, y))
        torch.testing.assert_close(x - y, 1e-4 * p.detach(), rtol=1e-4, atol=1e-7)


def test_cermtl_has_no_label_delay_by_default():
    """CER-MTL's paper shifts no labels: it does not inherit CM-StEW's 2.8 s (an explicit value still wins)."""
    from stew.training.resolve import make_bundle, resolve

    ds = tiny_frames()
    cfg = resolve(TrainConfig(data="x", **CER, modality="a"), ds)
    assert cfg.label_delay_s == 0.0 and make_bundle(cfg, ds, ["a"]).k_delay == 0
    assert resolve(TrainConfig(data="x", **CER, modality="a", label_delay_s=2.4), ds).label_delay_s == 2.4
    assert resolve(TrainConfig(data="x", **FAST, modality="a"), ds).label_delay_s == 2.8  # CM-StEW's unimodal


def test_emobed_keeps_only_the_target_path(tmp_path):
    run(TrainConfig(data="x", **FAST, **EMO, method="emobed", modality="b", teacher="a", out=tmp_path / "r"),
        tiny_frames())
    model, meta = load_model(tmp_path / "r" / "model")
    assert meta["modality"] == "b" and meta["provenance"]["teacher"] == "a"
    assert all(k.startswith(("encoder.", "head.")) for k in model.state_dict())
    # The deployed model needs only the target modality.
    only_b = tiny_frames().select_modalities(["b"])
    assert len(predict_dataset(tmp_path / "r" / "model", only_b)) == only_b.n_steps()


def test_emobed_with_the_auxiliary_terms_off_is_the_classic_monomodal_system():
    """alpha = beta = 0: the same network and the same loss as ``--method unimodal --arch gru`` (spec §1.1)."""
    from stew.methods import build_method, required_modalities
    from stew.training.resolve import make_bundle, resolve

    ds = tiny_frames()
    off = {"emobed": {"units": 8, "alpha": 0.0, "beta": 0.0}}
    methods, batches = [], []
    for kw in ({"method": "joint", "teacher": "a"}, {"method": "unimodal", "arch": "gru", "label_delay_s": 2.4}):
        cfg = resolve(TrainConfig(data="x", **FAST, **off, modality="b", **kw), ds)
        bundle = make_bundle(cfg, ds, required_modalities(cfg))
        methods.append(build_method(cfg, bundle, Path(".")).eval())
        wds = WindowDataset.for_training(bundle.train, bundle.win, bundle.hop)
        batches.append(wds.collate(wds.spans[:6]))
    emobed, classic = methods
    assert emobed.aux_pool is None  # nothing auxiliary to draw, whatever the (default unpaired) pairing
    assert emobed.student.spec == classic.student.spec
    classic.student.load_state_dict(emobed.student.state_dict())
    a, parts = emobed.training_loss(batches[0])
    b, classic_parts = classic.training_loss(batches[1])
    assert set(parts) == set(classic_parts) == {"prediction", "l2"}  # both carry the paper's L2 (spec §1.4)
    torch.testing.assert_close(parts["prediction"], classic_parts["prediction"])
    # The only difference is the penalty on the unused auxiliary net, which never reaches the student.
    torch.testing.assert_close(a - emobed.l2 * l2_penalty(emobed.aux_encoder.parameters()), b)
    ga = torch.autograd.grad(a, list(emobed.student.parameters()))
    gb = torch.autograd.grad(b, list(classic.student.parameters()))
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y)


def test_emobed_binary_triplet_uses_class_labels(monkeypatch):
    """Binary 0/1 labels are the triplet's classes as they are. Binarising them like regression labels
    (sign, 0 and 1 both >= 0) would put every step in one class: no anchor has a negative, so the triplet
    term would be an exact 0 and the method would silently be the classic system."""
    from stew.methods import build_method, emobed, required_modalities
    from stew.training.resolve import make_bundle, resolve

    seen = []

    def spy(e_t, e_x, classes_t, classes_x, *args, **kwargs):
        seen.append((classes_t, classes_x))
        return crossmodal_triplet_loss(e_t, e_x, classes_t, classes_x, *args, **kwargs)

    monkeypatch.setattr(emobed, "crossmodal_triplet_loss", spy)
    ds = carve_validation(tiny_utterances(), 4, 0)
    cfg = resolve(TrainConfig(data="x", **FAST, **EMO, method="triplet", modality="audio", teacher="text"), ds)
    bundle = make_bundle(cfg, ds, required_modalities(cfg))
    method = build_method(cfg, bundle, Path("."))
    torch.manual_seed(0)
    batch = next(iter(loader(WindowDataset.for_training(bundle.train, None, None), 16, shuffle=True, seed=0)))
    loss, parts = method.training_loss(batch)
    (classes_t, classes_x), = seen
    valid = batch["mask"]
    assert torch.equal(classes_t[valid], batch["y"][..., 0][valid].long())  # the labels themselves
    assert set(classes_t[valid].tolist()) == {0, 1} and set(classes_x[valid].tolist()) == {0, 1}
    assert float(parts["triplet"]) > 0.01  # a live term: anchors have positives and negatives
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.aux_encoder.parameters())
    # The failure this guards against gives exactly 0: all steps in one class.
    one_class = torch.zeros_like(classes_t)
    e = torch.randn(*classes_t.shape, 4)
    assert float(crossmodal_triplet_loss(e, e, one_class, one_class, valid, valid)) == 0.0
    # And the whole run trains with it.
    r = run(TrainConfig(data="x", **FAST, **EMO, method="triplet", modality="audio", teacher="text"),
            tiny_utterances())
    assert 0.0 <= r["val"]["f1_weighted"] <= 100.0


def mixed_corpus() -> Dataset:
    """Half of the training recordings have only 'a', the other half only 'b' (two single-modality corpora)."""
    ds = tiny_frames(n_per_split=4)
    seqs = []
    for i, s in enumerate(ds.sequences):
        if s.split == "train":
            gone = "a" if i % 2 else "b"
            s = s.__class__(**{**s.__dict__, "masks": {**s.masks, gone: np.zeros(len(s), bool)},
                               "features": {**s.features, gone: np.zeros_like(s.features[gone])}})
        seqs.append(s)
    return ds.replace_sequences(seqs)


def test_unpaired_batches_draw_auxiliary_windows_independently():
    ds = mixed_corpus()
    cfg = TrainConfig(data="x", **FAST, emobed={"units": 8, "pairing": "unpaired"}, method="emobed",
                      modality="b", teacher="a")
    from stew.methods import build_method, required_modalities
    from stew.training.resolve import make_bundle, resolve

    cfg = resolve(cfg, ds)
    bundle = make_bundle(cfg, ds, required_modalities(cfg))
    method = build_method(cfg, bundle, Path("."))
    assert isinstance(method, EmoBed) and method.aux_pool is not None
    # Only windows where the auxiliary modality exists are drawn.
    assert all(bool(method.aux_pool.seqs[i].present["a"][a:b].any()) for i, a, b in method.aux_pool.spans)
    method.eval()  # no dropout: the reference below must see the same network
    wds = WindowDataset.for_training(bundle.train, bundle.win, bundle.hop)
    batch = wds.collate(wds.spans[:8])
    has_b = batch["mask"] & batch["present"]["b"]
    assert has_b.any() and (batch["mask"] & ~batch["present"]["b"]).any()  # both corpora in the batch
    state = method.generator.get_state()
    aux = method._aux_batch(batch)
    assert not torch.equal(aux["spans"], batch["spans"])  # drawn on their own, not the target's windows
    method.generator.set_state(state)  # training_loss draws the same auxiliary windows again
    loss, parts = method.training_loss(batch)
    assert {"prediction", "auxiliary", "triplet", "l2"} == set(parts)
    # Each modality's prediction term counts only the steps where that modality is present.
    with torch.no_grad():
        e_t = method.target_encoder(batch["x"]["b"], batch["mask"])
        want_t = prediction_loss(method.shared_backend(e_t, batch["mask"]), batch["y"], has_b, "regression", "mse")
        e_x = method.aux_encoder(aux["x"]["a"], aux["mask"])
        want_x = prediction_loss(method.shared_backend(e_x, aux["mask"]), aux["y"], aux["mask"] & aux["present"]["a"],
                                 "regression", "mse")
    torch.testing.assert_close(parts["prediction"], want_t)
    torch.testing.assert_close(parts["auxiliary"], want_x)
    # So the labels of steps without the target modality do not move the target term at all.
    noisy = {**batch, "y": torch.where(has_b[..., None], batch["y"], -batch["y"])}
    method.generator.set_state(state)
    torch.testing.assert_close(method.training_loss(noisy)[1]["prediction"], parts["prediction"])
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)
    # The whole run trains on the mixed corpus through the shared trainer.
    r = run(cfg.model_copy(update={"modality": "b"}), ds)
    assert r["method"]["pairing"] == "unpaired" and np.isfinite(r["val"]["ccc"])


# --------------------------------------------------------------------------------------------------
# CLI


def test_cli_trains_emobed_and_cermtl(frames_dir, tmp_path):
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(json.dumps({**FAST, **EMO, "cermtl": {"image_steps": 6, "image_stride_s": 0.08}}))
    r = runner.invoke(app, ["train", "--data", str(frames_dir), "--method", "emobed", "--modality", "b",
                            "--teacher", "a", "--config", str(cfg), "--out", str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "e" / "metrics.json").is_file() and (tmp_path / "e" / "predictions.csv").is_file()
    r = runner.invoke(app, ["train", "--data", str(frames_dir), "--method", "cermtl", "--modality", "all",
                            "--loss", "mse", "--targets", "y", "--config", str(cfg), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["config"]["loss"] == "mse"


@pytest.mark.parametrize("args,message", [
    (["--method", "emobed", "--modality", "b"], "needs --teacher"),
    (["--method", "cermtl", "--modality", "a", "--targets", "nope"], "--targets"),
    (["--method", "cermtl", "--modality", "a+zz"], "cannot fuse"),
    (["--method", "joint", "--modality", "b", "--teacher", "a", "--ablation", "-LFA"], "ablation"),
])
def test_cli_errors_are_one_line(frames_dir, tmp_path, args, message):
    r = runner.invoke(app, ["train", "--data", str(frames_dir), *args, "--out", str(tmp_path / "x")])
    assert r.exit_code == 2
    assert message in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------------
# AVEC post-processing through the trainer and predict


def test_postprocess_is_searched_on_validation_saved_and_applied_by_predict(frames_dir, tmp_path):
    out = tmp_path / "pp"
    r = run(TrainConfig(data=frames_dir, **FAST, method="unimodal", arch="classifier", modality="a",
                        postprocess=True, out=out))
    chain = r["postprocess"]["y"]
    assert chain["gain"] >= 0 and r["val"]["ccc"] == pytest.approx(r["val_raw"]["ccc"] + chain["gain"], abs=1e-6)
    assert "ccc" in r["test_raw"] and "ccc" in r["test"]
    preds = pd.read_csv(out / "predictions.csv")
    assert {"pred_y", "raw_y"} <= set(preds.columns)
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["postprocess"]["y"]["median_frames"] == chain["median_frames"]
    deployed = predict_dataset(out / "model", frames_dir)
    merged = preds.merge(deployed, on=["sequence", "step"], suffixes=("", "_p"))
    np.testing.assert_allclose(merged["pred_y"], merged["pred_y_p"], atol=1e-5)


def test_postprocess_needs_continuous_data(utt_dir, tmp_path):
    r = runner.invoke(app, ["train", "--data", str(utt_dir), "--modality", "audio", "--postprocess",
                            "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--postprocess" in r.output and not (tmp_path / "x").exists()
