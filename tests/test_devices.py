"""Where a run trains (docs/devices.md): --accelerator, --devices and --precision resolved against the machine,
refused in one line when it cannot serve them, and recorded in metrics.json."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from stew.cli import app
from stew.config import TrainConfig
from stew.data.preprocess import device_of, to_device
from stew.errors import DataError
from stew.training.devices import resolve_device
from tests.conftest import FAST
from tests.test_cli import one_line_error

runner = CliRunner()
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a CPU-only machine refuses")


def train(data, out, *args):
    cfg = out.parent / "fast.yaml"
    cfg.write_text(yaml.safe_dump({**FAST, "max_epochs": 2}))
    return runner.invoke(app, ["train", "--data", str(data), "--modality", "audio", "--arch", "mlp", "--config",
                               str(cfg), "--out", str(out), *map(str, args)])



@no_gpu
@pytest.mark.parametrize(("args", "says"), [
    (["--accelerator", "gpu"], "no CUDA GPU"),
    (["--precision", "16-mixed"], "16-mixed needs a GPU"),
    (["--accelerator", "cpu", "--precision", "16-mixed"], "16-mixed needs a GPU"),
    (["--devices", "4"], "--devices 4: a CPU run is one device"),
    (["--accelerator", "cpu", "--devices", "2"], "--devices 2"),
    (["--accelerator", "tpu"], "accelerator"),
    (["--precision", "64"], "precision"),
])
def test_what_the_machine_cannot_do_is_one_line(utt_dir, tmp_path, args, says):
    line = one_line_error(train(utt_dir, tmp_path / "run", *args))
    assert says in line
    assert not (tmp_path / "run").exists()  # nothing written


@no_gpu
def test_auto_picks_the_cpu_and_metrics_json_records_it(utt_dir, tmp_path):
    res = train(utt_dir, tmp_path / "run")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["config"]["accelerator"] == "auto"  # what was asked
    assert m["device"] == {"accelerator": "cpu", "devices": 1, "precision": "32", "name": "cpu"}  # what was used


def test_bf16_mixed_trains_on_the_cpu(utt_dir, tmp_path):
    res = train(utt_dir, tmp_path / "run", "--accelerator", "cpu", "--precision", "bf16-mixed", "--arch", "bigru-te")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["device"]["precision"] == "bf16-mixed" and m["device"]["accelerator"] == "cpu"


def test_precision_reads_32_as_a_number_from_yaml_and_set():
    assert TrainConfig(data=".", precision=32).precision == "32"
    assert TrainConfig.model_validate(yaml.safe_load("{data: ., precision: 32}")).precision == "32"




class FakeCuda:
    """torch.cuda as a machine with ``n`` GPUs would show it, for the resolution rules only."""

    def __init__(self, monkeypatch, n: int, bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Fake GPU")
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


def test_a_linear_run_records_the_cpu_whatever_was_asked(utt_dir, tmp_path, monkeypatch):
    FakeCuda(monkeypatch, 1)  # scikit-learn fits it on the CPU even where a GPU is seen
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--data", str(utt_dir), "--method", "linear", "--modality", "audio",
                              "--precision", "bf16-mixed", "--out", str(out), "--val-groups", "4"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "metrics.json").read_text())["device"] == {
        "accelerator": "cpu", "devices": 1, "precision": "32", "name": "cpu"}


def cfg(**kw) -> TrainConfig:
    return TrainConfig(data=".", **kw)


def test_auto_picks_a_gpu_when_torch_sees_one(monkeypatch):
    FakeCuda(monkeypatch, 1)
    d = resolve_device(cfg())
    assert (d.accelerator, d.devices, d.precision, d.name) == ("gpu", 1, "32", "Fake GPU")
    args = d.trainer_args()
    # CUDA by name (Lightning's "gpu" would take Apple's MPS, which has no float64 for DCCA); deterministic
    # kernels on a GPU, none of torch's deterministic mode on the CPU.
    assert args["accelerator"] == "cuda" and args["precision"] == "32-true" and args["deterministic"] == "warn"
    assert resolve_device(cfg(accelerator="cpu")).trainer_args()["deterministic"] is False
    assert resolve_device(cfg(precision="16-mixed")).trainer_args()["precision"] == "16-mixed"


def test_gpu_rules(monkeypatch):
    FakeCuda(monkeypatch, 2, bf16=False)
    with pytest.raises(DataError, match=r"--devices 2: stew trains a run on one device"):
        resolve_device(cfg(devices=2))  # they exist, but the loop is single-device
    with pytest.raises(DataError, match=r"--devices 3: this machine has 2 CUDA GPUs"):
        resolve_device(cfg(accelerator="gpu", devices=3))
    with pytest.raises(DataError, match="has no bfloat16"):
        resolve_device(cfg(precision="bf16-mixed"))
    assert resolve_device(cfg(accelerator="cpu", precision="bf16-mixed")).accelerator == "cpu"
    FakeCuda(monkeypatch, 0)
    with pytest.raises(DataError, match="no CUDA GPU"):
        resolve_device(cfg(accelerator="gpu"))


def test_batches_follow_the_model():
    """The device moves of evaluation (predict_windows), fusion's memory bank and EmoBed's auxiliary batches,
    on the meta device: nested dicts are moved whole, other values are left as they are."""
    batch = {"x": {"a": torch.zeros(2, 3, 4)}, "present": {"a": torch.ones(2, 3, dtype=torch.bool)},
             "y": torch.zeros(2, 3, 1), "mask": torch.ones(2, 3, dtype=torch.bool), "spans": torch.zeros(2, 3),
             "note": "kept"}
    meta = torch.device("meta")
    moved = to_device(batch, meta)
    assert moved["x"]["a"].device == meta and moved["present"]["a"].device == meta
    assert moved["mask"].device == meta and moved["note"] == "kept"
    assert batch["x"]["a"].device.type == "cpu"  # the batch given is not changed
    assert device_of(torch.nn.Linear(2, 2).to(meta)) == meta
    assert device_of(torch.nn.Identity()) == torch.device("cpu")
