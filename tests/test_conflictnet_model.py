"""ConflictNET / ParaNET (spec §3): parameter counts, the spec's layer table, ablations, masking, gradients."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from stew.models.conflictnet import (
    AdditiveSelfAttention,
    ConflictNet,
    ConflictNetSpec,
    KerasLSTM,
    count_parameters,
    hard_sigmoid,
    lstm_scan,
)

ABLATIONS = ["paranet", "+ap", "+attn", "conflictnet", "+gap"]
SHORT = 8_000  # 1 s at 8 kHz: 6 LSTM steps with AP, 27 without

# Keras counts by hand from the spec's layer table (§3.2):
#   conv1 6*1*64 + 64 = 448;  conv2 4*64*128 + 128 = 32,896;  conv3 4*128*256 + 256 = 131,328
#   BN gamma+beta 2*(64+128+256) = 896 trainable; moving mean+var 2*(64+128+256) = 896 non-trainable
#   LSTM-1 4*128*(256 + 128 + 1) = 197,120;  LSTM-2 4*64*(128 + 64 + 1) = 49,408;  dense 64 + 1 = 65
#   attention 2*128*32 + 32 + 32 + 1 = 8,257;  AP and GAP have no parameters.
_BASE = 448 + 32_896 + 131_328 + 896 + 197_120 + 49_408 + 65  # = 412,161: ParaNET
EXPECTED = {
    "paranet": (412_161, 896),  # _BASE
    "+ap": (412_161, 896),  # _BASE + 0 (AP only shortens the sequence)
    "+attn": (420_418, 896),  # _BASE + 8,257
    "conflictnet": (420_418, 896),  # _BASE + 8,257 (+ AP, 0): the spec's 420,418 / 896
    "+gap": (420_418, 896),  # ConflictNET + 0 (a masked temporal mean)
}


def _model(ablation: str = "conflictnet", samples: int = SHORT, seed: int = 0, **kw) -> ConflictNet:
    torch.manual_seed(seed)
    return ConflictNet(ConflictNetSpec(ablation=ablation, samples=samples, **kw))


def test_hand_counts_add_up():
    assert _BASE == 412_161
    assert _BASE + 8_257 == 420_418


def test_spec_round_trips_as_json_and_forbids_unknown_fields():
    spec = ConflictNetSpec(ablation="+gap", samples=SHORT, block_order="conv-pool-bn", gate_activation="hard_sigmoid")
    assert ConflictNetSpec.model_validate_json(spec.model_dump_json()) == spec
    with pytest.raises(ValidationError):
        ConflictNetSpec(filter=64)
    with pytest.raises(ValidationError, match="no time step"):
        ConflictNetSpec(samples=500)  # the convolutions and pools leave nothing
    with pytest.raises(ValidationError):
        ConflictNetSpec(filters=[64, 128], kernels=[6, 4, 4])


def test_spec_defaults_are_the_spec_sizes():
    spec = ConflictNetSpec()
    assert (spec.samples, spec.n_out) == (240_000, 1)
    assert (spec.filters, spec.kernels, spec.pools) == ([64, 128, 256], [6, 4, 4], [8, 6, 6])
    assert (spec.avg_pool, spec.lstm_units, spec.attention_units, spec.dropout) == (4, [128, 64], 32, 0.0)


def test_conflictnet_has_the_spec_parameter_counts_layer_by_layer():
    model = _model(samples=240_000)
    assert count_parameters(model) == (420_418, 896)
    layers = [
        (model.blocks[0].conv, (448, 0)), (model.blocks[0].bn, (128, 128)),
        (model.blocks[1].conv, (32_896, 0)), (model.blocks[1].bn, (256, 256)),
        (model.blocks[2].conv, (131_328, 0)), (model.blocks[2].bn, (512, 512)),
        (model.lstm1, (197_120, 0)), (model.attention, (8_257, 0)), (model.lstm2, (49_408, 0)), (model.dense, (65, 0)),
    ]
    for layer, counts in layers:
        assert count_parameters(layer) == counts, layer


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_ablation_parameter_counts(ablation):
    assert count_parameters(_model(ablation)) == EXPECTED[ablation]


def test_count_parameters_follows_keras():
    bn = nn.BatchNorm1d(10)
    assert count_parameters(bn) == (20, 20)  # num_batches_tracked is not a weight
    lin = nn.Linear(3, 2)
    lin.bias.requires_grad_(False)
    assert count_parameters(lin) == (6, 2)


def _record_shapes(model: ConflictNet) -> dict[str, tuple[int, ...]]:
    """Per-layer output shapes without the batch axis, channels last as in the Keras summary."""
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name: str, channels_first: bool):
        def fn(_module, _inputs, out):
            shapes[name] = tuple(out.shape[:0:-1] if channels_first else out.shape[1:])
        return fn

    for i, block in enumerate(model.blocks, 1):
        for part in ("conv", "bn", "pool"):
            getattr(block, part).register_forward_hook(hook(f"{part}{i}", True))
    named = [("lstm1", model.lstm1, False), ("attention", model.attention, False), ("lstm2", model.lstm2, False),
             ("dense", model.dense, False), ("avg_pool", model.avg_pool, True)]
    for name, module, channels_first in named:
        if module is not None:
            module.register_forward_hook(hook(name, channels_first))
    with torch.no_grad():
        shapes["output"] = tuple(model.eval()(torch.randn(1, model.spec.samples, 1)).shape)
    return shapes


def test_layer_output_shapes_of_the_spec_table():
    shapes = _record_shapes(_model(samples=240_000))
    assert shapes == {
        "conv1": (239_995, 64), "bn1": (239_995, 64), "pool1": (29_999, 64),
        "conv2": (29_996, 128), "bn2": (29_996, 128), "pool2": (4_999, 128),
        "conv3": (4_996, 256), "bn3": (4_996, 256), "pool3": (832, 256),
        "avg_pool": (208, 256), "lstm1": (208, 128), "attention": (208, 128),
        "lstm2": (208, 64),  # the whole sequence; the model reads its last step, Keras's (64,)
        "dense": (1,), "output": (1, 1, 1),
    }
    # AP exists so that the LSTMs see fewer than 250 steps (spec §3.2); ParaNET's see 832.
    assert ConflictNetSpec().lstm_steps() == 208 < 250
    assert ConflictNetSpec(ablation="paranet").lstm_steps() == 832


def test_thesis_block_order_pools_before_batchnorm():
    shapes = _record_shapes(_model("paranet", samples=240_000, block_order="conv-pool-bn"))
    assert shapes["pool1"] == shapes["bn1"] == (29_999, 64)
    assert shapes["lstm1"] == (832, 128) and "attention" not in shapes and "avg_pool" not in shapes
    assert count_parameters(_model("paranet", block_order="conv-pool-bn")) == EXPECTED["paranet"]


def test_ablations_add_exactly_what_they_name():
    parts = {}
    for ablation in ABLATIONS:
        model = _model(ablation)
        parts[ablation] = (model.avg_pool is not None, model.attention is not None, model.spec.use_gap)
    assert parts == {  # (AP, attention, GAP)
        "paranet": (False, False, False), "+ap": (True, False, False), "+attn": (False, True, False),
        "conflictnet": (True, True, False), "+gap": (True, True, True),
    }


def test_output_is_linear_and_there_is_no_dropout():
    model = _model()
    out = torch.randn(4, 1, 1) * 5
    assert model.activation == "identity"
    assert model.activate(out) is out  # spec §3.1: one scalar, linear activation
    assert torch.equal(_model(activation="tanh").activate(out), torch.tanh(out))
    assert all(m.p == 0 for m in model.modules() if isinstance(m, nn.Dropout))


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_every_ablation_trains_with_finite_gradients(ablation):
    model = _model(ablation).train()
    x = torch.randn(3, SHORT, 1)
    out = model(x, torch.ones(3, SHORT, dtype=torch.bool))
    assert out.shape == (3, 1, 1)
    (out.squeeze() - torch.tensor([0.5, -0.2, 0.1])).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_n_out_and_mask_default():
    model = _model(n_out=3).eval()
    x = torch.randn(2, SHORT, 1)
    out = model(x)
    assert out.shape == (2, 1, 3)
    torch.testing.assert_close(out, model(x, torch.ones(2, SHORT, dtype=torch.bool)))
    with pytest.raises(ValueError, match="mono"):
        model(torch.randn(2, SHORT, 2))


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_padding_gives_the_clip_alone_output_in_eval(ablation):
    model = _model(ablation).eval()
    a, b = torch.randn(1, SHORT, 1), torch.randn(1, SHORT + 3_001, 1)
    x = torch.cat([torch.cat([a, torch.full((1, 3_001, 1), 1e3)], 1), b])  # garbage in a's padding
    mask = torch.ones(2, SHORT + 3_001, dtype=torch.bool)
    mask[0, SHORT:] = False
    with torch.no_grad():
        batch = model(x, mask)
        torch.testing.assert_close(batch[0], model(a)[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batch[1], model(b)[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("order", ["conv-bn-pool", "conv-pool-bn"])
def test_padding_gives_the_clip_alone_output_in_training(order):
    """BatchNorm's batch statistics (and running averages) come from real steps only."""
    alone, padded = _model(block_order=order), _model(block_order=order)
    a = torch.randn(1, SHORT, 1)
    x = torch.cat([a, torch.randn(1, 2_500, 1)], 1)
    mask = torch.ones(1, SHORT + 2_500, dtype=torch.bool)
    mask[0, SHORT:] = False
    torch.testing.assert_close(padded.train()(x, mask), alone.train()(a), atol=1e-5, rtol=1e-4)
    for p, q in zip(padded.blocks, alone.blocks, strict=True):
        torch.testing.assert_close(p.bn.running_mean, q.bn.running_mean)
        torch.testing.assert_close(p.bn.running_var, q.bn.running_var, atol=1e-6, rtol=1e-4)


