"""The intra/cross-attention fusion models of spec §4.2 (stew.models.fusion)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stew.models.fusion import FusionModel, FusionSpec, statistical_pooling

IEMOCAP = {"text": 300, "video": 2048, "audio": 120}
IEMOCAP_STEPS = {"text": 128, "video": 32, "audio": 1000}
IEMOCAP_CONV = {"video": (32, 25), "audio": (1000, 500)}
SMALL = {"text": 5, "video": 6, "audio": 3}


def small_spec(**kw: object) -> FusionSpec:
    base: dict[str, object] = {"modalities": SMALL, "gru_units": 4, "heads": 2, "clf_hidden": 5, "n_out": 3}
    return FusionSpec(**{**base, **kw})


def model_for(spec: FusionSpec, seed: int = 0) -> FusionModel:
    torch.manual_seed(seed)
    return FusionModel(spec).eval()


def batch(spec: FusionSpec, lengths: dict[str, list[int]], total: dict[str, int] | None = None, seed: int = 1,
          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random features with per-sample real lengths; steps beyond them are garbage with mask False."""
    g = torch.Generator().manual_seed(seed)
    x, masks = {}, {}
    for m, lens in lengths.items():
        t = (total or {}).get(m, max(lens))
        x[m] = torch.randn(len(lens), t, spec.modalities[m], generator=g)
        masks[m] = torch.arange(t)[None] < torch.tensor(lens)[:, None]
        x[m][~masks[m]] = 1e3 * torch.randn(int((~masks[m]).sum()), spec.modalities[m], generator=g)
    return x, masks


def iemocap_spec(fusion: str = "intra", **kw: object) -> FusionSpec:
    return FusionSpec(modalities=IEMOCAP, step_conv=IEMOCAP_CONV, fusion=fusion, n_out=7, **kw)


# --- spec ---------------------------------------------------------------------------------------------------


def test_spec_json_round_trip_and_names() -> None:
    spec = small_spec(fusion="cross+intra", input_dropout={"text": 0.25}, step_conv={"audio": (7, 4)})
    again = FusionSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    # default pairs: grouped by target, the spec's order V2T, A2T, T2V, A2V, T2A, V2A
    assert spec.pair_names == ["video2text", "audio2text", "text2video", "audio2video", "text2audio", "video2audio"]
    assert spec.vector_names == ["text", "video", "audio", *spec.pair_names]
    assert FusionSpec(modalities={"a": 1}, n_out=1).vector_names == ["a"]


