"""Run tracking (docs/tracking.md): --tracker mlflow | tensorboard on a tiny run, what lands in the store or the
event files, and the one-line refusals (tracker not installed, unusable tracking URI)."""

import json
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stew.cli import app
from stew.config import TrainConfig
from stew.experiments.protocols import load_protocol
from stew.experiments.store import run_key
from tests.conftest import FAST
from tests.test_cli import one_line_error

runner = CliRunner()


def train(data, out, *args):
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = out.parent / "fast.yaml"
    cfg.write_text(yaml.safe_dump({**FAST, "max_epochs": 3, "patience": 3}))
    return runner.invoke(app, ["train", "--data", str(data), "--modality", "audio", "--arch", "mlp", "--config",
                               str(cfg), "--out", str(out), *map(str, args)])



def test_mlflow_run_in_the_sqlite_store(utt_dir, tmp_path):
    import mlflow

    db = tmp_path / "track" / "mlruns.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    out = tmp_path / "run"
    res = train(utt_dir, out, "--tracker", "mlflow", "--tracking-uri", uri, "--experiment", "tiny", "--seed", 3)
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    where = m["tracking"]
    assert where["tracker"] == "mlflow" and where["uri"] == uri and where["experiment"] == "tiny"

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    run = client.get_run(where["run_id"])
    assert run.info.experiment_id == exp.experiment_id and run.info.status == "FINISHED"
    assert exp.artifact_location == (db.parent / "mlruns").as_uri()  # beside the database
    # Parameters: the TrainConfig, sub-configs flattened.
    assert run.data.params["seed"] == "3" and run.data.params["method"] == "unimodal"
    assert run.data.params["tracker"] == "mlflow" and "cmstew/alpha_grid" in run.data.params
    # Per-epoch losses and metrics: one value per epoch run; the final scores once.
    epochs = m["selection"]["epochs_run"]
    history = client.get_metric_history(run.info.run_id, "val_score")
    assert len(history) == epochs and len(client.get_metric_history(run.info.run_id, "train_loss")) == epochs
    assert max(h.value for h in history) == pytest.approx(m["val"][m["selection"]["key"]], abs=1e-4)
    assert run.data.metrics["final_test_acc"] == pytest.approx(m["test"]["acc"])
    # The run folder as artefacts, less its checkpoints.
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "predictions.csv", "latents.npz", "model", "logs"} <= top and "checkpoints" not in top
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} >= {"model/model.safetensors",
                                                                                 "model/model.json"}


def test_mlflow_default_uri_is_a_sqlite_file_in_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert TrainConfig(data=".", tracker="mlflow").tracking_uri == f"sqlite:///{tmp_path.absolute()}/mlruns.db"
    assert TrainConfig(data=".").tracking_uri is None
    with pytest.raises(ValueError, match="tracking_uri applies to tracker"):
        TrainConfig(data=".", tracking_uri="sqlite:///x.db")


def test_tensorboard_event_files_in_the_run_folder(utt_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    res = train(utt_dir, out, "--tracker", "tensorboard")
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    events = out / "logs" / "tensorboard"
    assert m["tracking"] == {"tracker": "tensorboard", "dir": str(events)}
    assert list(events.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events))
    acc.Reload()
    scores = acc.Scalars("val_score")
    assert len(scores) == m["selection"]["epochs_run"]
    assert max(s.value for s in scores) == pytest.approx(m["val"][m["selection"]["key"]], abs=1e-4)
    assert "train_loss" in acc.Tags()["scalars"] and "final_test_acc" in acc.Tags()["scalars"]


