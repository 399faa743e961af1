"""Dataset formats: CMU-MOSI utterance release, AVEC 2016 RECOLA, and stew's native format."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stew.data import Dataset, Sequence, load_dataset
from stew.data.formats.mosi import read_mosi
from stew.data.formats.native import write_native
from stew.data.formats.recola import STANDARD_DIMS, read_recola, write_recola_layout
from stew.errors import DataError

REAL_MOSI = Path(__file__).resolve().parents[2] / "shared/data/cmu-mosi-utterance"


def assert_same(a: Dataset, b: Dataset, *, ordered: bool = True) -> None:
    assert (a.task, a.targets, a.modalities, a.n_classes) == (b.task, b.targets, b.modalities, b.n_classes)
    xs, ys = (list(a), list(b)) if ordered else (sorted(a, key=lambda s: s.id), sorted(b, key=lambda s: s.id))
    assert [(s.id, s.group, s.split, s.step_ids) for s in xs] == [(s.id, s.group, s.split, s.step_ids) for s in ys]
    for x, y in zip(xs, ys, strict=True):
        np.testing.assert_array_equal(x.targets, y.targets)
        assert x.targets.dtype == y.targets.dtype == np.float32
        for m in a.modalities:
            np.testing.assert_array_equal(x.features[m], y.features[m])
            np.testing.assert_array_equal(x.masks[m], y.masks[m])
            assert x.features[m].dtype == np.float32 and x.masks[m].dtype == bool


def expect_error(load: Callable[[], object], file: str | Path, row=None, column=None, match: str = "") -> DataError:
    """The load fails with a DataError that names ``file`` (and the row/column where given)."""
    with pytest.raises(DataError, match=match) as ei:
        load()
    e = ei.value
    assert e.file is not None and e.file in str(e)
    assert Path(e.file) == file if isinstance(file, Path) else Path(e.file).name == file
    assert (e.row, e.column) == (row, column)
    if row is not None:
        assert f"row {row}" in str(e)
    return e


# ============================================================================================ CMU-MOSI

MOSI_DIMS = {"audio": 3, "video": 4, "text": 2}
# File rows are deliberately not in temporal order, and video ids contain underscores.
MOSI_TRAIN = [("vidA_10", 1), ("ab_c_3", 0), ("vidA_2", 0), ("vidA_1", 1), ("ab_c_1", 1)]
MOSI_TEST = [("zz_q_2", 0), ("zz_q_1", 1), ("y_5", 1)]
VIDEO_ZERO_ROW = 1  # 0-based train file row (ab_c_3) whose video features are all zero


def quoted_csv(rows: list[list[str]]) -> bytes:
    """The release's style: every value double-quoted, CRLF line ends, no header."""
    return "".join(",".join(f'"{v}"' for v in r) + "\r\n" for r in rows).encode()


def write_mosi(root: Path, split: str, utts, modalities=tuple(MOSI_DIMS), seed: int = 0) -> dict[str, np.ndarray]:
    """Write one split; returns each modality's features in file-row order."""
    rng = np.random.default_rng(seed)
    root.mkdir(exist_ok=True)
    (root / f"{split}_ids.csv").write_bytes(("utterance_id\r\n" + "".join(f"{u}\r\n" for u, _ in utts)).encode())
    feats = {}
    for m in modalities:
        x = rng.normal(size=(len(utts), MOSI_DIMS[m])).round(5)
        if m == "video":
            x[rng.random(x.shape) < 0.4] = 0.0  # sparse, like the release, without zeroing whole rows
            x[:, 0] = 1.0
            if split == "train":
                x[VIDEO_ZERO_ROW] = 0.0
        rows = [[repr(float(v)) for v in xi] + [str(lab)] for xi, (_, lab) in zip(x, utts, strict=True)]
        (root / f"{m}_{split}0.csv").write_bytes(quoted_csv(rows))
        feats[m] = x
    return feats


@pytest.fixture
def mosi_root(tmp_path: Path) -> Path:
    root = tmp_path / "mosi"
    write_mosi(root, "train", MOSI_TRAIN, seed=1)
    write_mosi(root, "test", MOSI_TEST, seed=2)
    return root