@pytest.mark.parametrize(("kw", "message"), [
    ({"pairs": [("text", "speech")], "fusion": "cross"}, "unknown modality 'speech'"),
    ({"pairs": [("text", "text")], "fusion": "cross"}, "source == target"),
    ({"pairs": [("text", "video"), ("text", "video")], "fusion": "cross"}, "duplicates"),
    ({"pairs": [], "fusion": "cross"}, "pairs is empty"),
    ({"pairs": [("text", "video")]}, "only used by fusion 'cross'"),
    ({"modalities": {"text": 5}, "fusion": "cross"}, "needs >= 2 modalities"),
    ({"modalities": {"text": 5}, "fusion": "cross+intra"}, "needs >= 2 modalities"),
    ({"step_conv": {"speech": (10, 5)}}, "step_conv names unknown modality 'speech'"),
    ({"step_conv": {"audio": (10, 0)}}, "must be >= 1"),
    ({"step_conv": {"audio": (10, 5)}, "pool_time": False}, "needs pool_time=True"),
    ({"heads": 3}, "divide the attention width"),
    ({"input_dropout": {"speech": 0.2}}, "input_dropout names unknown modality"),
    ({"input_dropout": {"text": 1.0}}, "must be in [0, 1)"),
    ({"attn_dropout": -0.1}, "attn_dropout"),
    ({"modalities": {}}, "modalities is empty"),
    ({"modalities": {"a.b": 3}}, "no dots"),
    ({"modalities": {"a": 0}}, "input dim 0"),
    ({"modalities": {"a": 3, "b2c": 3, "b": 3, "c": 3}, "fusion": "cross+intra"}, "collide"),
    ({"surprise": 1}, "Extra inputs"),
])
def test_spec_rejects_inconsistent(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        small_spec(**kw)


# --- parameter counts and shapes (spec §4.2, §4.7) ----------------------------------------------------------------


def test_iemocap_parameter_counts() -> None:
    with torch.device("meta"):
        intra = FusionModel(iemocap_spec("intra"))
        cross = FusionModel(iemocap_spec("cross"))
        both = FusionModel(iemocap_spec("cross+intra"))

    def count(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    assert intra.count_parameters() == 1_645_892
    assert cross.count_parameters() == 1_820_132
    assert count(intra.convs["audio"]) == 500_500
    assert count(intra.convs["video"]) == 825
    assert [count(intra.encoders[m]) for m in IEMOCAP] == [130_320, 759_600, 65_520]
    assert {count(mha) for mha in [*intra.intra.values(), *cross.cross.values()]} == {58_080}
    assert count(intra.classifier) == count(cross.classifier) == 14_887
    assert len(cross.cross) == 6 and len(cross.intra) == 0
    # cross+intra: shared encoders, 9 MHAs, 480 -> 60 -> 7
    assert both.spec.sp_dim == 480
    assert both.count_parameters() == 1_456_765 + 9 * 58_080 + 480 * 60 + 60 + 60 * 7 + 7


def test_iemocap_shapes() -> None:
    spec = iemocap_spec("cross")
    model = model_for(spec)
    b = 2
    x, masks = batch(spec, {m: [IEMOCAP_STEPS[m], IEMOCAP_STEPS[m] - 10] for m in IEMOCAP})
    seen: dict[str, tuple[int, ...]] = {}
    for name, mha in model.cross.items():
        mha.register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, tuple(out[0].shape)))
    with torch.no_grad():
        enc, enc_masks = model.encode(x, masks)
        assert {m: tuple(e.shape) for m, e in enc.items()} == {
            "text": (b, 128, 120), "video": (b, 25, 120), "audio": (b, 500, 120)}
        assert bool(enc_masks["audio"].all()) and bool(enc_masks["video"].all())  # every conv output step is real
        vectors = model.vectors(x, masks)
    target_steps = {"text": 128, "video": 25, "audio": 500}
    assert seen == {f"{s}2{t}": (b, target_steps[t], 120) for s, t in spec.pair_list}  # target length
    assert {tuple(v.shape) for v in vectors.values()} == {(b, 1, 120)}
    assert tuple(model.pooled(vectors).shape) == (b, 1, 240)
    assert tuple(model.classify(vectors).shape) == (b, 1, 7)


def test_step_conv_pads_and_truncates() -> None:
    spec = small_spec(step_conv={"audio": (6, 4)})
    model = model_for(spec)
    x, masks = batch(spec, {"text": [3, 2], "video": [4, 4], "audio": [6, 5]})
    with torch.no_grad():
        ref = model(x, masks)
        longer = torch.cat([x["audio"], torch.randn(2, 3, 3)], 1)  # 9 real steps: the last 3 are cut
        assert torch.allclose(model({**x, "audio": longer}, {**masks, "audio": torch.ones(2, 9, dtype=torch.bool)})[0],
                              ref[0], atol=1e-6)
        shorter = model({**x, "audio": x["audio"][:, :5]}, {**masks, "audio": masks["audio"][:, :5]})
    assert torch.allclose(ref[1], shorter[1], atol=1e-6)  # sample 1 had 5 real steps: zero-padding is the same


# --- variants -----------------------------------------------------------------------------------------------


