"""SEW and CM-StEW on tiny data: what trains, what is frozen, what is exported."""

import json

import pytest
import torch
from safetensors.torch import load_file

from stew.config import CMStEWConfig, TrainConfig
from stew.data.splits import carve_validation
from stew.deploy import load_model, save_model
from stew.errors import DataError
from stew.methods.base import student_spec
from stew.methods.cmstew import build as build_cmstew
from stew.methods.sew import build as build_sew
from stew.methods.unimodal import Unimodal
from stew.models.student import SingleModalityModel
from stew.objectives import dcca_loss, masked_mae, masked_mse
from stew.training.loop import fit
from stew.training.resolve import make_bundle, resolve
from stew.training.run import reuse_or_run, run
from stew.training.stages import teacher_config, train_teachers
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


def _collate(bundle, eval_grid: bool = False):
    from stew.data.preprocess import WindowDataset

    if eval_grid:  # CM-StEW's teacher latents were computed on the evaluation windows: batch those
        wds = WindowDataset.for_evaluation(bundle.train, bundle.eval_win)
    else:
        wds = WindowDataset.for_training(bundle.train, 25, 25)
    return wds.collate([wds[i] for i in range(min(16, len(wds)))])


def _sew_terms(sew, batch):
    """SEW's four losses written out from its modules (spec §5.4), not taken from ``training_loss``."""
    mask, y = batch["mask"], batch["y"]
    m_w, m_s = batch["x"][sew.weak], batch["x"][sew.strong]
    m_sw, m_ss = sew.weak_encoder(m_w, mask), sew.strong_encoder(m_s)
    return {
        "prediction": masked_mse(torch.tanh(sew.regressor(m_sw, mask)), y, mask),
        "translation": masked_mse(sew.strong_decoder(m_sw), m_s, mask),
        "autoencode": masked_mse(sew.strong_autodecoder(m_ss), m_s, mask),
        "alignment": dcca_loss(m_ss, m_sw, mask, k=sew.k, r1=sew.r1, r2=sew.r2),
    }


def _grads(loss, module):
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


# The terms each ablation must leave in the loss, beside the prediction (spec §5.6; weights are 1).
SEW_KEPT = {
    None: ("translation", "autoencode", "alignment"), "-SD2": ("translation", "alignment"),
    "-CCA": ("translation", "autoencode"), "-SD1": ("autoencode", "alignment"), "-(CCA&SD1)": ("autoencode",),
}


@pytest.mark.parametrize("ablation", list(SEW_KEPT))
def test_sew_ablations_switch_off_their_term(ablation):
    """The ablated loss and its gradient are exactly the kept terms: the removed term is gone from both."""
    ds = tiny_frames()
    cfg, bundle = _bundle(
        TrainConfig(data="x", method="sew", modality="b", teacher="a", ablation=ablation, **SEW_FAST), ds
    )
    torch.manual_seed(0)
    sew = build_sew(cfg, bundle, None)
    batch = _collate(bundle)
    terms = _sew_terms(sew, batch)
    # Every term is far from 0 here, so leaving one in (or dropping a kept one) shows in the loss.
    assert all(abs(float(v.detach())) > 1e-2 for v in terms.values())
    expected = terms["prediction"] + sum(terms[t] for t in SEW_KEPT[ablation])
    loss, parts = sew.training_loss(batch)
    assert set(parts) == {"prediction", *SEW_KEPT[ablation]}  # an unused term is not computed at all
    torch.testing.assert_close(loss, expected)
    for got, want in zip(_grads(loss, sew), _grads(expected, sew), strict=True):
        torch.testing.assert_close(got, want)
    # The modules that serve only a removed term receive no gradient at all.
    idle = {"-SD2": ["strong_autodecoder"], "-SD1": ["strong_decoder"], "-(CCA&SD1)": ["strong_decoder"]}
    for name in idle.get(ablation, []):
        assert all(g.abs().sum() == 0 for g in _grads(loss, getattr(sew, name))), name
    if ablation == "-CCA":  # S_E still learns through S_D2
        assert any(g.abs().sum() > 0 for g in _grads(loss, sew.strong_encoder))


