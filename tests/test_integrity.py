"""Model-folder integrity (issue 28): every artefact's SHA-256 is recorded when a folder is written and
checked when it is loaded, by ``stew predict`` (either engine), ``stew export`` and ``stew serve``'s loader.

One tiny linear run is trained once (``stew train``, so training's own writer is tested) and exported
with both files. Each case damages a copy and runs the command a user would: exit 2, one line naming
the file, nothing written. A folder from before the digests loads with a one-line notice.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save_file

from stew.data.formats.native import write_native
from stew.deploy import load_model
from stew.deploy.integrity import artefact_digests, sha256_file
from stew.deploy.serve import ServeSettings, create_app
from stew.errors import DataError
from tests.conftest import tiny_frames
from tests.test_bad_input_models import MODEL_DAMAGE, snapshot
from tests.test_cli import invoke, one_line_error

WEIGHTS, ONNX = "model.safetensors", "model.onnx"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/, run/ (``stew train`` linear on 'b'), model/ (its export, both files), other/ (the export of
    a run on other data: same shapes, other weights)."""
    root = tmp_path_factory.mktemp("integrity")
    write_native(tiny_frames(), root / "data")
    write_native(tiny_frames(seed=1), root / "data-other")
    for run, data in (("run", "data"), ("run-other", "data-other")):
        res = invoke("train", "--data", root / data, "--method", "linear", "--modality", "b", "--out", root / run)
        assert res.exit_code == 0, res.output
    for run, model in (("run", "model"), ("run-other", "other")):
        res = invoke("export", root / run, "--out", root / model)
        assert res.exit_code == 0, res.output
    assert sha256_file(root / "model" / WEIGHTS) != sha256_file(root / "other" / WEIGHTS)
    return root


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load((folder / WEIGHTS).read_bytes())  # from bytes: a memory map would break when the file is rewritten


def edit(name: str, change: Callable[[bytes], bytes]) -> Callable[[Path, Path], None]:
    return lambda folder, _base: (folder / name).write_bytes(change((folder / name).read_bytes()))


def without_tensor(folder: Path, _base: Path) -> None:
    tensors = weights(folder)
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(folder / WEIGHTS))


def pickle_renamed(folder: Path, _base: Path) -> None:
    torch.save(weights(folder), folder / WEIGHTS)


def from_other(name: str) -> Callable[[Path, Path], None]:
    """A valid file of another model of the same shapes: every other check passes it."""
    return lambda folder, base: shutil.copyfile(base / "other" / name, folder / name)


TAMPER: dict[str, Callable[[Path, Path], None]] = {
    "safetensors header corrupted": edit(WEIGHTS, lambda b: struct.pack("<Q", 10**12) + b[8:]),
    "safetensors JSON header garbled": edit(WEIGHTS, lambda b: b[:8] + b"{{{" + b[11:]),
    "safetensors missing a tensor": without_tensor,
    "pickle renamed model.safetensors": pickle_renamed,
    "safetensors of another model": from_other(WEIGHTS),
    "model.onnx one byte changed": edit(ONNX, lambda b: b[:-9] + bytes([b[-9] ^ 1]) + b[-8:]),
    "model.onnx of another model": from_other(ONNX),
}
# The file each tampering touches (the one the error must name).
TOUCHED = {k: ONNX if "onnx" in k else WEIGHTS for k in TAMPER}


def tampered(base: Path, tmp_path: Path, case: str, src: str = "model") -> Path:
    folder = tmp_path / "model"
    shutil.copytree(base / src, folder)
    TAMPER[case](folder, base)
    return folder


def strip_digests(folder: Path) -> None:
    meta = json.loads((folder / "model.json").read_text())
    del meta["sha256"]
    (folder / "model.json").write_text(json.dumps(meta))


def test_writers_record_every_artefact(base: Path) -> None:
    """Training's model/ and an export list each artefact they wrote, with its SHA-256."""
    for folder, names in ((base / "run" / "model", [WEIGHTS]), (base / "model", [ONNX, WEIGHTS])):
        meta = json.loads((folder / "model.json").read_text())
        assert sorted(meta["sha256"]) == names
        assert meta["sha256"] == {n: sha256_file(folder / n) for n in names} == artefact_digests(folder)


@pytest.mark.parametrize("case", TAMPER)
def test_predict_refuses_a_tampered_folder(base: Path, tmp_path: Path, case: str) -> None:
    """The ONNX engine (auto) never parses model.safetensors: only the digests can catch these."""
    folder = tampered(base, tmp_path, case)
    before = snapshot(tmp_path)
    line = one_line_error(invoke("predict", folder, "--data", base / "data", "--out", tmp_path / "p.csv"))
    assert "SHA-256 differs" in line and str(folder / TOUCHED[case]) in line
    assert snapshot(tmp_path) == before  # no p.csv, no .tmp, the folder untouched


@pytest.mark.parametrize("case", TAMPER)
def test_torch_loader_refuses_a_tampered_folder(base: Path, tmp_path: Path, case: str) -> None:
    """``load_model`` (the torch engine, evaluate, explain, export) checks model.onnx too, though it never
    reads it."""
    with pytest.raises(DataError, match="SHA-256 differs"):
        load_model(tampered(base, tmp_path, case))