def test_variant_dimensions() -> None:
    assert small_spec(gru_units=60, heads=6, sp=False).sp_dim == 360
    assert small_spec(gru_units=60, heads=6, sp=False, fusion="cross").sp_dim == 720
    assert small_spec(gru_units=60, heads=6, fusion="cross+intra").sp_dim == 480
    assert small_spec(gru_units=60, heads=6).sp_dim == small_spec(gru_units=60, heads=6, fusion="cross").sp_dim == 240
    bimodal = small_spec(modalities={"text": 5, "video": 6}, fusion="cross")
    assert bimodal.pair_names == ["video2text", "text2video"]
    relu = FusionModel(small_spec(clf_activation="relu"))
    assert any(isinstance(m, nn.ReLU) for m in relu.classifier)
    assert not any(isinstance(m, nn.ReLU) for m in FusionModel(small_spec()).classifier)


def test_pairs_subset_builds_only_what_it_reads() -> None:
    spec = small_spec(fusion="cross", pairs=[("text", "video")])
    model = model_for(spec)
    assert spec.vector_names == ["text2video"] and spec.used_modalities == ["text", "video"]
    assert set(model.encoders) == {"text", "video"} and set(model.cross) == {"text2video"}
    x, masks = batch(spec, {"text": [4, 2], "video": [3, 3]})  # no audio input needed
    out = model(x, masks)
    assert out.shape == (2, 1, 3) and bool(out.isfinite().all())


@pytest.mark.parametrize("fusion", ["intra", "cross", "cross+intra"])
@pytest.mark.parametrize("sp", [True, False])
def test_forward_is_classify_of_vectors(fusion: str, sp: bool) -> None:
    spec = small_spec(fusion=fusion, sp=sp, step_conv={"audio": (6, 4)})
    model = model_for(spec)
    x, masks = batch(spec, {"text": [4, 2, 3], "video": [3, 3, 1], "audio": [6, 2, 5]})
    with torch.no_grad():
        vectors = model.vectors(x, masks)
        assert list(vectors) == spec.vector_names
        assert tuple(model.pooled(vectors).shape) == (3, 1, spec.sp_dim)
        assert torch.equal(model(x, masks), model.classify(vectors))


def test_unimodal_intra_sp_is_finite() -> None:
    spec = small_spec(modalities={"text": 5})
    model = FusionModel(spec)
    x, masks = batch(spec, {"text": [4, 2]})
    out = model(x, masks)
    out.sum().backward()
    pooled = model.pooled(model.vectors(x, masks))
    assert pooled.shape == (2, 1, 16) and bool((pooled[..., 8:] == 0).all())  # biased std of one vector: 0
    assert bool(out.isfinite().all())
    assert all(bool(p.grad.isfinite().all()) for p in model.parameters() if p.grad is not None)


def test_statistical_pooling_is_unbiased_mean_std() -> None:
    v = torch.randn(2, 3, 4)
    std, mean = torch.std_mean(v, dim=1)
    assert torch.allclose(statistical_pooling(v), torch.cat([mean, std], -1))


def test_input_dropout_only_in_training() -> None:
    spec = small_spec(input_dropout={"text": 0.5})
    model = model_for(spec)
    plain = FusionModel(small_spec())
    plain.load_state_dict(model.state_dict())
    plain.eval()
    x, masks = batch(spec, {"text": [4, 2], "video": [3, 3], "audio": [5, 2]})
    with torch.no_grad():
        assert torch.equal(model(x, masks), plain(x, masks))
        model.train()
        assert not torch.allclose(model(x, masks), plain(x, masks))


# --- masks ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["intra", "cross"])
@pytest.mark.parametrize("pool_time", [True, False])
def test_padding_does_not_change_outputs(fusion: str, pool_time: bool) -> None:
    spec = small_spec(fusion=fusion, pool_time=pool_time)
    model = model_for(spec)
    if pool_time:
        lengths = {"text": [4, 2, 6], "video": [3, 5, 1], "audio": [7, 2, 5]}
    else:  # one step grid, per-sample lengths shared across modalities
        lengths = {m: [4, 2, 6] for m in SMALL}
    x, masks = batch(spec, lengths)
    padded_x, padded_masks = batch(spec, lengths, total=dict.fromkeys(SMALL, 10))
    with torch.no_grad():
        ref = model(x, masks)
        for i, n in enumerate(lengths["text"]):  # the same real steps, longer garbage tails
            for m in SMALL:
                keep = lengths[m][i]
                padded_x[m][i, :keep] = x[m][i, :keep]
            alone = model({m: x[m][i:i + 1, :lengths[m][i]] for m in SMALL},
                          {m: masks[m][i:i + 1, :lengths[m][i]] for m in SMALL})
            if pool_time:
                assert torch.allclose(alone[0], ref[i], atol=1e-5)
            else:
                assert torch.allclose(alone[0], ref[i, :n], atol=1e-5)
        out = model(padded_x, padded_masks)
    steps = ref.shape[1]
    assert torch.allclose(out[:, :steps], ref, atol=1e-5)


