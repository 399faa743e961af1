"""ONNX export of every deployable model, checked against torch before it is written.

A single-modality graph (students, linear models, raw-audio ConflictNET) takes ``x`` [batch, x_steps,
dim] (float32, standardised features; x_steps = steps plus the encoder's context, e.g. CER-MTL's
feature images; a waveform's samples for ConflictNET) and ``mask`` [batch, steps] (bool, True on real
steps; for a per-sequence model the modality's own present mask) and returns ``y`` [batch, steps or 1,
n_out], the *activated* outputs (tanh, sigmoid, softmax, or none for identity). A fusion graph takes
``x_<m>`` and ``present_<m>`` per modality and the label steps' ``mask``. Batch and step counts are
dynamic. Windows, standardisation, delay and post-processing stay in ``model.json``:
:mod:`stew.deploy.runtime` applies them.

The TorchScript exporter (``dynamo=False``) traces the models on a padded batch, so it records the
general (masked) path, which is also correct on unpadded batches; packed GRUs become ONNX GRUs with
``sequence_lens`` (the backward direction starts at each sequence's own last step). ``torch.export``
refuses the models' data-dependent branches. What the torch modules do for training speed but ONNX
Runtime does slowly or not at all (valid-row gathers and scatters, the fused attention kernel, a Python
loop over KNN patterns) is replaced in an export copy by the same function in plain tensor algebra
(:func:`dense_copy`, :func:`export_copy_fused`). Every export is checked: ONNX Runtime must reproduce
the original torch model on random padded batches of several lengths, or nothing is written.
"""

from __future__ import annotations

import copy
import io
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from stew.deploy.runtime import input_names, session_options
from stew.errors import DataError, first_line
from stew.models.conflictnet import RawAudioModel, RawAudioSpec
from stew.models.encoders import BiGRUTransformer
from stew.models.fused import FusedModel
from stew.models.fusion import FusionModel
from stew.models.heads import Classifier
from stew.models.student import SingleModalityModel, activate, masked_mean

OPSET = 17
# Export refuses a graph whose outputs differ from torch's by more than this (float32 GRUs and
# attention agree to ~1e-6; tests/test_onnx.py holds every kind to 1e-5).
EXPORT_TOLERANCE = 1e-4


def dense_copy(model: SingleModalityModel) -> SingleModalityModel:
    """A copy of ``model`` whose per-step layers run on every row of [B, T, d], padding included.

    The torch modules gather the valid rows, compute, and scatter them back (padding costs nothing in
    training); in ONNX Runtime those scatters cost more than the layers themselves (40 of 90 ms on a
    5-minute recording). Computing padded rows too gives the same values on the real rows (per-row
    layers; attention masks padded keys), and the padded rows are zeroed as the torch modules leave
    them. :func:`to_onnx` checks the graph of this copy against the original model.
    """
    dense = copy.deepcopy(model)
    dense.forward = MethodType(_dense_student, dense)
    if isinstance(dense.encoder, BiGRUTransformer):
        dense.encoder.forward = MethodType(_dense_bigru_te, dense.encoder)
    if isinstance(dense.head, Classifier):
        dense.head.forward = MethodType(_dense_classifier, dense.head)
    return dense