def test_mosi_fixture_loads_one_sequence_per_video(tmp_path: Path) -> None:
    root = tmp_path / "mosi"
    train = write_mosi(root, "train", MOSI_TRAIN, seed=1)
    write_mosi(root, "test", MOSI_TEST, seed=2)
    ds = load_dataset(root)
    assert (ds.task, ds.targets, ds.n_classes, ds.step_rate_hz) == ("binary", ["sentiment"], 2, None)
    assert ds.modalities == MOSI_DIMS and list(ds.modalities) == ["audio", "video", "text"]
    assert ds.meta["format"] == "cmu-mosi-utterance" and ds.meta["source"] == str(root)
    assert [(s.id, s.group, s.split) for s in ds] == [
        ("ab_c", "ab_c", "train"), ("vidA", "vidA", "train"), ("y", "y", "test"), ("zz_q", "zz_q", "test")
    ]
    by_id = {s.id: s for s in ds}
    # Numeric order inside a video: _2 before _10.
    assert by_id["vidA"].step_ids == ["vidA_1", "vidA_2", "vidA_10"]
    assert by_id["ab_c"].step_ids == ["ab_c_1", "ab_c_3"]
    assert by_id["zz_q"].step_ids == ["zz_q_1", "zz_q_2"]
    vid_a = by_id["vidA"]
    file_rows = [3, 2, 0]  # vidA_1, vidA_2, vidA_10 in the files
    np.testing.assert_array_equal(vid_a.targets, np.array([[1], [0], [1]], dtype=np.float32))
    for m in MOSI_DIMS:
        np.testing.assert_array_equal(vid_a.features[m], train[m][file_rows].astype(np.float32))
    # ab_c_3 (file row VIDEO_ZERO_ROW) has an all-zero video row: missing there, present elsewhere.
    np.testing.assert_array_equal(by_id["ab_c"].masks["video"], [True, False])
    assert all(s.masks["audio"].all() and s.masks["text"].all() for s in ds)
    assert by_id["ab_c"].targets.shape == (2, 1) and by_id["ab_c"].targets.dtype == np.float32


def test_mosi_test_only_audio_only(tmp_path: Path) -> None:
    root = tmp_path / "mosi"
    write_mosi(root, "test", MOSI_TEST, modalities=("audio",))
    ds = load_dataset(root)
    assert ds.modalities == {"audio": 3}
    assert ds.splits() == {"test": 2}
    assert [s.step_ids for s in ds] == [["y_5"], ["zz_q_1", "zz_q_2"]]


def test_mosi_tolerates_trailing_blank_line_and_bom(mosi_root: Path) -> None:
    p = mosi_root / "train_ids.csv"
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes() + b"\r\n")
    ds = load_dataset(mosi_root)
    assert ds.n_steps("train") == len(MOSI_TRAIN)


def _edit_rows(path: Path, fn: Callable[[list[list[str]]], list[list[str]]]) -> None:
    rows = [[v.strip('"') for v in ln.split(",")] for ln in path.read_bytes().decode().split("\r\n")[:-1]]
    path.write_bytes(quoted_csv(fn(rows)))


def _set(path: Path, row: int, col: int, value: str) -> None:
    """Set a 1-based cell of a feature file."""

    def fn(rows):
        rows[row - 1][col - 1] = value
        return rows

    _edit_rows(path, fn)


def _set_id(path: Path, row: int, value: str) -> None:
    lines = path.read_bytes().decode().split("\r\n")
    lines[row] = value  # line 0 is the header, so data row k is line k
    path.write_bytes("\r\n".join(lines).encode())


def _flip_label(rows, row):
    rows[row - 1][-1] = str(1 - int(rows[row - 1][-1]))
    return rows