def _attention_reference(att: AdditiveSelfAttention, h: torch.Tensor) -> torch.Tensor:
    """Spec eq. 3.2 written out step by step, for one sequence h [T, d]."""
    t = h.shape[0]
    e = torch.empty(t, t)
    for i in range(t):
        for j in range(t):
            g = torch.tanh(h[i] @ att.w_t + h[j] @ att.w_x + att.b_h)
            e[i, j] = torch.tanh(g @ att.w_a[:, 0] + att.b_a[0])
    return torch.softmax(e, -1) @ h


def test_attention_is_eq_3_2_global_and_masked():
    torch.manual_seed(0)
    att = AdditiveSelfAttention(6, 4)
    h = torch.randn(2, 7, 6)
    with torch.no_grad():
        out = att(h)
        torch.testing.assert_close(out[1], _attention_reference(att, h[1]))
        # Global: the first step attends to the last one (and vice versa).
        h2 = h.clone()
        h2[:, -1] += 1.0
        assert not torch.allclose(att(h2)[:, 0], out[:, 0])
        # Masked keys are ignored; padded query rows are 0 (as keras-self-attention returns them).
        mask = torch.ones(2, 7, dtype=torch.bool)
        mask[0, 4:] = False
        masked = att(h, mask)
        torch.testing.assert_close(masked[0, :4], _attention_reference(att, h[0, :4]))
        assert torch.all(masked[0, 4:] == 0)
        torch.testing.assert_close(masked[1], out[1])
        assert torch.isfinite(att(h, torch.zeros(2, 7, dtype=torch.bool))).all()