def test_tensorboard_in_a_given_folder(utt_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = train(utt_dir, tmp_path / "runs" / "a", "--tracker", "tensorboard", "--tracking-uri", "tb",
                "--experiment", "exp")
    assert res.exit_code == 0, res.output
    assert list((tmp_path / "tb" / "exp" / "runs" / "a").glob("events.out.tfevents.*"))  # <dir>/<experiment>/<run>


@pytest.mark.parametrize(("tracker", "module"), [("mlflow", "mlflow"), ("tensorboard", "tensorboard")])
def test_tracker_not_installed(utt_dir, tmp_path, monkeypatch, tracker, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import mlflow` now raises ImportError
    work = tmp_path / "w"
    work.mkdir()
    monkeypatch.chdir(work)
    line = one_line_error(train(utt_dir, work / "run", "--tracker", tracker))
    assert f"needs the {module} package" in line and "stew[tracking]" in line
    assert sorted(p.name for p in work.iterdir()) == ["fast.yaml"]  # no run folder, no store


@pytest.mark.parametrize(("uri", "says"), [
    ("sqlite:///{tmp}/nowhere/m.db", "no folder"),
    ("sqlite:///{tmp}/notes.txt", "not a SQLite database"),
    ("sqlite:///{tmp}", "is a folder"),
    ("http://127.0.0.1:9", "cannot use it as an MLflow store"),
    ("nosuchscheme://x", "cannot use it as an MLflow store"),
])
def test_unusable_mlflow_uri(utt_dir, tmp_path, uri, says):
    work = tmp_path / "w"
    work.mkdir()
    (work / "notes.txt").write_text("not a database\n")
    t0 = time.monotonic()
    line = one_line_error(train(utt_dir, work / "run", "--tracker", "mlflow", "--tracking-uri", uri.format(tmp=work)))
    assert says in line
    assert time.monotonic() - t0 < 30  # a server that does not answer is tried once, not for minutes
    assert sorted(p.name for p in work.iterdir()) == ["fast.yaml", "notes.txt"]  # nothing written
    assert (work / "notes.txt").read_text() == "not a database\n"


@pytest.mark.parametrize(("uri", "says"), [("{tmp}/notes.txt/tb", "is a file"), ("s3://bucket/tb", "local folder")])
def test_unusable_tensorboard_folder(utt_dir, tmp_path, uri, says):
    work = tmp_path / "w"
    work.mkdir()
    (work / "notes.txt").write_text("x")
    line = one_line_error(train(utt_dir, work / "run", "--tracker", "tensorboard",
                                "--tracking-uri", uri.format(tmp=work)))
    assert says in line
    assert sorted(p.name for p in work.iterdir()) == ["fast.yaml", "notes.txt"]


def test_a_protocol_lands_in_one_experiment_and_tracking_leaves_run_keys_alone(tmp_path):
    p = load_protocol("synthetic-quick")
    group = next(iter(p.expand_groups()))
    plain = p.config(group, tmp_path, 0, tmp_path / "r")
    tracked = p.config(group, tmp_path, 0, tmp_path / "r", {"tracker": "mlflow"})
    assert tracked.experiment == plain.experiment == "synthetic-quick" and tracked.tracker == "mlflow"
    assert p.config(group, tmp_path, 0, tmp_path / "r", {"experiment": "mine"}).experiment == "mine"
    key = run_key(json.loads(plain.model_dump_json()), "data")
    assert run_key(json.loads(tracked.model_dump_json()), "data") == key
    moved = plain.model_copy(update={"accelerator": "gpu"})
    assert run_key(json.loads(moved.model_dump_json()), "data") == key  # where it runs, not what it computes
    bf16 = plain.model_copy(update={"precision": "bf16-mixed"})
    assert run_key(json.loads(bf16.model_dump_json()), "data") != key


def test_stew_train_api_takes_the_same_names(utt_dir, tmp_path):
    import stew

    cfg = stew.train_config(utt_dir, "unimodal", modality="audio", tracker="tensorboard", tracking_uri=str(tmp_path),
                            experiment="e", accelerator="cpu", devices=1, precision="bf16-mixed")
    assert (cfg.tracker, cfg.tracking_uri, cfg.experiment, cfg.precision) == ("tensorboard", str(tmp_path), "e",
                                                                              "bf16-mixed")
    assert Path(cfg.tracking_uri).is_dir()


def test_tensorboard_needs_a_run_folder_or_a_folder_of_its_own(utt_dir):
    import stew
    from stew.errors import DataError

    with pytest.raises(DataError, match="give --out, or a folder with --tracking-uri"):
        stew.train(utt_dir, "unimodal", modality="audio", tracker="tensorboard", **FAST)


def test_workers_opening_a_new_sqlite_store_at_once_share_it(tmp_path):
    """stew reproduce's workers start their first runs together: they must not make a new store's tables at
    the same time (that leaves it half-made) nor the experiment twice."""
    import subprocess

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    start = time.time() + 6  # every process imported by then: they open the store together
    code = ("import sys, time; from stew.training.tracking import mlflow_experiment\n"
            "while time.time() < float(sys.argv[1]): time.sleep(0.001)\n"
            "print(mlflow_experiment(sys.argv[2], 'sweep'))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(start), uri], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-300:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1


def test_artefacts_leave_out_checkpoints_and_the_runs_inside_a_run(tmp_path):
    from stew.training.tracking import artefacts

    for f in ("metrics.json", "model/model.json", "checkpoints/last.ckpt", "grid/a/checkpoints/last.ckpt",
              "grid/a/logs/metrics.csv", "teacher/audio/fold0/metrics.json", "teacher/audio/fold0/model/model.json"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x")
    got = [f.relative_to(tmp_path).as_posix() for f in artefacts(tmp_path)]
    assert got == ["grid/a/logs/metrics.csv", "metrics.json", "model/model.json"]