MOSI_BAD: list[tuple[str, Callable[[Path], None], str, int | None, int | str | None, str]] = [
    ("nan", lambda r: _set(r / "audio_train0.csv", 2, 2, "nan"), "audio_train0.csv", 2, 2, "NaN"),
    ("inf", lambda r: _set(r / "text_test0.csv", 1, 1, "-inf"), "text_test0.csv", 1, 1, "Inf"),
    ("not a number", lambda r: _set(r / "video_train0.csv", 3, 4, "abc"), "video_train0.csv", 3, 4, "not a number"),
    ("extra column in a row", lambda r: _edit_rows(r / "audio_train0.csv", lambda rows: rows[:3] + [rows[3] + ["1"]]
     + rows[4:]), "audio_train0.csv", 4, None, "5 columns, expected 4"),
    ("dims differ across splits", lambda r: _edit_rows(r / "audio_test0.csv", lambda rows: [x[1:] for x in rows]),
     "audio_test0.csv", 1, None, "audio_train0.csv has 4"),
    ("fewer rows than ids", lambda r: _edit_rows(r / "text_train0.csv", lambda rows: rows[:-1]),
     "text_train0.csv", None, None, "4 rows but train_ids.csv has 5"),
    ("labels disagree", lambda r: _edit_rows(r / "video_train0.csv", lambda rows: _flip_label(rows, 2)),
     "video_train0.csv", 2, 5, "disagrees with audio_train0.csv"),
    ("label 2", lambda r: _set(r / "audio_train0.csv", 3, 4, "2"), "audio_train0.csv", 3, 4, "not a class"),
    ("label 0.5", lambda r: _set(r / "audio_test0.csv", 2, 4, "0.5"), "audio_test0.csv", 2, 4, "not a class"),
    ("duplicate id", lambda r: _set_id(r / "train_ids.csv", 4, "vidA_10"), "train_ids.csv", 4, "utterance_id",
     "duplicate id 'vidA_10'"),
    ("id without suffix", lambda r: _set_id(r / "train_ids.csv", 2, "abc"), "train_ids.csv", 2, "utterance_id",
     "malformed"),
    ("id with non-integer suffix", lambda r: _set_id(r / "test_ids.csv", 3, "y_x"), "test_ids.csv", 3,
     "utterance_id", "malformed"),
    ("same position twice", lambda r: _set_id(r / "train_ids.csv", 3, "vidA_01"), "train_ids.csv", 4,
     "utterance_id", "same position"),
    ("video in both splits", lambda r: _set_id(r / "test_ids.csv", 1, "vidA_7"), "test_ids.csv", 1, "utterance_id",
     "also in split 'train'"),
    ("features without ids", lambda r: (r / "test_ids.csv").unlink(), "test_ids.csv", None, None, "missing file"),
    ("ids without features", lambda r: [(r / f"{m}_test0.csv").unlink() for m in MOSI_DIMS], "test_ids.csv",
     None, None, "without any feature file"),
    ("modality missing in one split", lambda r: (r / "video_test0.csv").unlink(), "video_test0.csv", None, None,
     "absent in 'test'"),
    ("empty feature file", lambda r: (r / "text_test0.csv").write_bytes(b""), "text_test0.csv", None, None,
     "empty file"),
    ("empty split", lambda r: (r / "test_ids.csv").write_bytes(b"utterance_id\r\n"), "test_ids.csv", None, None,
     "split is empty"),
    ("empty ids file", lambda r: (r / "train_ids.csv").write_bytes(b""), "train_ids.csv", None, None, "empty file"),
    ("wrong ids header", lambda r: _set_id(r / "train_ids.csv", 0, "id"), "train_ids.csv", None, None,
     "expected the header"),
]


@pytest.mark.parametrize(("mutate", "file", "row", "column", "match"), [c[1:] for c in MOSI_BAD],
                         ids=[c[0] for c in MOSI_BAD])
def test_mosi_bad_input(mosi_root: Path, mutate, file: str, row, column, match: str) -> None:
    load_dataset(mosi_root)  # the fixture itself is valid
    mutate(mosi_root)
    expect_error(lambda: load_dataset(mosi_root), file, row, column, match)