def test_masked_interior_steps_are_ignored() -> None:
    spec = small_spec(fusion="cross+intra")
    model = model_for(spec)
    x, masks = batch(spec, {"text": [5, 5], "video": [4, 4], "audio": [6, 6]})
    masks["video"][:, 1] = False
    with torch.no_grad():
        ref = model(x, masks)
        x["video"][:, 1] = 1e4
        assert torch.allclose(model(x, masks), ref, atol=1e-6)


@pytest.mark.parametrize("fusion", ["intra", "cross", "cross+intra"])
@pytest.mark.parametrize("pool_time", [True, False])
def test_absent_modality_is_finite_and_zero(fusion: str, pool_time: bool) -> None:
    spec = small_spec(fusion=fusion, pool_time=pool_time)
    model = model_for(spec).train()
    x, masks = batch(spec, {"text": [4, 3, 0], "video": [4, 0, 0], "audio": [4, 2, 0]})  # sample 2: all absent
    for mode in ("train", "eval"):  # eval takes MHA's fast path, which gives NaN for all-masked keys
        model.train(mode == "train")
        model.zero_grad()
        vectors = model.vectors(x, masks)
        out = model.classify(vectors)
        assert bool(out.isfinite().all())
        out.square().sum().backward()
        assert all(bool(p.grad.isfinite().all()) for p in model.parameters() if p.grad is not None)
        for name, v in vectors.items():
            if "video" in name.split("2"):  # every module reading video is zero for samples 1 and 2
                assert bool((v[1:] == 0).all()), name
            assert bool((v[2] == 0).all()), name


def test_step_level_outputs_and_masks() -> None:
    spec = small_spec(fusion="cross", pool_time=False)
    model = model_for(spec)
    x, masks = batch(spec, {m: [6, 3] for m in SMALL})
    masks["audio"][0, 2] = False  # audio missing at one step
    with torch.no_grad():
        vectors = model.vectors(x, masks)
        out = model(x, masks)
        assert out.shape == (2, 6, 3)
        assert {tuple(v.shape) for v in vectors.values()} == {(2, 6, 8)}
        for name in ("text2audio", "video2audio"):  # target audio absent at that step: zero
            assert bool((vectors[name][0, 2] == 0).all())
            assert bool((vectors[name][0, [0, 1, 3]] != 0).any())
        assert bool((vectors["audio2text"][0, 2] != 0).any())  # audio only a key there: text step still attends
        x["audio"][0, 2] = 1e4
        assert torch.allclose(model(x, masks), out, atol=1e-6)
    with pytest.raises(ValueError, match="one step grid"):
        model({**x, "audio": x["audio"][:, :5]}, {**masks, "audio": masks["audio"][:, :5]})


def test_bad_inputs_are_named() -> None:
    spec = small_spec()
    model = model_for(spec)
    x, masks = batch(spec, {"text": [2], "video": [2], "audio": [2]})
    with pytest.raises(ValueError, match=r"\['audio'\]"):
        model({m: x[m] for m in ("text", "video")}, masks)
    with pytest.raises(ValueError, match=r"x\['video'\] has shape"):
        model({**x, "video": x["video"][..., :2]}, masks)
    with pytest.raises(ValueError, match=r"masks\['text'\]"):
        model(x, {**masks, "text": masks["text"][:, :1]})