def test_attention_blocks_match_the_full_computation_with_gradients():
    torch.manual_seed(0)
    full, blocked = AdditiveSelfAttention(6, 4), AdditiveSelfAttention(6, 4, max_elements=2 * 11 * 4 * 3)
    blocked.load_state_dict(full.state_dict())
    h = torch.randn(2, 11, 6, requires_grad=True)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 8:] = False
    g_full = torch.autograd.grad(full(h, mask).square().sum(), [h, full.w_t])
    g_blocked = torch.autograd.grad(blocked(h, mask).square().sum(), [h, blocked.w_t])
    torch.testing.assert_close(blocked(h, mask), full(h, mask))
    for a, b in zip(g_blocked, g_full, strict=True):
        torch.testing.assert_close(a, b)


def test_keras_lstm_has_one_bias_per_gate_and_its_scan_matches_the_fused_kernel():
    torch.manual_seed(0)
    lstm = KerasLSTM(5, 3)
    lstm.keras_init()
    assert count_parameters(lstm) == (4 * 3 * (5 + 3 + 1), 0)
    bias = lstm.lstm.weight_ih_l0[:, -1]
    assert torch.equal(bias, torch.tensor([0.0] * 3 + [1.0] * 3 + [0.0] * 6))  # unit_forget_bias
    x = torch.randn(2, 9, 5)
    x1 = torch.cat([x, torch.ones(2, 9, 1)], -1)
    scan = lstm_scan(x1 @ lstm.lstm.weight_ih_l0.T, lstm.lstm.weight_hh_l0, torch.sigmoid)
    torch.testing.assert_close(scan, lstm(x))
    assert torch.equal(hard_sigmoid(torch.tensor([-3.0, 0.0, 1.0, 3.0])), torch.tensor([0.0, 0.5, 0.7, 1.0]))
    lstm.gate_activation = "hard_sigmoid"
    assert lstm(x).shape == (2, 9, 3) and not torch.allclose(lstm(x), scan)


def test_hard_sigmoid_gates_train():
    model = _model(gate_activation="hard_sigmoid")
    model(torch.randn(2, SHORT, 1)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