@pytest.mark.mosi
@pytest.mark.skipif(not REAL_MOSI.is_dir(), reason="needs ../shared/data/cmu-mosi-utterance")
def test_real_mosi_train_and_test_splits() -> None:
    load_dataset(REAL_MOSI)  # warm the lazy imports so the timing below is the reader's
    t0 = time.perf_counter()
    ds = read_mosi(REAL_MOSI)
    assert time.perf_counter() - t0 < 1.0
    assert ds.modalities == {"audio": 73, "video": 100, "text": 100}
    # The shared folder holds the whole train split and 15 of the 31 test videos (its README).
    assert len(ds.sequences) == 77 and ds.n_steps() == 1447 + 375 and ds.splits() == {"train": 62, "test": 15}
    y = np.concatenate([s.targets[:, 0] for s in ds.split("train")])
    assert set(np.unique(y)) == {0.0, 1.0} and 0.485 < y.mean() < 0.495
    y_test = np.concatenate([s.targets[:, 0] for s in ds.split("test")])
    assert 0.615 < y_test.mean() < 0.625
    for s in ds:
        pos = [int(u.rsplit("_", 1)[1]) for u in s.step_ids]
        assert pos == sorted(pos) and len(set(pos)) == len(pos)
        assert all(u.rsplit("_", 1)[0] == s.id for u in s.step_ids)
    assert any("_" in s.id for s in ds)  # ids like 6_0THN4chvY split on the last underscore
    video = np.concatenate([s.features["video"] for s in ds])
    assert 0.75 < (video == 0).mean() < 0.83


# ============================================================================================ RECOLA


def recola_ds(dims=STANDARD_DIMS, n_frames: int = 100, seed: int = 0, targets=("arousal", "valence")) -> Dataset:
    """Two recordings per split; video frames 10..19 of every recording have no face."""
    rng = np.random.default_rng(seed)
    seqs = []
    for split, prefix in (("train", "train"), ("val", "dev"), ("test", "test")):
        for k in (1, 2):
            feats = {m: rng.normal(size=(n_frames, d)).astype(np.float32) for m, d in dims.items()}
            masks = {m: np.ones(n_frames, dtype=bool) for m in dims}
            for m in ("video_app", "video_geo"):
                if m in feats:
                    masks[m][10:20] = False
                    feats[m][10:20] = 0.0
            name = f"{prefix}_{k}"
            seqs.append(Sequence(
                id=name, group=name, split=split, features=feats, masks=masks,
                targets=rng.uniform(-1, 1, size=(n_frames, len(targets))).astype(np.float32),
                step_ids=[f"{name}@{i / 25:.3f}" for i in range(n_frames)],
            ))
    return Dataset(name="recola", task="regression", targets=list(targets), modalities=dict(dims), sequences=seqs,
                   label_range=(-1.0, 1.0), step_rate_hz=25.0)


@pytest.mark.parametrize("fmt", ["arff", "csv"])
def test_recola_round_trip(tmp_path: Path, fmt: str) -> None:
    ds = recola_ds()
    root = write_recola_layout(ds, tmp_path / "recola", fmt=fmt)
    assert (root / "features_video_geometric" / "valence" / f"dev_2.{fmt}").is_file()
    got = load_dataset(root)
    assert_same(ds, got)
    assert (got.task, got.label_range, got.step_rate_hz, got.n_classes) == ("regression", (-1.0, 1.0), 25.0, None)
    assert got.splits() == {"train": 2, "val": 2, "test": 2}
    assert got.groups("val") == ["dev_1", "dev_2"]
    assert got.meta == {"format": "avec2016-recola", "source": str(root), "feature_set": "arousal",
                        "unlabelled_skipped": []}
    assert not got.sequences[0].masks["video_app"][10:20].any() and got.sequences[0].masks["audio"].all()


def test_recola_reads_instance_name_first_and_comments(tmp_path: Path) -> None:
    root = write_recola_layout(recola_ds(), tmp_path / "r")
    # openSMILE-style feature ARFF: a quoted Instance_name before frameTime, comments, blank lines.
    p = root / "features_audio" / "arousal" / "train_1.arff"
    head, data = p.read_text().split("@data\n")
    extra = "% written by hand\n@attribute Instance_name string\n"
    head = head.replace("@attribute frameTime", extra + "@attribute frameTime")
    rows = [f"'train_1',{ln}" for ln in data.splitlines() if ln.strip()]
    p.write_text(head + "@data\n\n" + "\n".join(rows[:50] + ["% a comment", ""] + rows[50:]) + "\n")
    assert_same(recola_ds(), load_dataset(root))


