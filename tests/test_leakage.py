"""Label-fitted training features: the probe's verdict, its cache, the warning, and validation taken from
whole test groups where (and only where) a modality the run reads is flagged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stew.data.dataset import Dataset, Sequence
from stew.data.formats.native import write_native
from stew.data.leakage import cache_dir, leakage_verdict
from tests.test_cli import invoke, one_line_error


def fitted_or_not(fitted: bool, seed: int = 0, n_train: int = 24, n_test: int = 9) -> Dataset:
    """Utterance-level binary data whose 'video' carries the label weakly everywhere; with ``fitted`` its
    training features are instead near-perfect (as if a network had been trained on those labels) while
    its test features keep only the weak signal. 'audio' is weak and honest in both."""
    rng = np.random.default_rng(seed)
    seqs = []
    for v in range(n_train + n_test):
        n = int(rng.integers(6, 11))
        split = "train" if v < n_train else "test"
        y = (rng.normal(size=n) > 0).astype(np.float32)[:, None]
        noise = 0.15 if fitted and split == "train" else 2.0
        video = np.concatenate([(2 * y - 1) + rng.normal(0, noise, (n, 1)), rng.normal(0, 1, (n, 3))], 1)
        audio = np.concatenate([(2 * y - 1) + rng.normal(0, 2.0, (n, 1)), rng.normal(0, 1, (n, 3))], 1)
        sid = f"v{v:02d}"
        seqs.append(Sequence(id=sid, group=sid, split=split,
                             features={"video": video.astype(np.float32), "audio": audio.astype(np.float32)},
                             masks={"video": np.ones(n, bool), "audio": np.ones(n, bool)}, targets=y,
                             step_ids=[f"{sid}_{k + 1}" for k in range(n)]))
    return Dataset(name="fitted" if fitted else "honest", task="binary", targets=["sentiment"],
                   modalities={"video": 4, "audio": 4}, sequences=seqs, n_classes=2)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_verdict_flags_label_fitted_features_only():
    fitted = leakage_verdict(fitted_or_not(True), ["video", "audio"])
    assert fitted.flagged == ["video"] and fitted.test_labelled
    v = fitted.modalities["video"]
    assert v.within_train > 0.95 and v.train_to_test < 0.8 and "train-to-test" in v.reasons[0]
    assert leakage_verdict(fitted_or_not(False), ["video", "audio"]).flagged == []
    # Early-fused inputs are judged by their parts.
    assert leakage_verdict(fitted_or_not(True), ["audio+video"]).flagged == ["video"]


def test_verdict_is_cached_per_data_folder(monkeypatch):
    ds = fitted_or_not(True)
    first = leakage_verdict(ds, ["video"], fingerprint="abc")
    assert first.source == "probe" and list(cache_dir().glob("*.json"))
    import stew.data.leakage as leakage

    monkeypatch.setattr(leakage, "probe_modality", lambda *a: pytest.fail("probed again"))
    again = leakage_verdict(ds, ["video"], fingerprint="abc")
    assert again.source == "cache" and again.to_json()["modalities"] == first.to_json()["modalities"]
    # Another dataset of the same folder (an AVEC feature set, an IEMOCAP fold) has its own verdict.
    ds.meta["feature_set"] = "valence"
    with pytest.raises(pytest.fail.Exception, match="probed again"):
        leakage_verdict(ds, ["video"], fingerprint="abc")


def test_selection_moves_to_test_groups_for_flagged_features_only(tmp_path):
    runs = {}
    for fitted in (True, False):
        data = write_native(fitted_or_not(fitted), tmp_path / f"d{fitted}")
        res = invoke("train", "--data", data, "--modality", "video", "--arch", "mlp", "--max-epochs", 2,
                     "--out", tmp_path / f"run{fitted}")
        assert res.exit_code == 0, res.output
        assert ("warning: video look fitted on their own labels" in res.output) == fitted
        runs[fitted] = json.loads((tmp_path / f"run{fitted}" / "metrics.json").read_text())
    fitted, honest = runs[True], runs[False]
    assert fitted["leakage"]["used_flagged"] == ["video"] and honest["leakage"]["used_flagged"] == []
    assert fitted["data"]["val_from"] == "test" and honest["data"]["val_from"] == "train"
    # From test: a third of the 9 test groups validate, the other 6 are the reported test split.
    test_groups = {f"v{v:02d}" for v in range(24, 33)}
    assert len(fitted["data"]["val_groups"]) == 3 and len(fitted["data"]["test_groups"]) == 6
    assert set(fitted["data"]["val_groups"]) | set(fitted["data"]["test_groups"]) == test_groups
    assert set(honest["data"]["test_groups"]) == test_groups and not set(honest["data"]["val_groups"]) & test_groups
    # A modality that is not flagged, on the flagged data: validation stays in train.
    data = tmp_path / "dTrue"
    res = invoke("train", "--data", data, "--modality", "audio", "--arch", "mlp", "--max-epochs", 2,
                 "--out", tmp_path / "audio")
    assert res.exit_code == 0 and "warning" not in res.output
    assert json.loads((tmp_path / "audio" / "metrics.json").read_text())["data"]["val_from"] == "train"
    # Declared instead of probed, and on request.
    res = invoke("train", "--data", data, "--modality", "video", "--arch", "mlp", "--max-epochs", 2,
                 "--flagged", "none", "--val-from", "test", "--val-groups", 4, "--out", tmp_path / "declared")
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "declared" / "metrics.json").read_text())
    assert rec["leakage"]["source"] == "override" and rec["leakage"]["flagged"] == []
    assert rec["data"]["val_from"] == "test" and len(rec["data"]["val_groups"]) == 4


def test_validation_source_bad_input_is_one_line_and_writes_nothing(tmp_path):
    data = write_native(fitted_or_not(True), tmp_path / "d")
    no_test = fitted_or_not(True)
    no_test = no_test.replace_sequences(s for s in no_test.sequences if s.split == "train")
    train_only = write_native(no_test, tmp_path / "train-only")
    base = ["train", "--modality", "video", "--max-epochs", 1]
    cases = [
        ([*base, "--data", train_only, "--val-from", "test"], "--val-from test needs a labelled test split"),
        ([*base, "--data", data, "--val-from", "test", "--val-groups", 9], "at least one must stay for test"),
        ([*base, "--data", data, "--flagged", "text"], "--flagged names text, which the data does not have"),
        ([*base, "--data", data, "--val-from", "elsewhere"], "val_from"),
    ]
    for i, (args, match) in enumerate(cases):
        line = one_line_error(invoke(*args, "--out", tmp_path / f"r{i}"))
        assert match in line, line
        assert not (tmp_path / f"r{i}").exists()


def test_small_test_splits_decide_nothing():
    # 6 test groups of 27 utterances (the tests' tiny set): too few to compare train with test, so a
    # near-perfect 'text' is not flagged and its runs keep validation in train.
    from tests.conftest import tiny_utterances

    verdict = leakage_verdict(tiny_utterances(), ["text", "audio"])
    assert verdict.flagged == [] and verdict.modalities["text"].within_train > 0.95


def test_rank_validates_every_modality_on_the_same_groups(tmp_path):
    data = write_native(fitted_or_not(True), tmp_path / "d")
    res = invoke("rank", "--data", data, "--seeds", 1, "--max-epochs", 1, "--out", tmp_path / "rank")
    assert res.exit_code == 0, res.output
    assert "warning: video look fitted on their own labels" in res.output
    rank = json.loads((tmp_path / "rank" / "rank.json").read_text())
    assert rank["leakage"]["flagged"] == ["video"] and rank["validation"]["val_from"] == "test"
    for m in ("audio", "video"):  # audio is not flagged, yet validated on the same test videos as video
        rec = json.loads((tmp_path / "rank" / "label" / m / "seed0" / "metrics.json").read_text())
        assert rec["data"]["val_from"] == "test" and len(rec["data"]["test_groups"]) == 6


def test_check_says_what_a_probe_inside_train_cannot_show():
    import io

    from rich.console import Console

    from stew.data.check import check_dataset, render_report

    def shown(ds: Dataset) -> str:
        buf = io.StringIO()
        render_report(check_dataset(ds), Console(file=buf, width=400))
        return buf.getvalue()

    ds = fitted_or_not(True)
    train_only = ds.replace_sequences(s for s in ds.sequences if s.split == "train")
    assert "without a labelled test split the probe can only compare" in shown(train_only)
    assert "without a labelled test split" not in shown(ds)


def test_guard_on_validation_ships_its_winning_arm_without_training_it_again(tmp_path):
    """With validation from test the guard's arms train on all the training groups: the winner is written as
    the run, not trained a second time, and equals what a second training gives (--resume reads the arms
    back from disk, without their models, and so fits the winner again)."""
    data = write_native(fitted_or_not(True), tmp_path / "d")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_epochs: 2\npatience: 2\ncmstew: {teacher_folds: 2}\n")
    args = ["train", "--data", data, "--method", "cmstew", "--modality", "audio", "--teacher", "video",
            "--config", cfg, "--out", tmp_path / "run"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "run" / "metrics.json").read_text())
    ship = rec["recipe"]["guard"]["shipped"]
    assert rec["data"]["val_from"] == "test" and rec["recipe"]["guard"]["on"] == "validation (from test)"
    assert f"final model: the guard's {ship} run" in res.output and "final fit:" not in res.output
    arm = tmp_path / "run" / "guard" / ship
    assert (tmp_path / "run" / "predictions.csv").read_text() == (arm / "predictions.csv").read_text()
    assert rec["config"]["out"] == str(tmp_path / "run") and (tmp_path / "run" / "logs").is_dir()
    assert (tmp_path / "run" / "teacher").is_dir() == (ship == "transfer")
    (tmp_path / "run" / "metrics.json").unlink()
    res = invoke(*args, "--resume")
    assert res.exit_code == 0 and "final fit:" in res.output, res.output
    again = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (again["val"], again["test"]) == (rec["val"], rec["test"])
    assert (tmp_path / "run" / "predictions.csv").read_text() == (arm / "predictions.csv").read_text()