@pytest.mark.parametrize("case", TAMPER)
def test_serve_loader_refuses_a_tampered_folder(base: Path, tmp_path: Path, case: str) -> None:
    with pytest.raises(DataError, match="SHA-256 differs") as e:
        create_app({"m": tampered(base, tmp_path, case)}, ServeSettings())
    assert TOUCHED[case] in str(e.value)


@pytest.mark.parametrize("case", [k for k in TAMPER if TOUCHED[k] == WEIGHTS] + ["unlisted model.onnx"])
def test_export_refuses_a_tampered_run(base: Path, tmp_path: Path, case: str) -> None:
    """The run's model/ is checked whole before anything is written. A model.onnx dropped into it is an
    artefact nobody listed: refused too (the ONNX engine would run it)."""
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    if case == "unlisted model.onnx":
        shutil.copyfile(base / "other" / ONNX, run / "model" / ONNX)
    else:
        shutil.rmtree(run / "model")
        shutil.copytree(tampered(base, tmp_path / "t", case, src="run/model"), run / "model")
    before = snapshot(tmp_path)
    line = one_line_error(invoke("export", run, "--out", tmp_path / "exported"))
    assert ("not listed" if case == "unlisted model.onnx" else "SHA-256 differs") in line
    assert snapshot(tmp_path) == before and not (tmp_path / "exported").exists()


def test_missing_listed_artefact_and_unlisted_one(base: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(base / "model", folder)
    (folder / WEIGHTS).unlink()  # the ONNX engine alone would not miss it
    line = one_line_error(invoke("predict", folder, "--data", base / "data", "--out", tmp_path / "p.csv"))
    assert "missing file" in line and WEIGHTS in line and not (tmp_path / "p.csv").exists()
    # an ONNX-only export gets a model.safetensors nobody listed; other files are never read and pass
    shutil.rmtree(folder)
    assert invoke("export", base / "run", "--out", folder, "--format", "onnx").exit_code == 0
    (folder / "README.txt").write_text("notes\n")
    assert invoke("predict", folder, "--data", base / "data", "--out", tmp_path / "p.csv").exit_code == 0
    shutil.copyfile(base / "model" / WEIGHTS, folder / WEIGHTS)
    line = one_line_error(invoke("predict", folder, "--data", base / "data", "--out", tmp_path / "q.csv"))
    assert "not listed" in line and WEIGHTS in line and not (tmp_path / "q.csv").exists()


def test_malformed_digests_are_a_schema_error(base: Path, tmp_path: Path) -> None:
    """Keys are the artefacts' names (no paths), values 64 lowercase hex digits."""
    for bad in ({"../model.safetensors": "0" * 64}, {WEIGHTS: "abc"}, {WEIGHTS: "G" * 64}, [WEIGHTS]):
        folder = tmp_path / "model"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(base / "model", folder)
        meta = json.loads((folder / "model.json").read_text())
        meta["sha256"] = bad
        (folder / "model.json").write_text(json.dumps(meta))
        line = one_line_error(invoke("predict", folder, "--data", base / "data", "--out", tmp_path / "p.csv"))
        assert "sha256" in line, bad


def test_folder_without_digests_loads_with_one_notice(base: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A folder from before the digests predicts as before, with one notice however often it is loaded;
    exporting its run writes the digests."""
    folder = tmp_path / "old"
    shutil.copytree(base / "model", folder)
    strip_digests(folder)
    with caplog.at_level(logging.WARNING, logger="stew.deploy"):
        for engine in ("onnx", "torch", "auto"):
            res = invoke("predict", folder, "--data", base / "data", "--out", tmp_path / f"{engine}.csv",
                         "--engine", engine)
            assert res.exit_code == 0, res.output
    notes = [r.getMessage() for r in caplog.records if r.name.startswith("stew.deploy")]
    assert len(notes) == 1 and "no SHA-256" in notes[0] and str(folder) in notes[0], notes
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    strip_digests(run / "model")
    assert invoke("export", run, "--out", tmp_path / "new").exit_code == 0
    assert sorted(json.loads((tmp_path / "new" / "model.json").read_text())["sha256"]) == [ONNX, WEIGHTS]


def test_notice_is_one_stderr_line(base: Path, tmp_path: Path) -> None:
    """Outside pytest's log capture: the notice is one line on stderr, the predictions are written."""
    folder = tmp_path / "old"
    shutil.copytree(base / "model", folder)
    strip_digests(folder)
    res = subprocess.run([sys.executable, "-m", "stew", "predict", str(folder), "--data", str(base / "data"),
                          "--out", str(tmp_path / "p.csv")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no SHA-256" in lines[0], res.stderr
    assert (tmp_path / "p.csv").is_file()


DEEPER = [k for k in MODEL_DAMAGE if k.startswith(("safetensors", "pickle", "weights"))]


@pytest.mark.parametrize("case", DEEPER)
def test_folder_without_digests_keeps_the_weight_checks(base: Path, tmp_path: Path, case: str) -> None:
    """Without digests the weights are still checked (no pickle, names, shapes, values): the digests
    come first on a current folder, so these checks are tested here."""
    folder = tmp_path / "old"
    shutil.copytree(base / "run" / "model", folder)
    strip_digests(folder)
    MODEL_DAMAGE[case](folder)
    line = one_line_error(invoke("predict", folder, "--data", base / "data", "--out", tmp_path / "p.csv"))
    assert "SHA-256" not in line and WEIGHTS in line
    if case.startswith("pickle"):
        assert "never unpickles" in line
    assert not (tmp_path / "p.csv").exists()