def _dense_student(self: SingleModalityModel, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:meth:`SingleModalityModel.forward` with the pooled head's mask built from a tensor, not ``len(z)``
    (which a trace would freeze to the example's batch size)."""
    z = self.encoder(x, mask)
    if self.spec.pool == "none":
        return self.head(z, mask)
    pooled = masked_mean(z, mask)
    return self.head(pooled, torch.ones_like(pooled[..., 0], dtype=torch.bool))


def _dense_classifier(self: Classifier, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    # On [B*T, d] rows: ONNX Runtime fuses a 2-D MatMul and its bias into one Gemm (3-D inputs keep an Add).
    out = self.net(h.reshape(-1, h.shape[-1])).view(*h.shape[:-1], -1)
    return out if mask is None else out * mask.unsqueeze(-1).to(out.dtype)


def _dense_bigru_te(self: BiGRUTransformer, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:meth:`BiGRUTransformer.forward` on every row: post-norm layers, attention over real keys only.

    The per-step layers run on [B*T, d] rows (Gemm with its bias fused); only attention sees [B, heads, T, .].
    """
    b, t = mask.shape
    h = self.bigru(x, mask)
    d = self.proj.out_features
    z = (self.proj(h.reshape(b * t, -1)).view(b, t, d) + self.positions.pe[:t]).reshape(b * t, d)
    # Additive key mask: a large finite negative (not -inf) so that exp() gives exact zeros, never NaN.
    bias = ((~mask).to(z.dtype) * -1e9)[:, None, None, :]
    for layer in self.transformer.layers:
        attn = layer.self_attn
        heads = attn.num_heads
        qkv = F.linear(z, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # 3 x [B, heads, T, d/heads]
        a = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5 + bias, -1) @ v
        z = layer.norm1(z + attn.out_proj(a.transpose(1, 2).reshape(b * t, d)))
        z = layer.norm2(z + layer.linear2(layer.activation(layer.linear1(z))))
    return z.view(b, t, d) * mask.unsqueeze(-1).to(z.dtype)


class Deployable(nn.Module):
    """(x, mask) -> activated outputs: the function ``stew predict`` computes per batch of windows."""

    def __init__(self, model: SingleModalityModel | RawAudioModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if isinstance(self.model, RawAudioModel):  # one output per clip; mask = the clip's real samples
            m = self.model.spec.modality
            return self.model.predict({"x": {m: x}, "present": {m: mask}})
        out = self.model(x, mask)
        out = out if self.model.spec.activation == "identity" else activate(out, self.model.spec.task)
        # Padded steps read 0. This also keeps ``mask`` an input of every graph: the exporter drops an
        # unused input, and a per-step model without context (linear, SEW) would otherwise not read it.
        return out if self.model.spec.pool == "mean" else out * mask.unsqueeze(-1).to(out.dtype)


def per_sequence(model: SingleModalityModel | RawAudioModel) -> bool:
    """One output per sequence (pooled student, raw-audio clip) rather than one per step."""
    return isinstance(model, RawAudioModel) or model.spec.pool == "mean"


def min_samples(spec: RawAudioSpec) -> int:
    """The shortest clip that leaves one LSTM step after ConflictNET's convolutions and pools."""
    n = 1
    while spec.net.lstm_steps(n) < 1:
        n *= 2
    lo = n // 2
    while lo + 1 < n:  # bisect between the last too-short length and the first long-enough one
        mid = (lo + n) // 2
        lo, n = (lo, mid) if spec.net.lstm_steps(mid) >= 1 else (mid, n)
    return n


def example_inputs(model: SingleModalityModel | RawAudioModel, lengths: list[int], seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch: one sequence per length, x with the encoder's context around it. A raw-audio
    model's lengths count its shortest clips (samples = length x :func:`min_samples`)."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(model, RawAudioModel):
        lengths = [n * min_samples(model.spec) for n in lengths]
        left, right, d = 0, 0, 1
    else:
        (left, right), d = model.context, model.spec.encoder.d_in
    t = max(lengths)
    x = torch.randn(len(lengths), left + t + right, d, generator=g)
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    return x, mask


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the exporter's C++ warnings (written to fd 2, out of Python's reach) for one export."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def on_cpu(model: nn.Module) -> nn.Module:
    """``model`` itself when its weights are on the CPU, else a CPU copy: an export traces and checks on the
    CPU, whatever device trained the model, and leaves the caller's model where it is."""
    if all(t.device.type == "cpu" for t in (*model.parameters(), *model.buffers())):
        return model
    return copy.deepcopy(model).cpu()


def to_onnx(model: SingleModalityModel | RawAudioModel) -> bytes:
    """The ONNX graph of ``model`` (eval mode), checked against torch; a DataError if it cannot be made."""
    model = on_cpu(model.eval())
    wrapper = Deployable(model if isinstance(model, RawAudioModel) else dense_copy(model)).eval()
    # A padded batch: the trace must take the masked path (see the module docstring).
    x, mask = example_inputs(model, [6, 3])
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), _quiet_stderr(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, (x, mask), buf, dynamo=False, opset_version=OPSET, do_constant_folding=True,
                input_names=["x", "mask"], output_names=["y"],
                dynamic_axes={"x": {0: "batch", 1: "x_steps"}, "mask": {0: "batch", 1: "steps"},
                              "y": {0: "batch", 1: "out_steps"}},
            )
    except Exception as e:  # the exporter raises many types; one line names the failure
        raise DataError(f"cannot export this model to ONNX: {first_line(e)}") from None
    graph = buf.getvalue()
    return _verified(graph, max_difference(model, graph))


def _verified(graph: bytes, err: float) -> bytes:
    """The graph, once ONNX Runtime's outputs agree with torch's (checked at every export)."""
    if not err <= EXPORT_TOLERANCE:
        raise DataError(f"the ONNX graph disagrees with torch by {err:.2g} (> {EXPORT_TOLERANCE:g}); "
                        "export with --format safetensors")
    return graph


@torch.no_grad()
def max_difference(model: SingleModalityModel | RawAudioModel, graph: bytes,
                   batches: tuple[list[int], ...] = ([1], [7, 2, 5], [40, 13])) -> float:
    """The largest |torch - ONNX Runtime| over the real steps of random padded batches."""
    import onnxruntime as ort  # only an export runs a graph: loading a model for training skips its 0.2 s

    session = ort.InferenceSession(graph, session_options(1), providers=["CPUExecutionProvider"])
    wrapper = Deployable(model).eval()
    worst = 0.0
    for i, lengths in enumerate(batches):
        x, mask = example_inputs(model, lengths, seed=i + 1)
        ref = wrapper(x, mask).numpy()
        got = session.run(None, {"x": x.numpy(), "mask": mask.numpy()})[0]
        if ref.shape != got.shape:
            return float("inf")
        # A pooling model gives one real output per sequence; a per-step one, one per real step.
        real = np.ones(ref.shape[:2], bool) if per_sequence(model) else mask.numpy()
        worst = max(worst, float(np.abs(ref - got)[real].max()))
    return worst


# --------------------------------------------------------------------------------------------------
# Fusion models: inputs x_<m>, present_<m> per modality and the label-step mask.


class DeployableFused(nn.Module):
    """(x_m, present_m for each modality, mask) -> activated outputs of a :class:`FusedModel`."""

    def __init__(self, model: FusedModel) -> None:
        super().__init__()
        self.model = model
        self.modalities = list(model.spec.modalities)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        n = len(self.modalities)
        x = dict(zip(self.modalities, args[:n], strict=True))
        present = dict(zip(self.modalities, args[n: 2 * n], strict=True))
        mask = args[2 * n]
        out = self.model.predict({"x": x, "present": present, "mask": mask})
        # Padded label steps read 0; a per-sequence model's mask is its one label step (keeps it a graph input).
        return out * mask[:, : out.shape[1]].unsqueeze(-1).to(out.dtype)


def export_copy_fused(model: FusedModel) -> FusedModel:
    """A copy of a fusion model that traces to ONNX with the same numbers.

    - attention is written out (``nn.MultiheadAttention`` in eval mode takes a fused kernel with no ONNX
      form): in-projection, scaled dot products with padded keys masked, softmax, out-projection;
    - a step convolution pads and cuts its input without a Python branch on the length;
    - the input checks (Python on shapes) are left to the runtime, which builds the inputs itself;
    - KNN imputation runs on every sample at once: the distance over a sample's present modalities is the
      sum of per-modality squared distances (the distance between the present modalities' concatenated
      vectors, as :meth:`FusedModel.impute` computes per pattern), the K nearest by ``topk``.
    """
    m = copy.deepcopy(model)
    net = m.net
    net._attend = MethodType(_export_attend, net)
    net._check_inputs = MethodType(lambda self, x, masks: None, net)
    net.encode = MethodType(_export_encode, net)
    m.impute = MethodType(_export_impute, m)
    return m


def _export_attend(self: FusionModel, mha: nn.MultiheadAttention, q: torch.Tensor, q_mask: torch.Tensor,
                   kv: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
    kv_present = kv_mask.any(1, keepdim=True)
    key_padding = ~kv_mask & kv_present  # as FusionModel._attend: an absent kv attends to its padding, dropped below
    b, tq, d = q.shape
    h = mha.num_heads
    w, bias = mha.in_proj_weight, mha.in_proj_bias
    qp = F.linear(q, w[:d], bias[:d]).view(b, tq, h, d // h).transpose(1, 2)
    kp = F.linear(kv, w[d: 2 * d], bias[d: 2 * d]).view(b, -1, h, d // h).transpose(1, 2)
    vp = F.linear(kv, w[2 * d:], bias[2 * d:]).view(b, -1, h, d // h).transpose(1, 2)
    scores = qp @ kp.transpose(-1, -2) * (d // h) ** -0.5 + (key_padding.to(q.dtype) * -1e9)[:, None, None, :]
    out = mha.out_proj((torch.softmax(scores, -1) @ vp).transpose(1, 2).reshape(b, tq, d))
    return out * (q_mask & kv_present).unsqueeze(-1).to(out.dtype)


def _export_encode(self: FusionModel, x: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """:meth:`FusionModel.encode` in eval mode, the step convolution's pad-or-cut without a branch."""
    enc, enc_masks = {}, {}
    for m in self.spec.used_modalities:
        xm, mask = x[m], masks[m].bool()
        xm = xm * mask.unsqueeze(-1).to(xm.dtype)
        if m in self.convs:
            t_in, t_out = self.spec.step_conv[m]
            xm = self.convs[m](F.pad(xm, (0, 0, 0, t_in))[:, :t_in])  # zero-pad to t_in, then cut to t_in
            mask = mask.any(1, keepdim=True).expand(-1, t_out)
        steps = torch.arange(1, mask.shape[1] + 1, device=mask.device)
        extent = (mask * steps).amax(1)
        enc[m] = self.encoders[m](xm, steps.unsqueeze(0) <= extent.unsqueeze(1))
        enc_masks[m] = mask
    return enc, enc_masks


def _export_impute(self: FusedModel, vectors: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
                   ) -> dict[str, torch.Tensor]:
    mods = self.spec.modalities
    present = {m: self._present(masks[m]) for m in mods}  # [B, T'] per modality
    k = min(self.spec.k, self.spec.bank_size)
    d2 = 0
    for m in mods:  # squared distance to every bank entry over the present modalities: [B, T', N]
        diff = vectors[m].unsqueeze(-2) - getattr(self, f"bank_{m}")
        d2 = d2 + present[m].unsqueeze(-1).to(diff.dtype) * (diff * diff).sum(-1)
    nearest = d2.topk(k, dim=-1, largest=False).indices  # [B, T', k]
    some = torch.stack([present[m] for m in mods], -1).any(-1)
    out = {}
    for m in mods:
        filled = getattr(self, f"bank_{m}")[nearest].mean(-2)  # [B, T', width]
        take = (~present[m] & some).unsqueeze(-1)
        out[m] = torch.where(take, filled, vectors[m])
    return out


def fused_example_inputs(model: FusedModel, lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    """A padded batch for a fusion model: per modality its own length (a step grid for per-step models),
    one modality absent from the second sample and a gap in the first modality of the third."""
    g = torch.Generator().manual_seed(seed)
    spec = model.spec
    t = max(lengths)
    valid = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    xs, ps = [], []
    for i, m in enumerate(spec.modalities):
        d = spec.fusion.modalities[m]
        xs.append(torch.randn(len(lengths), t, d, generator=g))
        p = valid.clone()
        if len(lengths) > 1 and i == len(spec.modalities) - 1:
            p[1] = False
        if len(lengths) > 2 and i == 0:
            p[2, 0] = False
        ps.append(p)
    mask = valid if not spec.fusion.pool_time else torch.ones(len(lengths), 1, dtype=torch.bool)
    return [*xs, *ps, mask]


def fused_to_onnx(model: FusedModel) -> bytes:
    """The ONNX graph of a fusion model, checked against torch (see :func:`export_copy_fused`)."""
    model = on_cpu(model.eval())
    wrapper = DeployableFused(export_copy_fused(model)).eval()
    names = input_names(model.spec)
    args = fused_example_inputs(model, [6, 4, 3])
    dyn = {n: {0: "batch", 1: f"steps_{n.split('_', 1)[-1]}"} for n in names[:-1]}
    dyn["mask"] = {0: "batch", 1: "steps"}
    dyn["y"] = {0: "batch", 1: "out_steps"}
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), _quiet_stderr(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, tuple(args), buf, dynamo=False, opset_version=OPSET, input_names=names,
                              output_names=["y"], dynamic_axes=dyn)
    except Exception as e:  # the exporter raises many types; one line names the failure
        raise DataError(f"cannot export this fusion model to ONNX: {first_line(e)}") from None
    graph = buf.getvalue()
    return _verified(graph, fused_max_difference(model, graph))


@torch.no_grad()
def fused_max_difference(model: FusedModel, graph: bytes,
                         batches: tuple[list[int], ...] = ([1], [7, 2, 5], [40, 13, 9])) -> float:
    """:func:`max_difference` of a fusion model, on batches with absent modalities and gaps."""
    import onnxruntime as ort  # as in max_difference

    session = ort.InferenceSession(graph, session_options(1), providers=["CPUExecutionProvider"])
    names = input_names(model.spec)
    worst = 0.0
    for i, lengths in enumerate(batches):
        args = fused_example_inputs(model, lengths, seed=i + 1)
        batch = {"x": dict(zip(model.spec.modalities, args, strict=False)),
                 "present": dict(zip(model.spec.modalities, args[len(model.spec.modalities):], strict=False)),
                 "mask": args[-1]}
        ref = model.predict(batch).numpy()
        got = session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})[0]
        if ref.shape != got.shape:
            return float("inf")
        real = np.ones(ref.shape[:2], bool) if model.spec.fusion.pool_time else args[-1].numpy()
        worst = max(worst, float(np.abs(ref - got)[real].max()))
    return worst
