"""Bad-input catalogue, model files and outputs: every case exits 2 with one line and changes nothing.

One tiny linear model is trained once per module; each case corrupts a copy of it (or of its run, or
builds a damaged run store, output path or storage URL) and runs the command a user would. The
folders involved are compared byte for byte before and after: a refused command writes, deletes and
converts nothing (no ``.tmp`` file, no SQLite file, no synthetic data, no emptied folder).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from stew.data.formats.native import write_native
from stew.experiments.store import RunStore
from tests.conftest import tiny_frames, tiny_utterances
from tests.test_cli import invoke, one_line_error
from tests.test_reproduce import TINY


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/ (tiny frames), utt/ (tiny utterances), run/ (a linear run on 'b'), tiny.yaml (a protocol)."""
    root = tmp_path_factory.mktemp("bad-models")
    write_native(tiny_frames(), root / "data")
    write_native(tiny_utterances(), root / "utt")
    res = invoke("train", "--data", root / "data", "--method", "linear", "--modality", "b", "--out", root / "run")
    assert res.exit_code == 0, res.output
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    tuned = json.loads(json.dumps(TINY))
    tuned["groups"]["cmstew-audio-{ablation}"]["tuned"] = {"study": "tiny-cm"}
    (root / "tuned.yaml").write_text(yaml.safe_dump(tuned))
    return root


def snapshot(*roots: Path) -> dict[str, bytes | None]:
    """Every path under ``roots`` -> its bytes (None for a folder): names and contents."""
    snap: dict[str, bytes | None] = {}
    for root in roots:
        if not root.exists():
            continue
        for p in sorted([root, *root.rglob("*")]):
            snap[str(p)] = None if p.is_dir() else p.read_bytes()
    return snap


# -- ways to damage a model folder ------------------------------------------------------------------