def test_recola_feature_set_picks_the_folder(tmp_path: Path) -> None:
    a, b = recola_ds(seed=1), recola_ds(seed=2)
    root = write_recola_layout(a, tmp_path / "a")
    other = write_recola_layout(b, tmp_path / "b")
    for d in ("features_audio", "features_video_appearance", "features_video_geometric"):
        shutil.rmtree(root / d / "valence")
        shutil.copytree(other / d / "valence", root / d / "valence")
    got_v = load_dataset(root, feature_set="valence")
    got_a = load_dataset(root)
    assert got_v.meta["feature_set"] == "valence" and got_a.meta["feature_set"] == "arousal"
    np.testing.assert_array_equal(got_v.sequences[3].features["video_geo"], b.sequences[3].features["video_geo"])
    np.testing.assert_array_equal(got_a.sequences[3].features["video_geo"], a.sequences[3].features["video_geo"])
    np.testing.assert_array_equal(got_v.sequences[3].targets, a.sequences[3].targets)  # labels are shared


def test_recola_skips_unlabelled_test_recordings(tmp_path: Path) -> None:
    root = write_recola_layout(recola_ds(), tmp_path / "r")
    for p in (root / "ratings_gold_standard").glob("*/test_*.arff"):
        p.unlink()
    got = load_dataset(root)
    assert got.splits() == {"train": 2, "val": 2}
    assert got.meta["unlabelled_skipped"] == ["test_1", "test_2"]


def test_recola_subsets_of_targets_and_modalities(tmp_path: Path) -> None:
    root = write_recola_layout(recola_ds(), tmp_path / "r")
    shutil.rmtree(root / "ratings_gold_standard" / "valence")
    shutil.rmtree(root / "features_video_appearance")
    got = load_dataset(root)
    assert got.targets == ["arousal"] and got.n_outputs == 1
    assert got.sequences[0].targets.shape == (100, 1)
    np.testing.assert_array_equal(got.sequences[0].targets[:, 0], recola_ds().sequences[0].targets[:, 0])
    assert got.modalities == {"audio": 88, "video_geo": 632}


def test_recola_learned_dims_and_renumbered_ids(tmp_path: Path) -> None:
    small = {"audio": 3, "video_app": 4, "video_geo": 5}
    ds = recola_ds(dims=small, n_frames=30)
    renamed = ds.replace_sequences(replace(s, id=f"spk{i}") for i, s in enumerate(ds))
    root = write_recola_layout(renamed, tmp_path / "r", fmt="csv")
    got = read_recola(root, expected_dims=None)
    assert_same(ds, got)  # ids were not {train,dev,test}_N, so the writer numbered them per split
    expect_error(lambda: load_dataset(root), root / "features_audio/arousal/train_1.csv", match="expected 88")


def _edit_arff(path: Path, fn: Callable[[list[str], list[list[str]]], tuple[list[str], list[list[str]]]]) -> None:
    head, data = path.read_text().split("@data\n")
    rows = [ln.split(",") for ln in data.splitlines() if ln.strip()]
    lines, rows = fn(head.splitlines(), rows)
    path.write_text("\n".join(lines) + "\n@data\n" + "\n".join(",".join(r) for r in rows) + "\n")


def _cell(rel: str, row: int, col: int, value: str) -> Callable[[Path], None]:
    """Set a cell: 1-based data row, 0-based field (0 is frameTime in feature files)."""

    def fn(lines, rows):
        rows[row - 1][col] = value
        return lines, rows

    return lambda root: _edit_arff(root / rel, fn)


def _drop_last_column(rel: str) -> Callable[[Path], None]:
    return lambda root: _edit_arff(root / rel, lambda lines, rows: (lines[:-2], [r[:-1] for r in rows]))


