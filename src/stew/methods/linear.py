"""Linear baselines: the number every deep model must beat (AVEC 2016's "SVR + offset",
docs/methods/unimodal.md#linear-baselines).

The features, standardised on train like every method's, go through one linear map per step:
- regression: ridge (the default: closed form, every offset in one solve) or a linear SVR (the AVEC
  2016 baseline: liblinear, epsilon-insensitive loss);
- classification: logistic regression, classes weighted by 1 / frequency unless ``class_weight: none``.

Two things are searched on validation, never on test: the regularisation strength and, on
frame-level data, the label offset. Annotators react late, so the label at ``t + offset`` is
predicted from the features at ``t`` (the "+ offset"); predictions are moved back by the chosen
offset before scoring, exactly as the deep models' label delay.

The fitted map is copied into the deployable student (identity encoder + linear head), so export,
predict and the run folder are the same safetensors + JSON as every other method: no scikit-learn
pickle is ever written.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.linalg import LinAlgWarning
from scipy.special import expit, softmax
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.svm import LinearSVR
from threadpoolctl import threadpool_limits

from stew.config import LinearConfig, TrainConfig
from stew.data.bundle import Bundle
from stew.data.dataset import Dataset
from stew.data.preprocess import shift_labels, unshift_predictions
from stew.errors import DataError
from stew.methods.base import Method, MethodDef
from stew.models.encoders import EncoderSpec
from stew.models.heads import HeadSpec
from stew.models.student import SingleModalityModel, StudentSpec

DEFAULT_GRID = {
    "ridge": [10.0**e for e in range(-1, 6)],  # alpha
    # C: AVEC 2016 searched 1e-5..1; liblinear's dual solver does not converge at C = 1 on RECOLA-sized
    # data (5,000 iterations, 48 s a fit on one core), so the default stops at 1e-1.
    "svr": [10.0**e for e in range(-5, 0)],
    "logistic": [10.0**e for e in range(-4, 3)],  # C
}
DEFAULT_MAX_OFFSET_S, DEFAULT_OFFSET_STEP_S = 8.0, 0.4


def estimator_name(task: str, cfg: LinearConfig) -> str:
    return cfg.model if task == "regression" else "logistic"


def offset_grid(cfg: TrainConfig, step_rate_hz: float | None, shortest: int) -> list[float]:
    """The label offsets (seconds) to search; one fixed offset when ``--label-delay-s`` is given.

    ``shortest``: the shortest training recording, in steps (bounds the default range).
    """
    given = cfg.linear.offsets_s
    if given is not None and cfg.label_delay_s is not None:
        raise DataError("give linear.offsets_s (searched) or --label-delay-s (fixed), not both")
    if step_rate_hz is None:
        if given not in (None, [0.0]) or cfg.label_delay_s:
            raise DataError("label offsets apply to frame-level data; this data is utterance-level")
        return [0.0]
    if given is not None:
        return sorted(set(given))
    if cfg.label_delay_s is not None:
        return [cfg.label_delay_s]
    n = int(round(DEFAULT_MAX_OFFSET_S / DEFAULT_OFFSET_STEP_S))
    grid = [round(i * DEFAULT_OFFSET_STEP_S, 6) for i in range(n + 1)]
    # The default range stops at half the shortest training recording, so that short data still
    # leaves most of each recording paired with a label that is not a repeated last one.
    return [o for o in grid if o * step_rate_hz <= shortest / 2] or [0.0]


class Linear(Method):
    """A standardiser and a weight matrix, fitted in closed form and selected on validation."""

    closed_form = True

    def __init__(self, cfg: TrainConfig, bundle: Bundle) -> None:
        super().__init__()
        ds, m = bundle.ds, cfg.modality
        assert m is not None
        self.task, self.lin, self.threads = ds.task, cfg.linear, cfg.threads
        self.estimator = estimator_name(ds.task, cfg.linear)
        self.grid = list(cfg.linear.grid or DEFAULT_GRID[self.estimator])
        rate = ds.step_rate_hz or 0.0
        shortest = min(len(s) for s in ds.split("train"))
        self.offsets_s = offset_grid(cfg, ds.step_rate_hz, shortest)
        self.offsets = sorted({int(round(o * rate)) for o in self.offsets_s})
        if self.offsets[-1] >= shortest:
            raise DataError(
                f"label offset search up to {max(self.offsets_s):g} s ({self.offsets[-1]} steps) reaches past the "
                f"shortest training recording ({shortest} steps = {shortest / rate:g} s); lower linear.offsets_s"
            )
        n_out = ds.n_outputs if ds.task != "regression" else len(bundle.targets)
        self.student = SingleModalityModel(StudentSpec(
            modality=m, task=ds.task, targets=bundle.targets,
            encoder=EncoderSpec(kind="identity", d_in=ds.modalities[m]),
            head=HeadSpec(kind="linear", d_in=ds.modalities[m], n_out=n_out),
            activation="identity" if ds.task == "regression" else "task",
        ))
        self.record: dict = {}

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise TypeError("the linear method is fitted in closed form (fit_closed_form), not by gradient descent")

    # ----------------------------------------------------------------------------------------------

    def fit_closed_form(self, bundle: Bundle, evaluate: Callable[[list[np.ndarray]], float]) -> int:
        """Search (strength, offset) on validation, keep the best map; return the chosen offset in steps.

        ``evaluate`` scores whole-recording validation predictions (on the labels' own time axis)
        with the run's selection metric.
        """
        m, cols = self.student.spec.modality, bundle.target_cols
        # Steps where the modality is missing carry no evidence (their features are the training mean);
        # they are left out of the fit and predicted from the intercept alone, as the deep models would.
        rows = [s.present[m].numpy() for s in bundle.train]
        # float32 as the deployed model computes; it halves the cost of the Gram matrices on 600+ features.
        x = np.concatenate([s.x[m].numpy()[r] for s, r in zip(bundle.train, rows, strict=True)])
        labels = {k: np.concatenate([shift_labels(s.source.targets[:, cols], k)[r]
                                     for s, r in zip(bundle.train, rows, strict=True)]) for k in self.offsets}
        if len(x) == 0:
            raise DataError(f"modality {m!r} is missing at every training step")
        if self.task != "regression":
            classes = np.unique(labels[self.offsets[0]])
            if len(classes) < 2:
                raise DataError(f"the training split has a single class ({int(classes[0])}); a classifier needs two")
        val_x = np.concatenate([s.x[m].numpy() for s in bundle.val])
        ends = np.cumsum([len(s.y) for s in bundle.val])[:-1]

        def search(estimator: str, grid: list[float], offsets: list[int]) -> tuple[list[dict], tuple]:
            """Every (strength, offset) scored on validation; the best as (score, strength, k, w, b)."""
            tried, best = [], None
            for strength in grid:
                fitted = self._fit_strength(estimator, strength, offsets, x, labels)
                # Every offset's validation outputs in one product.
                z_all = val_x @ np.concatenate([w for w, _ in fitted.values()]).T.astype(np.float32)
                col = 0
                for k, (w, b) in fitted.items():
                    z = z_all[:, col:col + len(w)] + b
                    col += len(w)
                    preds = [unshift_predictions(p, k) for p in np.split(self._outputs(z), ends)]
                    score = float(evaluate(preds))
                    tried.append({"estimator": estimator, "strength": strength, "offset_s": self._seconds(k, bundle),
                                  "val_score": score})
                    # Ties keep the first candidate: the strongest regularisation, then the smallest offset.
                    if best is None or score > best[0]:
                        best = (score, strength, k, w, b)
            assert best is not None
            return tried, best

        with threadpool_limits(self.threads):
            offsets, tried = self.offsets, []
            if self.estimator == "svr" and len(offsets) > 1:
                # The offset is the annotators' delay, a property of the labels, not of the regressor: ridge
                # finds it over every offset in a few closed-form solves, where liblinear's SVR would need a
                # fit per (C, offset) (minutes on RECOLA). The SVR then searches C at that offset.
                tried, found = search("ridge", _strongest_first("ridge", DEFAULT_GRID["ridge"]), offsets)
                offsets = [found[2]]
            more, (score, strength, k, w, b) = search(self.estimator, _strongest_first(self.estimator, self.grid),
                                                      offsets)
        with torch.no_grad():
            self.student.head.weight.copy_(torch.as_tensor(np.array(w), dtype=torch.float32))
            self.student.head.bias.copy_(torch.as_tensor(np.array(b), dtype=torch.float32))
        self.record = {
            "estimator": self.estimator, "strength_name": "alpha" if self.estimator == "ridge" else "C",
            "strength": strength, "offset_s": self._seconds(k, bundle), "offset_steps": k,
            "offset_found_by": "ridge" if tried else self.estimator,
            "class_weight": self.lin.class_weight if self.task != "regression" else None,
            "n_train_rows": int(len(x)), "search": tried + more,
        }
        return k

    def extra_record(self) -> dict:
        return self.record

    def _fit_strength(
        self, estimator: str, strength: float, offsets: list[int], x: np.ndarray, labels: dict[int, np.ndarray]
    ) -> dict:
        """offset -> (weight [n_out, d], bias [n_out]) for one regularisation strength."""
        if estimator == "ridge":
            # Ridge fits many targets in one solve: every offset's labels are columns of one matrix.
            stacked = np.concatenate([labels[k] for k in offsets], axis=1)
            # The weakest alphas of the grid are near-singular on 600+ correlated features; scipy warns,
            # validation then rejects them. The warning would only alarm the user.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LinAlgWarning)
                fitted = Ridge(alpha=strength).fit(x, stacked)
            n_t = labels[offsets[0]].shape[1]
            coef, icpt = fitted.coef_.reshape(-1, x.shape[1]), np.broadcast_to(fitted.intercept_, (stacked.shape[1],))
            return {k: (coef[i * n_t:(i + 1) * n_t], icpt[i * n_t:(i + 1) * n_t]) for i, k in enumerate(offsets)}
        if estimator == "svr":
            out = {}
            for k in offsets:
                fits = [LinearSVR(C=strength, loss="epsilon_insensitive", dual=True, max_iter=self.lin.max_iter,
                                  random_state=0).fit(x, y) for y in labels[k].T]
                out[k] = (np.stack([f.coef_ for f in fits]), np.array([f.intercept_[0] for f in fits]))
            return out
        return {k: self._logistic(strength, x, labels[k][:, 0].astype(int)) for k in offsets}

    def _logistic(self, c: float, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        weight = "balanced" if self.lin.class_weight == "balanced" else None
        f = LogisticRegression(C=c, class_weight=weight, max_iter=self.lin.max_iter).fit(x, y)
        if self.task == "binary":
            return f.coef_, f.intercept_
        # A class absent from train gets a bias so low that softmax never picks it.
        n_classes = self.student.spec.head.n_out
        w, b = np.zeros((n_classes, x.shape[1])), np.full(n_classes, -1e4)
        w[f.classes_], b[f.classes_] = f.coef_, f.intercept_
        return w, b

    def _outputs(self, z: np.ndarray) -> np.ndarray:
        """What the student's ``predict`` returns for pre-activation outputs ``z``."""
        if self.task == "binary":
            return expit(z)
        return softmax(z, axis=1) if self.task == "multiclass" else z

    @staticmethod
    def _seconds(k: int, bundle: Bundle) -> float:
        return round(k / bundle.ds.step_rate_hz, 6) if bundle.ds.step_rate_hz else 0.0


def _strongest_first(estimator: str, grid: list[float]) -> list[float]:
    """Ridge's alpha grows with regularisation, C shrinks: order so that ties go to the simpler model."""
    return sorted(grid, reverse=estimator == "ridge")


def build(cfg: TrainConfig, bundle: Bundle, run_dir: Path) -> Linear:
    return Linear(cfg, bundle)


def resolve(cfg: TrainConfig, ds: Dataset) -> TrainConfig:
    if cfg.loss in ("ccc", "pcc"):
        raise DataError(f"--loss {cfg.loss} does not apply to --method linear (least squares, hinge or logistic)")
    return cfg


# No label delay: linear searches its label offset on validation instead.
METHOD = MethodDef(name="linear", build=build, label_delay_s=None, resolve=resolve)