def test_sew_without_cca_and_sd1_trains_the_student_like_the_unimodal_model():
    """Spec §5.7: "-(CCA&SD1)" leaves W_E + R trained on the prediction loss alone, i.e. the per-frame
    unimodal model of the same network. For the same weights and batch, its student gets exactly the
    unimodal model's loss and gradients (S_E and S_D2 still train, but nothing reaches the student)."""
    ds = tiny_frames()
    cfg, bundle = _bundle(
        TrainConfig(data="x", method="sew", modality="b", teacher="a", ablation="-(CCA&SD1)", **SEW_FAST), ds
    )
    sew = build_sew(cfg, bundle, None)
    uni = Unimodal(sew.student.spec, cfg.loss)
    uni.student.load_state_dict(sew.student.state_dict())
    batch = _collate(bundle)
    loss, parts = sew.training_loss(batch)
    uni_loss, _ = uni.training_loss(batch)
    torch.testing.assert_close(parts["prediction"], uni_loss.detach())
    for got, want in zip(_grads(loss, sew.student), _grads(uni_loss, uni.student), strict=True):
        torch.testing.assert_close(got, want)
    assert any(g.abs().sum() > 0 for g in _grads(loss, sew.student))
    # The full model's student gradient differs: the comparison can tell the two apart.
    full = build_sew(cfg.model_copy(update={"ablation": None}), bundle, None)
    full.load_state_dict(sew.state_dict())
    full_grads = _grads(full.training_loss(batch)[0], full.student)
    assert any(not torch.allclose(a, b) for a, b in zip(full_grads, _grads(uni_loss, uni.student), strict=True))


def test_sew_does_not_compute_dcca_when_gamma_is_0(monkeypatch):
    """-CCA (gamma = 0): the DCCA term is never evaluated, so it costs nothing and cannot fail the run."""
    from stew.methods import sew as sew_module

    def boom(*args, **kwargs):
        raise FloatingPointError("DCCA evaluated")

    monkeypatch.setattr(sew_module, "dcca_loss", boom)
    ds = tiny_frames()
    for ablation in ("-CCA", "-(CCA&SD1)"):
        cfg, bundle = _bundle(
            TrainConfig(data="x", method="sew", modality="b", teacher="a", ablation=ablation, **SEW_FAST), ds
        )
        loss, parts = build_sew(cfg, bundle, None).training_loss(_collate(bundle))
        assert torch.isfinite(loss) and "alignment" not in parts
    cfg, bundle = _bundle(TrainConfig(data="x", method="sew", modality="b", teacher="a", **SEW_FAST), ds)
    with pytest.raises(FloatingPointError, match="DCCA evaluated"):  # the patch is the one SEW calls
        build_sew(cfg, bundle, None).training_loss(_collate(bundle))


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
    cfg = resolve(TrainConfig(data=frames_dir, method="cmstew", modality="b", teacher="a", recipe="paper",
                              cmstew=CMStEWConfig(alpha=0.5, beta=0.5), **FAST), ds)
    ds = carve_validation(ds, 4, 0)
    cfg = train_teachers(cfg, ds, tmp_path, reuse_or_run)  # stage 1: trains the teacher into tmp_path/teacher
    weights = tmp_path / "teacher" / "model" / "model.safetensors"
    before = weights.read_bytes()
    bundle = make_bundle(cfg, ds, ["b", "a"])
    method = build_cmstew(cfg, bundle, tmp_path)
    teacher = load_model(tmp_path / "teacher" / "model")[0]
    # Stage 2 holds no teacher weights at all: every parameter is the student's or the decoder's.
    assert {id(p) for p in method.parameters()} == {
        id(p) for p in (*method.student.parameters(), *method.strong_decoders.parameters())}
    weak_before = {k: v.clone() for k, v in method.student.state_dict().items()}
    fit(method, cfg, bundle, tmp_path / "stage2")
    assert weights.read_bytes() == before
    assert any(not torch.equal(weak_before[k], v) for k, v in method.student.state_dict().items())
    # The precomputed m_ss is the frozen teacher's encoder on each evaluation window of each training sequence.
    for s in bundle.train:
        for a in range(0, len(s.y), bundle.eval_win):
            chunk = s.x["a"][a : a + bundle.eval_win]
            with torch.no_grad():
                want = teacher.encoder(chunk[None], torch.ones(1, len(chunk), dtype=torch.bool))[0]
            torch.testing.assert_close(s.x["teacher:a"][a : a + bundle.eval_win], want, atol=1e-5, rtol=1e-5)
    # Shapes of spec §6.7: latents (B, N, 100), decoder output (B, N, d_strong).
    batch = _collate(bundle, eval_grid=True)
    m_sw = method.weak_encoder(batch["x"]["b"], batch["mask"])
    assert m_sw.shape[-1] == cfg.d_model
    assert method.strong_decoders["a"](m_sw, batch["mask"]).shape == (*batch["mask"].shape, 4)