def _drop_last_row(rel: str) -> Callable[[Path], None]:
    return lambda root: _edit_arff(root / rel, lambda lines, rows: (lines, rows[:-1]))


def _unlink(*rels: str) -> Callable[[Path], None]:
    return lambda root: [(root / r).unlink() for r in rels]


AUD = "features_audio/arousal"
APP = "features_video_appearance/arousal"
GEO = "features_video_geometric/arousal"
GS = "ratings_gold_standard"
RECOLA_BAD: list[tuple[str, Callable[[Path], None], str, int | None, str | None, str]] = [
    ("missing value", _cell(f"{AUD}/train_1.arff", 3, 3, "?"), f"{AUD}/train_1.arff", 3, "audio_2", "NaN"),
    ("nan", _cell(f"{APP}/dev_1.arff", 4, 1, "nan"), f"{APP}/dev_1.arff", 4, "video_app_0", "NaN"),
    ("inf", _cell(f"{GEO}/dev_2.arff", 5, 1, "inf"), f"{GEO}/dev_2.arff", 5, "video_geo_0", "Inf"),
    ("not a number", _cell(f"{AUD}/test_2.arff", 6, 2, "x1"), f"{AUD}/test_2.arff", 6, "audio_1", "not a number"),
    ("label above 1", _cell(f"{GS}/valence/train_2.arff", 7, 2, "1.5"), f"{GS}/valence/train_2.arff", 7,
     "GoldStandard", "outside"),
    ("label nan", _cell(f"{GS}/arousal/dev_1.arff", 8, 2, "nan"), f"{GS}/arousal/dev_1.arff", 8, "GoldStandard",
     "NaN"),
    ("extra field", lambda root: _edit_arff(root / f"{AUD}/train_1.arff", lambda h, rows: (h, rows[:3] + [
        rows[3] + ["1"]] + rows[4:])), f"{AUD}/train_1.arff", 4, None, "90 fields, expected 89"),
    ("not the AVEC dims", _drop_last_column(f"{APP}/train_1.arff"), f"{APP}/train_1.arff", None, None,
     "167 features, expected 168"),
    ("fewer label frames", _drop_last_row(f"{GS}/arousal/dev_1.arff"), f"{GS}/arousal/dev_1.arff", 100, None,
     "99 frames"),
    ("fewer video frames", _drop_last_row(f"{GEO}/train_2.arff"), f"{GEO}/train_2.arff", 100, None, "99 frames"),
    ("frame times disagree", _cell(f"{APP}/train_2.arff", 50, 0, "1.970000"), f"{APP}/train_2.arff", 50, "frameTime",
     "but .*train_2.arff has 1.96"),
    ("duplicate frame time", _cell(f"{AUD}/test_1.arff", 11, 0, "0.360000"), f"{AUD}/test_1.arff", 11, "frameTime",
     "duplicate frameTime"),
    ("decreasing frame time", _cell(f"{AUD}/test_1.arff", 11, 0, "0.100000"), f"{AUD}/test_1.arff", 11,
     "frameTime", "decreasing"),
    ("feature file missing in one modality", _unlink(f"{APP}/dev_2.arff"), f"{APP}/dev_2.arff", None, None,
     "missing file"),
    ("features without labels", _unlink(f"{GS}/valence/train_1.arff"), f"{GS}/valence/train_1.arff", None, None,
     "no valence gold standard"),
    ("test partly labelled", _unlink(f"{GS}/arousal/test_2.arff"), f"{GS}/arousal/test_2.arff", None, None,
     "no arousal gold standard"),
    ("labels without features", _unlink(f"{AUD}/dev_2.arff", f"{APP}/dev_2.arff", f"{GEO}/dev_2.arff"),
     f"{GS}/arousal/dev_2.arff", None, None, "without features"),
    ("no gold-standard folder", lambda root: shutil.rmtree(root / GS), GS, None, None, "missing folder"),
    ("arff and csv of one recording", lambda root: shutil.copy(root / f"{GEO}/dev_1.arff", root / f"{GEO}/dev_1.csv"),
     f"{GEO}/dev_1.csv", None, None, "keep one"),
    ("no @data", lambda root: (root / f"{AUD}/dev_1.arff").write_text("@relation x\n@attribute frameTime numeric\n"),
     f"{AUD}/dev_1.arff", None, None, "no @data"),
    ("no frameTime", lambda root: _edit_arff(root / f"{GS}/valence/dev_2.arff", lambda h, rows: (
        [ln.replace("frameTime", "time") for ln in h], rows)), f"{GS}/valence/dev_2.arff", None, "frameTime",
     "no frameTime"),
    ("empty file", lambda root: (root / f"{GEO}/test_1.arff").write_text(""), f"{GEO}/test_1.arff", None, None,
     "empty file"),
]