def edit_json(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(model: Path) -> None:
        meta = json.loads((model / "model.json").read_text())
        change(meta)
        (model / "model.json").write_text(json.dumps(meta))
    return damage


def write_bytes(name: str, data: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(model: Path) -> None:
        (model / name).write_bytes(data((model / name).read_bytes()))
    return damage


def write_weights(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def damage(model: Path) -> None:
        tensors = read_weights(model)
        change(tensors)
        save_file(tensors, str(model / "model.safetensors"))
    return damage


def read_weights(model: Path) -> dict[str, torch.Tensor]:
    # From bytes, not load_file: its memory map of the file would break when the file is rewritten.
    from safetensors.torch import load

    return load((model / "model.safetensors").read_bytes())


def pickle_renamed(model: Path) -> None:
    torch.save(read_weights(model), model / "model.safetensors")


def wider(meta: dict) -> None:
    """model.json declares 6 input features (consistently everywhere); the weights have 5."""
    meta["dim"] = meta["student"]["encoder"]["d_in"] = meta["student"]["head"]["d_in"] = 6
    st = meta["standardizer"]["b"]
    st["mean"], st["std"] = st["mean"] + [0.0], st["std"] + [1.0]


def set_key(*path_and_value: object) -> Callable[[dict], None]:
    *path, value = path_and_value

    def change(meta: dict) -> None:
        node = meta
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return change


def drop_key(key: str) -> Callable[[dict], None]:
    return lambda meta: meta.pop(key)


MODEL_DAMAGE: dict[str, Callable[[Path], None]] = {
    "safetensors header length past the end": write_bytes(
        "model.safetensors", lambda b: struct.pack("<Q", 10**12) + b[8:]),
    "safetensors header not JSON": write_bytes("model.safetensors", lambda b: b[:8] + b"{{{" + b[11:]),
    "safetensors empty": write_bytes("model.safetensors", lambda b: b""),
    "safetensors truncated": write_bytes("model.safetensors", lambda b: b[: len(b) - 7]),
    "pickle renamed .safetensors": pickle_renamed,
    "model.json truncated": write_bytes("model.json", lambda b: b[: len(b) // 2]),
    "model.json not JSON": write_bytes("model.json", lambda b: b"format: stew-model/1\n"),
    "model.json not UTF-8": write_bytes("model.json", lambda b: b"\xff\xfe\x00\x81"),
    "model.json a list": write_bytes("model.json", lambda b: b"[1, 2]"),
    "model.json empty": write_bytes("model.json", lambda b: b""),
    "missing key student": edit_json(drop_key("student")),
    "missing key standardizer": edit_json(drop_key("standardizer")),
    "missing key window_steps": edit_json(drop_key("window_steps")),
    "wrong format": edit_json(set_key("format", "stew-model/99")),
    "unknown top-level key": edit_json(set_key("weights_url", "http://example.org")),
    "declared shapes do not match the weights": edit_json(wider),
    "dim differs from encoder d_in": edit_json(set_key("dim", 7)),
    "standardizer of the wrong length": edit_json(lambda m: m["standardizer"]["b"]["mean"].pop()),
    "standardizer std zero": edit_json(lambda m: m["standardizer"]["b"]["std"].__setitem__(0, 0.0)),
    "standardizer for another modality": edit_json(lambda m: m.update(standardizer={"a": m["standardizer"]["b"]})),
    "negative window_steps": edit_json(set_key("window_steps", -5)),
    "negative label_delay_steps": edit_json(set_key("label_delay_steps", -1)),
    "unknown encoder kind": edit_json(set_key("student", "encoder", "kind", "lstm9")),
    "negative encoder size": edit_json(set_key("student", "encoder", "d_in", -5)),
    "student modality differs": edit_json(set_key("student", "modality", "a")),
    "head n_out differs from targets": edit_json(set_key("student", "head", "n_out", 3)),
    "postprocess on an unknown target": edit_json(set_key("postprocess", {"nope": {}})),
    "weights shape differs": write_weights(lambda t: t.update({"head.weight": torch.zeros(1, 4)})),
    "weights extra tensor": write_weights(lambda t: t.update({"evil": torch.zeros(2)})),
    "weights missing tensor": write_weights(lambda t: t.pop("head.bias")),
    "weights NaN": write_weights(lambda t: t["head.weight"].fill_(float("nan"))),
    "weights integer dtype": write_weights(lambda t: t.update({"head.bias": torch.zeros(1, dtype=torch.int64)})),
    "model.json missing": lambda model: (model / "model.json").unlink(),
    "model.safetensors is a folder": lambda model: ((model / "model.safetensors").unlink(),
                                                    (model / "model.safetensors").mkdir()),
}


@pytest.mark.parametrize("damage", MODEL_DAMAGE.values(), ids=MODEL_DAMAGE.keys())
def test_damaged_model_folder_predict(base: Path, tmp_path: Path, damage: Callable[[Path], None]) -> None:
    model = tmp_path / "model"
    shutil.copytree(base / "run" / "model", model)
    damage(model)
    before = snapshot(tmp_path, base / "data")
    line = one_line_error(invoke("predict", model, "--data", base / "data", "--out", tmp_path / "p.csv"))
    assert "model" in line
    assert snapshot(tmp_path, base / "data") == before


@pytest.mark.parametrize("damage", [MODEL_DAMAGE[k] for k in ("pickle renamed .safetensors", "model.json truncated",
                                                             "declared shapes do not match the weights")],
                         ids=["pickle", "truncated json", "shape mismatch"])
def test_damaged_run_export(base: Path, tmp_path: Path, damage: Callable[[Path], None]) -> None:
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    damage(run / "model")
    before = snapshot(tmp_path)
    one_line_error(invoke("export", run, "--out", tmp_path / "exported"))
    assert snapshot(tmp_path) == before


# -- outputs of predict and export ------------------------------------------------------------------

def read_only_dir(tmp_path: Path) -> Path:
    """A folder no one may write into: root ignores permission bits, so as root /sys stands for it."""
    if os.geteuid() == 0:
        return Path("/sys")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


def predict_out(kind: str, tmp_path: Path) -> Path:
    if kind == "read-only folder":
        return read_only_dir(tmp_path) / "p.csv"
    if kind == "under a regular file":
        (tmp_path / "file.txt").write_text("mine\n")
        return tmp_path / "file.txt" / "p.csv"
    if kind == "under a missing folder under a file":
        (tmp_path / "file.txt").write_text("mine\n")
        return tmp_path / "file.txt" / "sub" / "p.csv"
    if kind == "existing empty folder":
        (tmp_path / "p").mkdir()
        return tmp_path / "p"
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "keep.txt").write_text("mine\n")
    return tmp_path / "p"


@pytest.mark.parametrize("kind", ["read-only folder", "under a regular file", "under a missing folder under a file",
                                  "existing empty folder", "existing folder with files"])
def test_predict_out_refused(base: Path, tmp_path: Path, kind: str) -> None:
    out = predict_out(kind, tmp_path)
    before = snapshot(tmp_path)
    one_line_error(invoke("predict", base / "run" / "model", "--data", base / "data", "--out", out))
    try:
        assert snapshot(tmp_path) == before  # no .tmp file either
    finally:
        if (tmp_path / "ro").exists():
            (tmp_path / "ro").chmod(0o755)


def export_out(kind: str, tmp_path: Path) -> Path:
    if kind == "folder with a user's file":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "thesis.tex").write_text("years of work\n")
        (tmp_path / "out" / "model.json").write_text("{}")
        return tmp_path / "out"
    if kind == "folder with a user's subfolder":
        (tmp_path / "out" / "photos").mkdir(parents=True)
        return tmp_path / "out"
    if kind == "a regular file":
        (tmp_path / "out").write_text("mine\n")
        return tmp_path / "out"
    if kind == "under a regular file":
        (tmp_path / "file.txt").write_text("mine\n")
        return tmp_path / "file.txt" / "model"
    return read_only_dir(tmp_path) / "model"


@pytest.mark.parametrize("kind", ["folder with a user's file", "folder with a user's subfolder", "a regular file",
                                  "under a regular file", "read-only folder"])
def test_export_out_refused(base: Path, tmp_path: Path, kind: str) -> None:
    out = export_out(kind, tmp_path)
    before = snapshot(tmp_path, base / "run")
    one_line_error(invoke("export", base / "run", "--out", out))
    try:
        assert snapshot(tmp_path, base / "run") == before
    finally:
        if (tmp_path / "ro").exists():
            (tmp_path / "ro").chmod(0o755)


@pytest.mark.parametrize("metrics", [b'{"val": {"ccc_y": 0.', b"", b"[]", b'{"val": 3}', b"\xff\xfe"],
                         ids=["truncated", "empty", "a list", "val not a mapping", "not UTF-8"])
def test_export_bad_metrics_json(base: Path, tmp_path: Path, metrics: bytes) -> None:
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    (run / "metrics.json").write_bytes(metrics)
    before = snapshot(tmp_path)
    line = one_line_error(invoke("export", run, "--out", tmp_path / "exported"))
    assert "metrics.json" in line
    assert snapshot(tmp_path) == before


def test_export_replaces_only_a_model_folder(base: Path, tmp_path: Path) -> None:
    """The counterpart of the refusals: an earlier model folder is replaced (re-export works)."""
    for _ in range(2):
        res = invoke("export", base / "run", "--out", tmp_path / "m")
        assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.onnx", "model.safetensors"]


# -- run stores read by stew report -----------------------------------------------------------------

def valid_store(path: Path, protocol: bool = True) -> None:
    from stew.experiments.protocols import parse_protocol

    with RunStore(path) as store:
        if protocol:
            store.set_meta(protocol="tiny", protocol_yaml=parse_protocol(yaml.safe_dump(TINY)).model_dump_json())


def damaged_store(kind: str, folder: Path) -> None:
    folder.mkdir()
    path = folder / "store.sqlite"
    if kind == "zero bytes":
        path.write_bytes(b"")
    elif kind == "text file":
        path.write_text("these are my notes, not a database\n")
    elif kind == "another SQLite database":
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE photos (id INTEGER)")
        db.close()
    elif kind == "truncated SQLite":
        valid_store(path)
        path.write_bytes(path.read_bytes()[:1500])
    elif kind == "no protocol recorded":
        valid_store(path, protocol=False)
    elif kind == "store.sqlite is a folder":
        path.mkdir()
    elif kind == "corrupt protocol recorded":
        valid_store(path)
        with sqlite3.connect(path) as db:
            db.execute("UPDATE meta SET v = '{\"name\": 3}' WHERE k = 'protocol_yaml'")
        db.close()


STORES = ["zero bytes", "text file", "another SQLite database", "truncated SQLite", "no protocol recorded",
          "store.sqlite is a folder", "corrupt protocol recorded"]


@pytest.mark.parametrize("kind", STORES)
def test_report_on_a_bad_store(tmp_path: Path, kind: str) -> None:
    damaged_store(kind, tmp_path / "o")
    before = snapshot(tmp_path)
    one_line_error(invoke("report", tmp_path / "o"))
    assert snapshot(tmp_path) == before  # byte-identical store, no report.html, no journal


@pytest.mark.parametrize("where", ["under a regular file", "read-only folder"])
def test_report_out_refused(tmp_path: Path, where: str) -> None:
    (tmp_path / "o").mkdir()
    valid_store(tmp_path / "o" / "store.sqlite")
    if where == "under a regular file":
        (tmp_path / "file.txt").write_text("mine\n")
        out = tmp_path / "file.txt" / "r.html"
    else:
        out = read_only_dir(tmp_path) / "r.html"
    before = snapshot(tmp_path)
    try:
        one_line_error(invoke("report", tmp_path / "o", "--out", out))
        assert snapshot(tmp_path) == before
    finally:
        if (tmp_path / "ro").exists():
            (tmp_path / "ro").chmod(0o755)


# -- reproduce and tune: refused before any file (SQLite, synthetic data, runs) is created ---------

def test_reproduce_bogus_set_key(base: Path, tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    line = one_line_error(invoke("reproduce", base / "tiny.yaml", "--data", base / "utt", "--out", tmp_path / "o",
                                 "--set", "bogus_key=1"))
    assert "bogus_key" in line
    assert snapshot(tmp_path) == before and not (tmp_path / "o").exists()


def test_reproduce_bogus_set_key_before_synthesising(tmp_path: Path) -> None:
    """A shipped protocol without --data synthesises its data: not when --set is wrong."""
    one_line_error(invoke("reproduce", "synthetic-quick", "--out", tmp_path / "o", "--set", "bogus_key=1"))
    assert not (tmp_path / "o").exists()


def tuned_storage(kind: str, tmp_path: Path) -> str:
    if kind == "missing file":
        return f"sqlite:///{tmp_path / 'missing.sqlite'}"
    if kind == "zero-byte file":
        (tmp_path / "zero.sqlite").write_bytes(b"")
        return f"sqlite:///{tmp_path / 'zero.sqlite'}"
    (tmp_path / "notes.sqlite").write_text("not a database\n")
    return f"sqlite:///{tmp_path / 'notes.sqlite'}"


@pytest.mark.parametrize("kind", ["missing file", "zero-byte file", "text file"])
def test_reproduce_tuned_storage_refused(base: Path, tmp_path: Path, kind: str) -> None:
    url = tuned_storage(kind, tmp_path)
    before = snapshot(tmp_path)
    one_line_error(invoke("reproduce", base / "tuned.yaml", "--data", base / "utt", "--out", tmp_path / "o",
                          "--tuned", url))
    assert snapshot(tmp_path) == before and not (tmp_path / "missing.sqlite").exists()


@pytest.mark.parametrize("kind", ["text file", "another SQLite database", "truncated SQLite",
                                  "store.sqlite is a folder"])
def test_reproduce_into_a_bad_store(base: Path, tmp_path: Path, kind: str) -> None:
    damaged_store(kind, tmp_path / "o")
    before = snapshot(tmp_path)
    one_line_error(invoke("reproduce", base / "tiny.yaml", "--data", base / "utt", "--out", tmp_path / "o"))
    assert snapshot(tmp_path) == before


def test_reproduce_out_is_a_file(base: Path, tmp_path: Path) -> None:
    (tmp_path / "o").write_text("mine\n")
    before = snapshot(tmp_path)
    one_line_error(invoke("reproduce", base / "tiny.yaml", "--data", base / "utt", "--out", tmp_path / "o"))
    assert snapshot(tmp_path) == before


def test_reproduce_only_matches_nothing(base: Path, tmp_path: Path) -> None:
    one_line_error(invoke("reproduce", base / "tiny.yaml", "--data", base / "utt", "--out", tmp_path / "o",
                          "--only", "nothing-*"))
    assert not (tmp_path / "o").exists()


def test_tune_out_is_a_file(base: Path, tmp_path: Path) -> None:
    (tmp_path / "o").write_text("mine\n")
    before = snapshot(tmp_path)
    one_line_error(invoke("tune", "--study", "s", "--out", tmp_path / "o", "--data", base / "data",
                          "--method", "unimodal", "--modality", "a", "--trials", "1"))
    assert snapshot(tmp_path) == before


def test_tune_storage_not_a_database(base: Path, tmp_path: Path) -> None:
    url = tuned_storage("text file", tmp_path)
    before = snapshot(tmp_path)
    one_line_error(invoke("tune", "--study", "s", "--out", tmp_path / "o", "--data", base / "data",
                          "--method", "unimodal", "--modality", "a", "--trials", "1", "--storage", url))
    assert snapshot(tmp_path) == before
