"""SEW, "Stronger Enhancing Weaker" (docs/methods/sew.md; Rajan et al., ICASSP 2021).

Each step (a 40 ms frame or an utterance) is handled on its own. Four modules train jointly:

1. a cross-modal translator: the weak encoder W_E maps the weaker features M_W to a latent m_sw,
   and the decoder S_D1 maps m_sw to a prediction of the stronger features M_S;
2. an auto-encoder of the stronger modality: S_E maps M_S to m_ss, and S_D2 maps it back;
3. feature alignment: deep CCA between m_ss and m_sw (top-K singular values, K = 10);
4. a regressor R on m_sw (SEW's 4-layer single-step GRU).

    L = alpha * MSE(S_D1(m_sw), M_S) + beta * MSE(S_D2(m_ss), M_S) + gamma * (-CCA(m_ss, m_sw)) + L_pred

At inference only W_E and R remain: they are the deployable ``student``. The ablations remove
S_D2 (beta = 0), CCA (gamma = 0), S_D1 (alpha = 0), or CCA and S_D1 together.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stew.config import TrainConfig
from stew.data.bundle import Bundle
from stew.methods.base import LR_1E3, Dim, Method, MethodDef, prediction_loss
from stew.models.encoders import MLP, EncoderSpec
from stew.models.heads import HeadSpec
from stew.models.student import SingleModalityModel, StudentSpec
from stew.objectives import dcca_loss, masked_mse

ABLATIONS = {
    "-SD2": {"beta": 0.0}, "-CCA": {"gamma": 0.0}, "-SD1": {"alpha": 0.0}, "-(CCA&SD1)": {"alpha": 0.0, "gamma": 0.0},
}

# Encoder and decoder sizes by RECOLA modality (docs/methods/sew.md#layer-sizes). The last encoder size is
# the latent.
SIZES = {
    "video_geo": ([512, 256, 128], [256, 512]),
    "audio": ([108, 128], [108]),
    "video_app": ([168], []),
}


def layer_sizes(modality: str, d: int, latent: int) -> tuple[list[int], list[int]]:
    """Encoder sizes (ending at the latent) and decoder hidden sizes for one modality.

    Modalities outside RECOLA get one hidden layer halfway between input and latent [U].
    """
    enc, dec = SIZES.get(modality, ([(d + latent) // 2, latent], [(d + latent) // 2]))
    # With video-appearance in the pair the latent is 168, so the last layer widens [U]
    # (docs/methods/sew.md#layer-sizes).
    return [*enc[:-1], latent], list(dec)


class SEW(Method):
    def __init__(
        self, student: StudentSpec, strong: str, d_strong: int, strong_sizes: tuple[list[int], list[int]],
        loss: str, alpha: float, beta: float, gamma: float, k: int | None, r1: float, r2: float,
    ) -> None:
        super().__init__()
        self.student = SingleModalityModel(student)  # W_E + R
        self.weak, self.strong = student.modality, strong
        latent = student.encoder.mlp_sizes[-1]
        enc_sizes, dec_hidden = strong_sizes
        self.strong_decoder = MLP(latent, [*dec_hidden, d_strong])  # S_D1: translator decoder
        self.strong_encoder = MLP(d_strong, enc_sizes)  # S_E
        self.strong_autodecoder = MLP(latent, [*dec_hidden, d_strong])  # S_D2
        self.loss_name = loss
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.k, self.r1, self.r2 = k, r1, r2

    @property
    def weak_encoder(self) -> torch.nn.Module:
        return self.student.encoder

    @property
    def regressor(self) -> torch.nn.Module:
        return self.student.head

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = batch["mask"]
        m_w, m_s = batch["x"][self.weak], batch["x"][self.strong]
        m_sw = self.weak_encoder(m_w, mask)
        # S_E feeds only the auto-encoder and the alignment; with both off it is not run.
        m_ss = self.strong_encoder(m_s) if (self.beta or self.gamma) else None

        task = self.student.spec.task
        pred_loss = prediction_loss(self.regressor(m_sw, mask), batch["y"], mask, task, self.loss_name)
        loss, parts = pred_loss, {"prediction": pred_loss.detach()}
        # A term switched off by an ablation is not even computed: it cannot leak gradients, costs
        # nothing (the DCCA's eigendecompositions are most of a SEW step), and cannot stop a run with a
        # "diverged" error from a term that is not in the loss.
        if self.alpha:
            translation_loss = masked_mse(self.strong_decoder(m_sw), m_s, mask)
            loss = loss + self.alpha * translation_loss
            parts["translation"] = translation_loss.detach()
        if self.beta:
            autoencode_loss = masked_mse(self.strong_autodecoder(m_ss), m_s, mask)
            loss = loss + self.beta * autoencode_loss
            parts["autoencode"] = autoencode_loss.detach()
        if self.gamma:
            alignment_loss = dcca_loss(m_ss, m_sw, mask, k=self.k, r1=self.r1, r2=self.r2)
            loss = loss + self.gamma * alignment_loss
            parts["alignment"] = alignment_loss.detach()
        return loss, parts

    def extra_record(self) -> dict:
        return {"teacher": self.strong, "alpha": self.alpha, "beta": self.beta, "gamma": self.gamma, "k": self.k}


def build(cfg: TrainConfig, bundle: Bundle, run_dir: Path) -> SEW:
    s = cfg.sew
    weights = {"alpha": s.alpha, "beta": s.beta, "gamma": s.gamma}
    if cfg.ablation:
        METHOD.check_ablation(cfg.ablation)
        weights |= ABLATIONS[cfg.ablation]
    weak, strong = cfg.modality, cfg.teacher
    dims = bundle.ds.modalities
    latent = s.latent or (168 if "video_app" in (weak, strong) else 128)
    enc_w, _ = layer_sizes(weak, dims[weak], latent)
    n_out = bundle.ds.n_outputs if bundle.task != "regression" else len(bundle.targets)
    student = StudentSpec(
        modality=weak, task=bundle.task, targets=bundle.targets,
        encoder=EncoderSpec(kind="mlp", d_in=dims[weak], mlp_sizes=enc_w),
        head=HeadSpec(kind="gru4", d_in=latent, n_out=n_out),
    )
    return SEW(
        student, strong, dims[strong], layer_sizes(strong, dims[strong], latent), cfg.loss,
        k=s.k, r1=s.r1, r2=s.r2, **weights,
    )


_GRID = (1e-3, 1e-2, 0.1, 1.0, 10.0)
_SOURCE = "SEW paper: searched over {1e-3, 1e-2, 0.1, 1, 10}"

# SGD at 1e-3 on single frames, scored on 3 s windows; labels shifted by 2.4 s. Its MLP encoders and GRU
# regressor have no dropout, so none is tuned.
METHOD = MethodDef(
    name="sew", build=build, teacher="stronger", ablations=ABLATIONS, step_pairing=True, lr=1e-3, optimizer="sgd",
    label_delay_s=2.4, per_step=True,
    tuning={
        "alpha": Dim("sew.alpha", "categorical", choices=_GRID, source=_SOURCE),
        "beta": Dim("sew.beta", "categorical", choices=_GRID, source=_SOURCE),
        "gamma": Dim("sew.gamma", "categorical", choices=_GRID, source=_SOURCE),
        "lr": LR_1E3,
    },
)