def copy_arousal_set(template: Path, dest: Path) -> Path:
    """Copy a layout without the valence feature set, which the default load never reads."""
    def skip(folder: str, _names: list[str]) -> list[str]:
        return ["valence"] if Path(folder).name.startswith("features_") else []

    return Path(shutil.copytree(template, dest, ignore=skip))


@pytest.fixture(scope="module")
def recola_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_recola_layout(recola_ds(), tmp_path_factory.mktemp("recola") / "r")


@pytest.mark.parametrize(("mutate", "file", "row", "column", "match"), [c[1:] for c in RECOLA_BAD],
                         ids=[c[0] for c in RECOLA_BAD])
def test_recola_bad_input(recola_template: Path, tmp_path: Path, mutate, file: str, row, column, match) -> None:
    root = copy_arousal_set(recola_template, tmp_path / "r")
    mutate(root)
    expect_error(lambda: load_dataset(root), root / file, row, column, match)


def test_recola_dims_must_agree_across_recordings(recola_template: Path, tmp_path: Path) -> None:
    root = copy_arousal_set(recola_template, tmp_path / "r")
    read_recola(root, expected_dims=None)
    _drop_last_column(f"{GEO}/dev_1.arff")(root)
    expect_error(lambda: read_recola(root, expected_dims=None), root / GEO / "dev_1.arff",
                 match="631 features, but .*train_1.arff has 632")


def test_recola_bad_feature_set(recola_template: Path, tmp_path: Path) -> None:
    expect_error(lambda: load_dataset(recola_template, feature_set="dominance"), recola_template,
                 match="feature_set")
    root = shutil.copytree(recola_template, tmp_path / "r")
    shutil.rmtree(root / "features_audio" / "valence")
    expect_error(lambda: load_dataset(root, feature_set="valence"), root / "features_audio" / "valence",
                 match="missing folder")


# ============================================================================================ native


@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_native_round_trip_of_mosi(mosi_root: Path, tmp_path: Path, fmt: str) -> None:
    ds = load_dataset(mosi_root)
    out = write_native(ds, tmp_path / "native", fmt=fmt)
    assert (out / f"index.{fmt}").is_file() and (out / "manifest.yaml").is_file()
    got = load_dataset(out)
    assert_same(ds, got)
    assert got.meta == ds.meta and got.step_rate_hz is None and got.name == "cmu-mosi"


@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_native_round_trip_of_recola(tmp_path: Path, fmt: str) -> None:
    ds = recola_ds(dims={"audio": 3, "video_app": 4, "video_geo": 5}, n_frames=20)
    got = load_dataset(write_native(ds, tmp_path / "native", fmt=fmt))
    assert_same(ds, got, ordered=False)  # the native reader orders sequences by id
    assert (got.label_range, got.step_rate_hz) == ((-1.0, 1.0), 25.0)


def test_native_bad_input(mosi_root: Path, tmp_path: Path) -> None:
    out = write_native(load_dataset(mosi_root), tmp_path / "native")
    table = out / "video.parquet"
    df = pd.read_parquet(table)
    df.loc[3, "f1"] = np.nan
    df.to_parquet(table, index=False)
    expect_error(lambda: load_dataset(out), table, 4, "f1", "NaN")
    table.unlink()
    expect_error(lambda: load_dataset(out), table, match="missing file")
    with pytest.raises(DataError, match="not empty"):
        write_native(load_dataset(mosi_root), out)
