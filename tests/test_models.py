import torch

from stew.models.encoders import EncoderSpec, build_encoder
from stew.models.heads import HeadSpec, build_head


def _padded_pair(kind: str):
    torch.manual_seed(0)
    spec = EncoderSpec(kind=kind, d_in=6, gru_units=5, gru_layers=2, d_model=8, heads=2, ffn=16, dropout=0.0)
    enc = build_encoder(spec).eval()
    x = torch.randn(2, 10, 6)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    return enc, x, mask, spec


def test_padding_never_changes_real_steps():
    for kind in ("bigru", "bigru-te"):
        enc, x, mask, spec = _padded_pair(kind)
        out = enc(x, mask)
        assert out.shape == (2, 10, spec.out_dim)
        x2 = x.clone()
        x2[1, 6:] = 1e3  # garbage in padding
        out2 = enc(x2, mask)
        torch.testing.assert_close(out[:, :6], out2[:, :6])
        torch.testing.assert_close(out[0], out2[0])
        # The padded sequence alone gives the same outputs as inside the batch.
        alone = enc(x[1:, :6], mask[1:, :6])
        torch.testing.assert_close(alone[0], out[1, :6], atol=1e-5, rtol=1e-5)


def test_valid_row_transformer_matches_torch_transformer_encoder():
    """BiGRUTransformer's written-out forward (valid rows only) = nn.TransformerEncoder with a padding mask."""
    torch.manual_seed(0)
    spec = EncoderSpec(kind="bigru-te", d_in=6, gru_units=5, gru_layers=2, d_model=8, heads=2, ffn=16, dropout=0.0)
    enc = build_encoder(spec)
    x = torch.randn(3, 10, 6)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:], mask[2, 3:] = False, False

    def reference(x: torch.Tensor) -> torch.Tensor:
        h = enc.positions(enc.proj(enc.bigru(x, mask)))
        return enc.transformer(h, src_key_padding_mask=~mask)

    for train in (False, True):  # eval: torch's fused fast path; train (dropout 0): the Python path
        enc.train(train)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, ref = enc(x1, mask), reference(x2)
        torch.testing.assert_close(out[mask], ref[mask], atol=1e-5, rtol=1e-5)
        assert (out[~mask] == 0).all()
        if train:
            w = torch.randn_like(out)
            grads = torch.autograd.grad((out * w)[mask].sum(), [x1, *enc.parameters()])
            ref_grads = torch.autograd.grad((ref * w)[mask].sum(), [x2, *enc.parameters()])
            for g, r in zip(grads, ref_grads, strict=True):
                torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_classifier_runs_on_valid_steps_only():
    torch.manual_seed(0)
    head = build_head(HeadSpec(kind="classifier", d_in=4, n_out=2)).eval()
    h, mask = torch.randn(2, 5, 4), torch.tensor([[True] * 5, [True, True, False, False, False]])
    out = head(h, mask)
    torch.testing.assert_close(out[mask], head.net(h)[mask])
    assert (out[~mask] == 0).all()


def test_cmstew_encoder_shapes_and_classifier():
    spec = EncoderSpec(kind="bigru-te", d_in=73)
    assert spec.out_dim == 100
    enc = build_encoder(spec)
    n_tf = sum(isinstance(m, torch.nn.TransformerEncoderLayer) for m in enc.modules())
    assert n_tf == 2
    layer = next(m for m in enc.modules() if isinstance(m, torch.nn.TransformerEncoderLayer))
    assert layer.self_attn.num_heads == 2 and layer.linear1.out_features == 400 and not layer.norm_first
    assert enc.bigru.gru.hidden_size == 73  # units = input dimension (spec §6.3)
    head = build_head(HeadSpec(kind="classifier", d_in=100, n_out=1))
    assert [m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear)] == [300, 1]
    out = head(enc(torch.randn(3, 7, 73), torch.ones(3, 7, dtype=torch.bool)))
    assert out.shape == (3, 7, 1)


def test_gru4_is_per_step():
    head = build_head(HeadSpec(kind="gru4", d_in=5, n_out=2)).eval()
    assert head.gru.num_layers == 4 and head.gru.hidden_size == 120
    x = torch.randn(2, 6, 5)
    out = head(x)
    x2 = x.clone()
    x2[:, 3] = 9.0
    out2 = head(x2)
    # No context across steps: changing step 3 changes only step 3.
    keep = [0, 1, 2, 4, 5]
    torch.testing.assert_close(out[:, keep], out2[:, keep])
    assert not torch.allclose(out[:, 3], out2[:, 3])