def test_cmstew_ablations_and_grid(frames_dir, tmp_path):
    grid = CMStEWConfig(alpha_grid=[0.01, 1.0], beta_grid=[0.1])
    r = run(TrainConfig(data=frames_dir, method="cmstew", modality="b", teacher="a", cmstew=grid, recipe="paper",
                        out=tmp_path / "full", **FAST))
    assert len(r["selection"]["grid"]) == 2 and r["method"]["alpha"] in (0.01, 1.0)
    m = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert m["method"]["stage1_run"].endswith("teacher")
    teacher = tmp_path / "full" / "teacher"
    lfa = run(TrainConfig(data=frames_dir, method="cmstew", modality="b", teacher="a", ablation="-LFA", recipe="paper",
                          cmstew=grid.model_copy(update={"teacher_run": teacher}), **FAST))
    assert lfa["method"]["alpha"] == 0.0 and lfa["method"]["beta"] == 0.1
    dec = run(TrainConfig(data=frames_dir, method="cmstew", modality="b", teacher="a", ablation="-Decoder",
                          recipe="paper", cmstew=CMStEWConfig(alpha=0.1, teacher_run=teacher), **FAST))
    assert dec["method"]["beta"] == 0.0 and not dec.model.strong_decoders
    # The loss of each trained model is exactly its kept terms (spec §6.4), value and gradient:
    # -LFA has no alignment term, -Decoder no translation term, the full model both.
    batch = _collate(r.bundle, eval_grid=True)
    for res, kept in ((r, ("alignment", "translation")), (lfa, ("translation",)), (dec, ("alignment",))):
        method = res.model.eval()  # no dropout: the two computations must see the same network
        terms = _cmstew_terms(method, batch, load_model(teacher / "model")[0])
        assert abs(float(terms["alignment"].detach())) > 1e-2  # so keeping it by mistake would show
        weight = {"alignment": method.alpha, "translation": method.beta}
        expected = terms["prediction"] + sum(weight[t] * terms[t] for t in kept)
        loss, parts = method.training_loss(batch)
        assert set(parts) == {"prediction", *kept}
        torch.testing.assert_close(loss, expected)
        for got, want in zip(_grads(loss, method.student), _grads(expected, method.student), strict=True):
            torch.testing.assert_close(got, want)


def _cmstew_terms(method, batch, teacher):
    """CM-StEW's three losses written out from its modules and the teacher's, not from ``training_loss``."""
    mask, y = batch["mask"], batch["y"]
    (strong,) = method.teachers
    m_w, m_s = batch["x"][method.student.spec.modality], batch["x"][strong]
    m_sw, m_ss = method.weak_encoder(m_w, mask), teacher.encoder(m_s, mask).detach()
    terms = {
        "prediction": masked_mse(torch.tanh(method.weak_classifier(m_sw)), y, mask),
        "alignment": dcca_loss(m_ss, m_sw, mask, k=method.k, r1=method.r1, r2=method.r2),
    }
    if strong in method.strong_decoders:
        terms["translation"] = masked_mae(method.strong_decoders[strong](m_sw, mask), m_s, mask)
    return terms


def _untrained_teacher(cfg, ds, out):
    """A stage-1 model folder without the training: all ``build`` reads from a teacher run."""
    tcfg = teacher_config(cfg, out)
    bundle = make_bundle(tcfg, ds, [cfg.teacher])
    save_model(SingleModalityModel(student_spec(tcfg, ds, cfg.teacher)), bundle, tcfg, out / "model")
    return out


@pytest.mark.parametrize("layers,frame_audio_default", [(None, 1), (3, 3), (2, 2)])
def test_cmstew_decoder_layers_default_and_explicit(tmp_path, layers, frame_audio_default):
    """Spec §6.3's default: 1 decoder layer for a frame-level audio student, 2 otherwise; an explicit
    ``cmstew.decoder_layers`` is honoured for every student."""
    ds = tiny_frames()
    ds.modalities["audio"] = ds.modalities.pop("b")
    for s in ds.sequences:
        s.features["audio"], s.masks["audio"] = s.features.pop("b"), s.masks.pop("b")
    ds = carve_validation(ds, 4, 0)
    for student, want in (("audio", frame_audio_default), ("a", layers or 2)):
        teacher = "a" if student == "audio" else "audio"
        cfg = resolve(TrainConfig(data="x", method="cmstew", modality=student, teacher=teacher, **FAST, recipe="paper",
                                  cmstew=CMStEWConfig(alpha=0.1, beta=0.1, decoder_layers=layers)), ds)
        c = cfg.cmstew.model_copy(update={"teacher_run": _untrained_teacher(cfg, ds, tmp_path / student)})
        cfg = cfg.model_copy(update={"cmstew": c})
        method = build_cmstew(cfg, make_bundle(cfg, ds, [student, teacher]), tmp_path)
        assert method.strong_decoders[teacher].bigru.gru.num_layers == want, student


def test_cmstew_refuses_teacher_with_other_validation_carve(utt_dir, tmp_path):
    run(TrainConfig(data=utt_dir, modality="text", seed=0, out=tmp_path / "t", **FAST))
    with pytest.raises(DataError, match="validation carve"):
        run(TrainConfig(data=utt_dir, method="cmstew", modality="audio", teacher="text", seed=1,
                        cmstew=CMStEWConfig(alpha=0.1, beta=0.1, teacher_run=tmp_path / "t"), **FAST))
