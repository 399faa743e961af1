"""The Python API as a notebook uses it: the README's example block runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import stew
from stew.data.formats.native import write_native
from stew.data.synth.affect import synth_recola
from stew.errors import DataError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_api_block() -> str:
    text = README.read_text()
    section = text[text.index("## Python API"):text.index("## Deploying")]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_api_block(), "README.md (Python API)", "exec"), scope)  # noqa: S102
    run, base, preds, again = scope["run"], scope["base"], scope["preds"], scope["again"]
    assert run.folder == Path("runs/api-cmstew") and (run.folder / "metrics.json").is_file()
    assert run["method"]["name"] == "cmstew" and run["method"]["alpha"] == 0.1  # the stew recipe's
    assert isinstance(run.predictions, pd.DataFrame)
    pd.testing.assert_frame_equal(run.predictions, pd.read_csv(run.folder / "predictions.csv"), check_dtype=False)
    assert base.folder is None and base["method"]["name"] == "unimodal"
    assert (tmp_path / "models" / "api-video" / "model.onnx").is_file()
    assert len(preds) == sum(len(s) for s in stew.load_data("data/recola-small").sequences)
    assert again.metrics == run.metrics and again.model is None


def test_api_bad_input_is_one_line_and_writes_nothing(tmp_path):
    write_native(synth_recola(0, n_speakers=3, minutes=0.2), tmp_path / "d")
    with pytest.raises(DataError, match="needs --teacher"):
        stew.train(tmp_path / "d", method="cmstew", modality="audio", out=tmp_path / "run")
    with pytest.raises(DataError, match="max_epochs"):
        stew.train(tmp_path / "d", modality="audio", max_epochs=0, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_import_stew_stays_torch_free():
    code = "import sys, stew; stew.__version__; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
