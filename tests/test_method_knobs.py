"""A knob a method does not read is refused when set, not silently ignored (issue 28): the MethodDef
declares the generic knobs it ignores (fusion and ConflictNET: the unimodal student's), and fusion's K
applies to KNN imputation only. Defaults and fields left unset never trip the check."""

from __future__ import annotations

import pytest

import stew
from stew.config import TrainConfig
from stew.data.formats.native import write_native
from stew.errors import DataError
from stew.methods import get
from stew.methods.base import STUDENT_KNOBS
from tests.conftest import tiny_clips, tiny_waves
from tests.test_cli import invoke, one_line_error, write_cfg


@pytest.mark.parametrize("method", ["fusion", "conflictnet"])
def test_methods_with_their_own_networks_ignore_the_student_knobs(method):
    assert {"arch", "dropout", "gru_units", "clf_hidden"} <= STUDENT_KNOBS <= get(method).ignores
    assert not get("unimodal").ignores and not get("cmstew").ignores


@pytest.mark.parametrize("knob, value", [("arch", "gru"), ("dropout", 0.5), ("gru_units", 12), ("clf_hidden", 7)])
def test_the_python_api_refuses_a_student_knob_for_fusion(tmp_path, knob, value):
    with pytest.raises(DataError, match=rf"--{knob.replace('_', '-')} \({knob}\) does not apply to --method fusion"):
        stew.train(tiny_clips(), "fusion", out=tmp_path / "run", max_epochs=1, **{knob: value})
    assert not (tmp_path / "run").exists()


def test_the_python_api_refuses_a_student_knob_for_conflictnet(tmp_path):
    with pytest.raises(DataError, match=r"--dropout \(dropout\) does not apply to --method conflictnet"):
        stew.train(tiny_waves(n=12), "conflictnet", out=tmp_path / "run", max_epochs=1, dropout=0.1)
    assert not (tmp_path / "run").exists()


def test_k_needs_knn_imputation(tmp_path):
    with pytest.raises(DataError, match=r"--k \(fusion.k\) applies to --impute knn, not --impute zero"):
        stew.train(tiny_clips(), "fusion", out=tmp_path / "run", max_epochs=1, fusion={"k": 5})
    assert not (tmp_path / "run").exists()


def test_defaults_and_a_reloaded_config_pass(tmp_path):
    # Unset knobs (their defaults) are not "set"; a config read back from metrics.json (every field
    # present) is checked only where a run starts, not when stew evaluate resolves it again.
    cfg = TrainConfig(data=tmp_path, method="fusion", fusion={"impute": "knn", "k": 3})
    get("fusion").check_knobs(cfg)
    get("unimodal").check_knobs(TrainConfig(data=tmp_path, arch="gru", dropout=0.5, gru_units=4))
    assert {"arch", "dropout"} <= TrainConfig.model_validate(cfg.model_dump()).model_fields_set
    # A whole configuration dumped and read back (reproduce's workers, metrics.json's "config") sets every
    # field at its default: it passes; a value moved off its default is still refused.
    for method in ("fusion", "conflictnet", "unimodal"):
        whole = TrainConfig.model_validate_json(TrainConfig(data=tmp_path, method=method).model_dump_json())
        assert {"arch", "plateau_factor"} <= whole.model_fields_set
        get(method).check_knobs(whole)
    moved = TrainConfig.model_validate_json(TrainConfig(data=tmp_path, method="fusion", dropout=0.5).model_dump_json())
    with pytest.raises(DataError, match="dropout"):
        get("fusion").check_knobs(moved)


def test_cli_refuses_in_one_line_and_writes_nothing(tmp_path):
    data = write_native(tiny_clips(), tmp_path / "data")
    out = tmp_path / "run"
    cases = [
        (["--method", "fusion", "--arch", "gru"], "--arch (arch) does not apply to --method fusion"),
        (["--method", "fusion", "--k", "5"], "--k (fusion.k) applies to --impute knn"),
        (["--method", "fusion", "--config", write_cfg(tmp_path / "c.yaml", max_epochs=1)],
         "--clf-hidden (clf_hidden), --d-model (d_model), --ffn (ffn), --gru-units (gru_units) do not apply to "
         "--method fusion"),  # the file holds tests.conftest.FAST
    ]
    for args, match in cases:
        line = one_line_error(invoke("train", "--data", data, *args, "--out", out))
        assert match in line, line
        assert not out.exists()
