"""The fusion method (spec §4): training under the one loop, ModDrop, KNN imputation, missing-modality
evaluation, export and predict with any subset of modalities."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch
import yaml

from stew.config import TrainConfig
from stew.data.dataset import modality_subsets as subsets
from stew.data.formats.native import write_native
from stew.data.preprocess import WindowDataset
from stew.deploy import load_model, predict_dataset
from stew.eval.missing import evaluate_missing, missing_file
from stew.experiments.protocols import parse_imputation
from stew.methods import get as get_method
from stew.methods.base import STUDENT_KNOBS
from stew.methods.fusion import Fusion, ModDropWindows, fusion_pairs, training_vectors
from stew.training.resolve import make_bundle, resolve
from stew.training.run import run
from tests.conftest import FAST, tiny_clips, tiny_utterances
from tests.test_cli import invoke, one_line_error

# FAST without the unimodal student's knobs (gru_units, d_model, ...), which fusion refuses (issue 28).
SMALL = {**{k: v for k, v in FAST.items() if k not in STUDENT_KNOBS}, "max_epochs": 12, "patience": 12,
         "fusion": {"gru_units": 8, "heads": 2, "clf_hidden": 16}}


def train(tmp_path, ds, name="run", **fusion):
    cfg = TrainConfig(data=tmp_path / "unused", method="fusion", out=tmp_path / name,
                      **{**SMALL, "fusion": {**SMALL["fusion"], **fusion}})
    return run(cfg, ds), tmp_path / name


def test_sequence_level_fusion_trains_and_exports(tmp_path):
    ds = tiny_clips()
    res, out = train(tmp_path, ds)
    assert res["method"]["fusion"] == "intra" and res["method"]["modalities"] == ["long", "short"]
    assert res["test"]["n"] == len(ds.split("test"))
    assert res["val"]["acc"] > 60  # 'long' carries the class; chance is about 33 %
    preds = pd.read_csv(out / "predictions.csv")
    again = predict_dataset(out / "model", ds)
    mine = again.set_index("sequence").loc[preds["sequence"]]
    np.testing.assert_allclose(mine["prob_1"].to_numpy(), preds["prob_1"].to_numpy(), atol=1e-5)
    assert set(again["modalities"]) == {"long+short", "long"}  # every 8th clip lacks 'short'


def test_step_level_fusion_predicts_every_step(tmp_path):
    ds = tiny_utterances()
    res, out = train(tmp_path, ds, kind="cross")
    assert res["method"]["pairs"] == ["audio2text", "text2audio"]
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == res["val"]["n"] + res["test"]["n"] == sum(len(s) for s in ds if s.split == "test") + sum(
        len(s) for s in ds if s.group in res["data"]["val_groups"])
    model, meta = load_model(out / "model")
    assert meta["dims"] == {"text": 3, "audio": 4} and not model.spec.fusion.pool_time


def built(tmp_path, ds, **fusion):
    """The fusion method as a run builds it, with its bundle (nothing trained)."""
    cfg = resolve(TrainConfig(data=tmp_path, method="fusion", **{**SMALL, "fusion": {**SMALL["fusion"], **fusion}}),
                  ds)
    bundle = make_bundle(cfg, ds, cfg.fusion.modalities)
    return get_method("fusion").build(cfg, bundle, tmp_path), bundle


def test_moddrop_trains_on_m_plus_one_versions(tmp_path):
    ds = tiny_clips()
    method, bundle = built(tmp_path, ds, moddrop=True)
    base = WindowDataset.for_training(bundle.train, None, None)
    windows = ModDropWindows(base, ["long", "short"], method.student.remove)
    assert len(windows) == 3 * len(base)  # spec §4.7: 4 x N_train with three modalities
    batch = windows.collate([windows[i] for i in range(len(windows))])
    n = len(base)
    assert not batch["present"]["long"][n : 2 * n].any() and batch["present"]["short"][n : 2 * n].any()
    assert not batch["present"]["short"][2 * n :].any() and not batch["x"]["short"][2 * n :].any()


def test_moddrop_is_what_the_loop_trains_on(tmp_path, monkeypatch):
    # End to end: every epoch the loss sees each training clip 3 times, once with 'long' absent and
    # once with 'short' absent (clips without 'short' in the data lack it in two versions).
    ds = tiny_clips()
    seen = []
    loss = Fusion.training_loss

    def spy(self, batch):
        seen.append({m: batch["present"][m].any(1) for m in ("long", "short")})
        return loss(self, batch)

    monkeypatch.setattr(Fusion, "training_loss", spy)
    cfg = TrainConfig(data=tmp_path / "unused", method="fusion", out=tmp_path / "run",
                      **{**SMALL, "max_epochs": 1, "fusion": {**SMALL["fusion"], "moddrop": True}})
    res = run(cfg, ds)
    n = len(res.bundle.train)
    no_short = sum(not s.present["short"].any() for s in res.bundle.train)
    present = {m: torch.cat([b[m] for b in seen]) for m in ("long", "short")}
    assert len(present["long"]) == 3 * n
    assert int((~present["long"]).sum()) == n and int((~present["short"]).sum()) == n + 2 * no_short
    assert res["method"]["moddrop"] is True


def test_knn_with_k_1_gives_a_training_sample_its_own_vector(tmp_path):
    ds = tiny_clips()
    res, out = train(tmp_path, ds, impute="knn", k=1)
    model, _ = load_model(out / "model")
    cfg = resolve(TrainConfig.model_validate(res["config"]), ds)
    bundle = make_bundle(cfg, ds, ["long", "short"])
    bank = training_vectors(model, bundle)
    torch.testing.assert_close(bank["short"], model.bank_short)
    # A training sample with 'short' removed gets its own stored 'short' vector back (spec §4.7).
    windows = WindowDataset.for_evaluation(bundle.train, None)
    batch = windows.collate([windows[i] for i in range(len(windows))])
    full = {m: batch["present"][m] for m in ("long", "short")}
    keep = full["short"].any(1)
    vectors = model.net.vectors(batch["x"], full)
    dropped = {**full, "short": torch.zeros_like(full["short"])}
    imputed = model.impute(model.net.vectors(batch["x"], dropped), dropped)
    torch.testing.assert_close(imputed["short"][keep], vectors["short"][keep])
    torch.testing.assert_close(imputed["long"], vectors["long"])


def test_missing_table_has_every_subset_and_the_full_one_matches_the_run(tmp_path):
    ds = tiny_clips()
    data = write_native(ds, tmp_path / "data")
    cfg = TrainConfig(data=data, method="fusion", out=tmp_path / "run", **SMALL)
    res = run(cfg)
    table = evaluate_missing(tmp_path / "run")
    assert list(table) == ["long+short", "long", "short"] == ["+".join(s) for s in subsets(["long", "short"])]
    assert table["long+short"]["val"] == res["val"] and table["long+short"]["test"] == res["test"]
    assert table["long"]["val"].keys() == res["val"].keys()
    assert table["short"]["val"]["acc"] < table["long"]["val"]["acc"]  # 'short' is the weak modality
    on_disk = json.loads((tmp_path / "run" / "missing.json").read_text())
    assert on_disk == json.loads(json.dumps(table)) and (tmp_path / "run" / "missing-zero.json").is_file()
    evaluate_missing(tmp_path / "run", "knn", 3)
    assert (tmp_path / "run" / "missing-knn-k3.json").is_file()


def test_knn_changes_nothing_where_nothing_is_absent_and_fills_what_is(tmp_path):
    # Probabilities, not metrics: a metric can stay the same while the imputation changes outputs.
    ds = tiny_clips()
    res, out = train(tmp_path, ds, impute="knn", k=3)
    model, _ = load_model(out / "model")
    bundle = res.bundle
    seqs = bundle.val + bundle.test
    windows = WindowDataset.for_evaluation(seqs, None)
    batch = windows.collate([windows[i] for i in range(len(windows))])
    knn = model.predict(batch)[:, 0]
    model.spec = model.spec.model_copy(update={"impute": "zero"})
    zero = model.predict(batch)[:, 0]
    whole = batch["present"]["short"].any(1)  # every 8th clip lacks 'short' in the data
    assert bool(whole.any()) and bool((~whole).any())
    torch.testing.assert_close(knn[whole], zero[whole], rtol=0, atol=0)
    assert (knn[~whole] - zero[~whole]).abs().amax(1).min() > 1e-4  # each clip lacking 'short' got one


def test_subsets_of_three():
    assert [len(s) for s in subsets(["t", "v", "a"])] == [3, 2, 2, 2, 1, 1, 1]


def test_pairs_by_initials_or_names():
    mods = ["text", "video", "audio"]
    assert fusion_pairs(["T2V", "a2v", "text2audio"], mods) == [("text", "video"), ("audio", "video"),
                                                                 ("text", "audio")]
    assert fusion_pairs(None, mods) is None


# --------------------------------------------------------------------------------------------------
# The command line


def test_cli_train_evaluate_export_predict(tmp_path):
    data = write_native(tiny_clips(), tmp_path / "data")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    res = invoke("train", "--data", data, "--method", "fusion", "--fusion", "cross", "--no-sp", "--moddrop",
                 "--config", cfg, "--out", tmp_path / "run")
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["method"]["fusion"] == "cross" and record["method"]["sp"] is False
    assert record["config"]["fusion"]["gru_units"] == 8  # the file's fusion keys survive --fusion
    res = invoke("evaluate", tmp_path / "run", "--missing", "--format", "json")
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout.splitlines()[0])["rows"]) == 3
    res = invoke("evaluate", tmp_path / "run", "--missing", "--absent", "zero-input", "--format", "json")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "missing-zero-input.json").is_file()
    assert (tmp_path / "run" / "missing-zero.json").is_file()
    for args, match in [(["--absent", "nope"], "--absent must be mask or zero-input"),
                        (["--absent", "zero-input", "--impute", "knn"], "give it with --impute zero")]:
        assert match in one_line_error(invoke("evaluate", tmp_path / "run", "--missing", *args))
    assert invoke("export", tmp_path / "run", "--out", tmp_path / "model").exit_code == 0
    short_only = write_native(tiny_clips().select_modalities(["short"]), tmp_path / "short")
    res = invoke("predict", tmp_path / "model", "--data", short_only, "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    assert set(pd.read_csv(tmp_path / "p.csv")["modalities"]) <= {"short", "none"}


def test_cli_bad_fusion_input(tmp_path):
    data = write_native(tiny_clips(), tmp_path / "data")
    out = tmp_path / "run"
    for args, match in [
        (["--method", "unimodal", "--modality", "long", "--fusion", "cross"], "--fusion applies to --method fusion"),
        (["--method", "fusion", "--fusion", "cross", "--pairs", "X2Y"], "unknown modality"),
        (["--method", "fusion", "--modalities", "long,nope"], "unknown nope"),
        (["--method", "fusion", "--fusion", "cross", "--impute", "knn"], "needs --fusion intra"),
        (["--method", "fusion", "--fusion", "cross", "--modalities", "long"], "at least two modalities"),
        (["--method", "fusion", "--modality", "long"], "reads --modalities"),
        (["--method", "fusion", "--fold", "2"], "no folds"),
        (["--method", "fusion", "--absent", "zero-input"], "--absent (fusion.absent) applies to --moddrop"),
        (["--method", "fusion", "--moddrop", "--absent", "zeros"], "invalid config key 'fusion.absent'"),
    ]:
        line = one_line_error(invoke("train", "--data", data, *args, "--out", out))
        assert match in line, line
        assert not out.exists()


def test_predict_refuses_a_modality_of_the_wrong_dimension(tmp_path):
    ds = tiny_clips()
    _, out = train(tmp_path, ds)
    bad = ds.replace_sequences(
        s.__class__(**{**s.__dict__, "features": {**s.features, "short": np.zeros((s.length("short"), 5), np.float32)}})
        for s in ds
    )
    bad.modalities = {"long": 4, "short": 5}
    bad_dir = write_native(bad, tmp_path / "bad")
    line = one_line_error(invoke("predict", out / "model", "--data", bad_dir, "--out", tmp_path / "p.csv"))
    assert "dimension mismatch for 'short'" in line and not (tmp_path / "p.csv").exists()


def test_evaluate_missing_refuses_a_single_modality_run(tmp_path):
    data = write_native(tiny_clips(), tmp_path / "data")
    assert invoke("train", "--data", data, "--modality", "long", "--arch", "classifier", "--max-epochs", "1",
                  "--out", tmp_path / "run").exit_code == 0
    line = one_line_error(invoke("evaluate", tmp_path / "run", "--missing"))
    assert "needs a fusion run" in line
    assert "nothing to evaluate" in one_line_error(invoke("evaluate", tmp_path / "run"))


def test_random_moddrop_drops_in_training_and_never_everything(tmp_path, monkeypatch):
    # p = 0.9 drops both modalities of about 81 % of the draws, and every 8th clip lacks 'short' in the
    # data, so a missing guard shows at once; what the loss sees is checked, not the config echoed.
    ds = tiny_clips()
    method, bundle = built(tmp_path, ds, moddrop_p=0.9)
    windows = WindowDataset.for_training(bundle.train, None, None)
    batch = windows.collate([windows[i] for i in range(len(windows))])
    seen = []
    outputs = method.student.outputs
    monkeypatch.setattr(method.student, "outputs", lambda b, masks=None: seen.append(b) or outputs(b, masks))
    method.train()
    for _ in range(30):
        method.training_loss(batch)
    have = {m: batch["present"][m].any(1) for m in ("long", "short")}
    kept = {m: torch.stack([b["present"][m].any(1) for b in seen]) for m in ("long", "short")}
    assert bool((kept["long"] | kept["short"]).all())  # never a sample without any modality
    for m in ("long", "short"):
        dropped = have[m] & ~kept[m]
        assert 0.05 < float(dropped.float().mean()) < 0.5  # modalities are dropped, not just echoed in the config
    method.eval()
    seen.clear()
    method.training_loss(batch)  # a validation batch (Method.validation_loss): nothing dropped
    assert all(bool((seen[0]["present"][m] == batch["present"][m]).all()) for m in ("long", "short"))


def test_cli_iemocap_bad_input_is_one_line_and_writes_nothing(tmp_path):
    from stew.data.synth.iemocap import write_synthetic_iemocap

    data = write_synthetic_iemocap(tmp_path / "iem", utterances=60)
    out = tmp_path / "run"
    assert "fold" in one_line_error(invoke("train", "--data", data, "--method", "fusion", "--fold", "6", "--out", out))
    labels = data / "folds" / "fold02" / "dev_label.npy"
    np.save(labels, np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    line = one_line_error(invoke("train", "--data", data, "--method", "fusion", "--fold", "2", "--out", out))
    assert "dev_label.npy" in line and not out.exists()


# --------------------------------------------------------------------------------------------------
# An absent modality as the thesis defines it: an all-zero input through the encoders (Table 4.4)


def test_zero_input_is_an_all_zero_input_of_the_fixed_length_marked_real(tmp_path):
    ds = tiny_clips()
    res, out = train(tmp_path, ds)
    model, _ = load_model(out / "model")
    model.requires_grad_(False)
    windows = WindowDataset.for_evaluation(res.bundle.test, None)
    batch = windows.collate([windows[i] for i in range(len(windows))])
    n = batch["mask"].shape[0]
    model.zero_steps = {"long": 30, "short": 9}  # wider than any clip's 'short' (2-6 steps): padded
    model.absent = frozenset({"short"})
    masked = model.predict(batch)
    model.absent_as = "zero-input"
    zero_input = model.predict(batch)
    model.absent = frozenset()
    by_hand = model.predict({**batch, "x": {**batch["x"], "short": torch.zeros(n, 9, 3)},
                             "present": {**batch["present"], "short": torch.ones(n, 9, dtype=torch.bool)}})
    torch.testing.assert_close(zero_input, by_hand)
    # A zero input still passes the GRU and the attention: not the same as masking the modality out.
    assert float((zero_input - masked).abs().max()) > 1e-3
    model.absent_as = "mask"
    none = torch.zeros_like(batch["present"]["short"])
    lacking = model.predict({**batch, "present": {**batch["present"], "short": none}})
    torch.testing.assert_close(masked, lacking)  # masked: as if the data lacked it


def test_moddrop_with_zero_input_feeds_zeros_of_the_longest_training_length(tmp_path):
    ds = tiny_clips()
    method, bundle = built(tmp_path, ds, moddrop=True, absent="zero-input")
    steps = {m: max(s.x[m].shape[0] for s in bundle.train) for m in ("long", "short")}
    assert method.student.zero_steps == steps and method.student.absent_as == "zero-input"
    windows = method.training_windows(WindowDataset.for_training(bundle.train, None, None))
    batch = windows.collate([windows[i] for i in range(len(windows))])
    n = len(bundle.train)
    long_dropped = slice(n, 2 * n)
    assert bool(batch["present"]["long"][long_dropped, : steps["long"]].all())
    assert not batch["x"]["long"][long_dropped].any() and batch["x"]["short"][long_dropped].any()
    assert bool(batch["present"]["short"][2 * n :, : steps["short"]].all()) and not batch["x"]["short"][2 * n :].any()


def test_evaluate_missing_with_zero_input_and_the_protocol_entry(tmp_path):
    ds = tiny_clips()
    data = write_native(ds, tmp_path / "data")
    res = run(TrainConfig(data=data, method="fusion", out=tmp_path / "run", **SMALL))
    masked = evaluate_missing(tmp_path / "run")
    zero_input = evaluate_missing(tmp_path / "run", absent="zero-input")
    assert zero_input["long+short"]["test"] == res["test"]  # nothing removed: the same scores
    assert zero_input != masked
    assert json.loads((tmp_path / "run" / "missing-zero-input.json").read_text()) == json.loads(json.dumps(zero_input))
    assert parse_imputation("zero-input") == ("zero", None, "zero-input")
    assert parse_imputation("zero") == ("zero", None, "mask") and parse_imputation("knn5") == ("knn", 5, "mask")
    assert missing_file(*parse_imputation("zero-input")) == "missing-zero-input.json"
