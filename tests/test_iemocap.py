"""IEMOCAP in the AMH fold layout: the synthetic writer, the reader, and the reader's bad-input catalogue.

The corpus is licensed, so every case runs on ``write_synthetic_iemocap`` output; bad inputs are a copy
of one synthetic fold with one file damaged.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import stew.data.synth.iemocap as synth
from stew.data.formats.iemocap import CLASS_COUNTS, CLASSES, _class_names, is_iemocap, read_iemocap
from stew.data.synth.iemocap import MIN_UTTERANCES, SMALL, class_counts, write_synthetic_iemocap
from stew.errors import DataError

PARTS = ("train", "dev", "test")
KINDS = ("audio_mfcc", "audio_seqN", "audio_prosody", "video", "video_seqN", "nlp_trans", "label")


def _npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_iemocap(tmp_path_factory.mktemp("small") / "iemocap", utterances=100, seed=1)


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_iemocap(tmp_path_factory.mktemp("default") / "iemocap")


@pytest.fixture
def fold1(small: Path, tmp_path: Path) -> Path:
    """A private copy of fold 1 (``<root>/folds/fold01``) to damage; returns the fold folder."""
    dst = tmp_path / "iemocap" / "folds" / "fold01"
    shutil.copytree(small / "folds" / "fold01", dst)
    return dst


# ------------------------------------------------------------------------------------------ the writer


def test_layout_is_the_amh_release(small: Path) -> None:
    assert sorted(p.name for p in (small / "folds").iterdir()) == [f"fold0{k}" for k in range(1, 6)]
    d = small / "folds" / "fold01"
    expected = {f"{p}_{k}.npy" for p in PARTS for k in KINDS} | {"W_embedding.npy", "dic.pkl", "fold01_id.txt"}
    assert {p.name for p in d.iterdir()} == expected
    w = _npy(d / "W_embedding.npy")
    assert w.dtype == np.float32 and w.shape == (SMALL.vocab, SMALL.text_dim) and not w[0].any()
    with (d / "dic.pkl").open("rb") as f:  # our own file: what the AMH loader needs, len() == rows of W
        dic = pickle.load(f)
    assert len(dic) == len(w) and dic["_PAD_"] == 0 and dic["_UNK_"] == 1
    for p in PARTS:
        a = {k: _npy(d / f"{p}_{k}.npy") for k in KINDS}
        n = len(a["label"])
        assert a["audio_mfcc"].shape == (n, SMALL.audio_frames, 120) and a["audio_mfcc"].dtype == np.float32
        assert a["video"].shape == (n, SMALL.video_frames, SMALL.video_dim) and a["video"].dtype == np.float32
        assert a["nlp_trans"].shape == (n, SMALL.text_tokens) and a["nlp_trans"].dtype == np.int64
        assert a["audio_prosody"].shape == (n, 35)
        for k in ("audio_seqN", "video_seqN", "label"):
            assert a[k].shape == (n,) and a[k].dtype == np.int64
        assert a["label"].min() >= 0 and a["label"].max() < 7
        # Zero padding beyond the (clamped) lengths; text pads with id 0 after the last token.
        t = np.arange(SMALL.audio_frames)[None, :] >= a["audio_seqN"][:, None]
        assert not a["audio_mfcc"][t].any()
        if p == "train":  # raw lengths, as in the release: some exceed the stored frames
            assert (a["audio_seqN"] > SMALL.audio_frames).any() and (a["video_seqN"] > SMALL.video_frames).any()


def test_folds_partition_the_same_utterances(small: Path) -> None:
    summary = json.loads((small / "synthetic.json").read_text())
    labels = np.array(summary["labels"])
    assert np.bincount(labels, minlength=7).tolist() == class_counts(100)
    held_out = []
    for k in range(1, 6):
        d = small / "folds" / f"fold0{k}"
        rows = [np.array(line.split(), int) for line in (d / f"fold0{k}_id.txt").read_text().splitlines()]
        everything = np.concatenate(rows)
        assert sorted(everything.tolist()) == list(range(100))  # train + dev + test = every utterance once
        for p, ids in zip(PARTS, rows, strict=True):
            assert np.array_equal(_npy(d / f"{p}_label.npy"), labels[ids])
        held_out.append(np.concatenate(rows[1:]))
        assert 0.15 < len(rows[1]) / len(held_out[-1]) < 0.45  # dev is about 30 % of the held-out block
    assert sorted(np.concatenate(held_out).tolist()) == list(range(100))  # each utterance held out once
    flagged = [m for m in summary["uninformative_modality"] if m]
    assert len(flagged) == 20 and set(flagged) == {"audio", "video", "text"}


def test_class_counts_follow_the_spec() -> None:
    assert class_counts(sum(CLASS_COUNTS)) == list(CLASS_COUNTS)
    for n in (MIN_UTTERANCES, 100, 350, 1000):
        c = class_counts(n)
        assert sum(c) == n and min(c) >= 1 and c.index(max(c)) == CLASSES.index("frustrated")
        assert c[CLASSES.index("surprise")] == min(c)


def test_default_size_and_determinism(default: Path, tmp_path: Path) -> None:
    size = sum(p.stat().st_size for p in default.rglob("*") if p.is_file())
    assert size < 50e6
    a = write_synthetic_iemocap(tmp_path / "a", utterances=MIN_UTTERANCES, seed=3)
    b = write_synthetic_iemocap(tmp_path / "b", utterances=MIN_UTTERANCES, seed=3)
    c = write_synthetic_iemocap(tmp_path / "c", utterances=MIN_UTTERANCES, seed=4)
    name = "folds/fold02/train_audio_mfcc.npy"
    assert (a / name).read_bytes() == (b / name).read_bytes() != (c / name).read_bytes()


def test_writer_is_atomic_and_checks_its_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="at least"):
        write_synthetic_iemocap(tmp_path / "x", utterances=MIN_UTTERANCES - 1)
    with pytest.raises(ValueError, match="uninformative"):
        write_synthetic_iemocap(tmp_path / "x", uninformative=0.9)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="not empty"):
        write_synthetic_iemocap(taken, utterances=MIN_UTTERANCES)
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]

    calls = []

    def failing(path: Path, x: np.ndarray, rows: np.ndarray) -> None:
        calls.append(path)
        if len(calls) > 30:  # fail mid-way, in fold 2
            raise OSError("disk full")
        np.save(path, x[rows])

    monkeypatch.setattr(synth, "_save_rows", failing)
    with pytest.raises(OSError):
        write_synthetic_iemocap(tmp_path / "out", utterances=MIN_UTTERANCES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no output, no temporary folder


# ------------------------------------------------------------------------------------------ the reader


def test_round_trip(small: Path) -> None:
    ds = read_iemocap(small, 1)
    assert (ds.name, ds.task, ds.label_level, ds.n_classes, ds.targets) == (
        "iemocap", "multiclass", "sequence", 7, ["emotion"])
    assert ds.modalities == {"audio": 120, "video": SMALL.video_dim, "text": SMALL.text_dim}
    assert ds.meta["classes"] == list(CLASSES) and ds.meta["fold"] == 1
    d = small / "folds" / "fold01"
    w = _npy(d / "W_embedding.npy")
    by_id = {s.id: s for s in ds.sequences}
    truncated = {"audio": 0, "video": 0}
    for p, split in zip(PARTS, ("train", "val", "test"), strict=True):
        a = {k: _npy(d / f"{p}_{k}.npy") for k in KINDS}
        keep = np.flatnonzero(a["video_seqN"] > 0)
        assert ds.meta["dropped_no_video"][split] == len(a["label"]) - len(keep)
        assert [s.id for s in ds.split(split)] == [f"{p}/{i:06d}" for i in keep]
        counts = np.bincount([int(s.targets[0, 0]) for s in ds.split(split)], minlength=7)
        assert np.array_equal(counts, np.bincount(a["label"][keep], minlength=7))
        for m, frames in (("audio", SMALL.audio_frames), ("video", SMALL.video_frames)):
            truncated[m] += int((a[f"{m}_seqN"][keep] > frames).sum())
        for i in keep:
            s = by_id[f"{p}/{i:06d}"]
            assert s.group == s.id and s.split == split and s.step_ids == [s.id]
            assert s.targets.shape == (1, 1) and s.targets[0, 0] == a["label"][i]
            n_a = min(int(a["audio_seqN"][i]), SMALL.audio_frames)
            n_v = min(int(a["video_seqN"][i]), SMALL.video_frames)
            tokens = a["nlp_trans"][i]
            n_t = int(np.argmax(tokens == 0)) if (tokens == 0).any() else len(tokens)
            np.testing.assert_array_equal(s.features["audio"], a["audio_mfcc"][i, :n_a])
            np.testing.assert_array_equal(s.features["video"], a["video"][i, :n_v])
            np.testing.assert_array_equal(s.features["text"], w[tokens[:n_t]])
            assert s.masks["audio"].all() and s.masks["video"].all() and s.masks["text"].all()
            assert all(s.features[m].dtype == np.float32 for m in ds.modalities)
    assert ds.meta["truncated"] == truncated and sum(truncated.values()) > 0
    assert sum(ds.meta["dropped_no_video"].values()) > 0


def test_zero_lengths_and_lengths_beyond_the_array(fold1: Path) -> None:
    v, a_len = _npy(fold1 / "train_video_seqN.npy"), _npy(fold1 / "train_audio_seqN.npy")
    tokens = _npy(fold1 / "train_nlp_trans.npy")
    i, j, k = np.flatnonzero(v > 0)[:3]
    a_len[i], tokens[i] = 0, 0  # no audio frames, no words
    a_len[j] = 10 * SMALL.audio_frames  # a raw length beyond the stored frames: clamped, as the AMH batcher does
    v[k] = 0  # no video: dropped
    for name, x in (("audio_seqN", a_len), ("nlp_trans", tokens), ("video_seqN", v)):
        np.save(fold1 / f"train_{name}.npy", x)
    ds = read_iemocap(fold1.parent.parent, 1)
    train = {s.id: s for s in ds.split("train")}
    assert f"train/{k:06d}" not in train and ds.meta["dropped_no_video"]["train"] == int((v == 0).sum())
    s = train[f"train/{i:06d}"]
    for m, d in (("audio", 120), ("text", SMALL.text_dim)):
        assert s.features[m].shape == (1, d) and not s.features[m].any() and s.masks[m].tolist() == [False]
    assert s.features["video"].shape[0] == min(v[i], SMALL.video_frames) and s.masks["video"].all()
    s = train[f"train/{j:06d}"]
    assert s.features["audio"].shape == (SMALL.audio_frames, 120) and s.masks["audio"].all()
    cut = sum(int((_npy(fold1 / f"{p}_audio_seqN.npy") > SMALL.audio_frames)[_npy(fold1 / f"{p}_video_seqN.npy") > 0]
                  .sum()) for p in PARTS)
    assert ds.meta["truncated"]["audio"] == cut


def test_nan_in_padding_is_not_read(fold1: Path) -> None:
    x, n = _npy(fold1 / "dev_video.npy"), _npy(fold1 / "dev_video_seqN.npy")
    i = int(np.flatnonzero((n > 0) & (n < SMALL.video_frames))[0])
    x[i, n[i]:] = np.nan
    np.save(fold1 / "dev_video.npy", x)
    read_iemocap(fold1.parent.parent, 1)


def test_class_order_is_checked_against_the_published_counts() -> None:
    perm = [6, 0, 3, 1, 5, 2, 4]
    labels = np.repeat(np.arange(7), [CLASS_COUNTS[k] for k in perm])
    names, how = _class_names([labels[:5000], labels[5000:]])
    assert names == [CLASSES[k] for k in perm] and how.startswith("matched")
    names, how = _class_names([np.repeat(np.arange(7), 3)])
    assert names == list(CLASSES) and how.startswith("assumed")


def _pooled(ds, split: str, m: str) -> np.ndarray:
    return np.stack([s.features[m][s.masks[m]].mean(0) if s.masks[m].any() else np.zeros(ds.modalities[m])
                     for s in ds.split(split)])


def test_informativeness_text_over_video_over_audio(default: Path) -> None:
    """Logistic regression on mean-pooled features, test predictions of the five folds pooled (each
    utterance is tested once); and a modality marked uninformative really carries no class."""
    off = json.loads((default / "synthetic.json").read_text())["uninformative_modality"]
    right: dict[str, list[bool]] = {m: [] for m in ("text", "video", "audio")}
    text_off: list[bool] = []
    for k in range(1, 6):
        ds = read_iemocap(default, k)
        rows = (default / "folds" / f"fold0{k}" / f"fold0{k}_id.txt").read_text().splitlines()
        test_ids = np.array(rows[2].split(), int)
        text_off += [off[test_ids[int(s.id.split("/")[1])]] == "text" for s in ds.split("test")]
        y_tr = np.array([int(s.targets[0, 0]) for s in ds.split("train")])
        y_te = np.array([int(s.targets[0, 0]) for s in ds.split("test")])
        for m in right:
            sc = StandardScaler().fit(_pooled(ds, "train", m))
            clf = LogisticRegression(C=0.1, max_iter=500).fit(sc.transform(_pooled(ds, "train", m)), y_tr)
            right[m] += (clf.predict(sc.transform(_pooled(ds, "test", m))) == y_te).tolist()
    acc = {m: float(np.mean(v)) for m, v in right.items()}
    majority = max(CLASS_COUNTS) / sum(CLASS_COUNTS)
    assert acc["text"] > acc["video"] + 0.05 and acc["video"] > acc["audio"] + 0.05, acc
    assert acc["audio"] > majority + 0.05, acc
    flags = np.array(text_off)
    text_right = np.array(right["text"])
    assert flags.sum() >= 10 and text_right[flags].mean() < text_right[~flags].mean() - 0.3


# ------------------------------------------------------------------------------------------ folds and roots


def test_fold_selection_and_root_forms(small: Path) -> None:
    tests = []
    for k in range(1, 6):
        ds = read_iemocap(small, k)
        assert ds.meta["fold"] == k
        ids = np.array((small / "folds" / f"fold0{k}" / f"fold0{k}_id.txt").read_text().splitlines()[2].split(), int)
        assert len(ds.split("test")) + ds.meta["dropped_no_video"]["test"] == len(ids)
        tests.append({int(ids[int(s.id.split("/")[1])]) for s in ds.split("test")})  # utterance numbers
    assert all(not a & b for n, a in enumerate(tests) for b in tests[n + 1 :])  # five different test sets
    same = read_iemocap(small / "folds", 3), read_iemocap(small / "folds" / "fold03", 3)
    assert all([s.id for s in ds.sequences] == [s.id for s in read_iemocap(small, 3).sequences] for ds in same)
    with pytest.raises(DataError, match=r"fold03: this folder is fold 3 alone; .* fold 2"):
        read_iemocap(small / "folds" / "fold03", 2)
    assert is_iemocap(small) and is_iemocap(small / "folds") and is_iemocap(small / "folds" / "fold02")
    assert not is_iemocap(small / "folds" / "fold02" / "W_embedding.npy") and not is_iemocap(small.parent.parent)


@pytest.mark.parametrize("fold", [0, 6, -1, 1.0, True])
def test_fold_out_of_range(small: Path, fold) -> None:
    with pytest.raises(DataError, match=r"out of range: the AMH layout has folds 1\.\.5"):
        read_iemocap(small, fold)


def test_missing_fold_folder(fold1: Path) -> None:
    with pytest.raises(DataError, match=r"fold02: missing fold folder fold02"):
        read_iemocap(fold1.parent.parent, 2)
    with pytest.raises(DataError, match="not the AMH IEMOCAP layout"):
        read_iemocap(fold1.parent.parent.parent, 1)


# ------------------------------------------------------------------------------------------ bad input


def _edit(name: str, change: Callable[[np.ndarray], np.ndarray | None]) -> Callable[[Path], None]:
    """A corruption: load ``name``, apply ``change`` (in place, or returning a new array), save it back."""

    def apply(d: Path) -> None:
        x = _npy(d / name)
        y = change(x)
        np.save(d / name, x if y is None else y)

    return apply


def _put(a: np.ndarray, index: tuple, value) -> None:
    a[index] = value


def _raw(name: str, data: bytes | Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        (d / name).write_bytes(data((d / name).read_bytes()) if callable(data) else data)

    return apply


def _object_array(d: Path) -> None:
    np.save(d / "train_label.npy", np.array([1, "two", None], dtype=object), allow_pickle=True)


def _nan_in_first_kept(d: Path) -> None:
    i = int(np.flatnonzero(_npy(d / "train_video_seqN.npy") > 0)[0])
    x = _npy(d / "train_audio_mfcc.npy")
    x[i, 0, 5] = np.nan
    np.save(d / "train_audio_mfcc.npy", x)


def _no_video_at_all(d: Path) -> None:
    v = _npy(d / "dev_video_seqN.npy")
    np.save(d / "dev_video_seqN.npy", np.zeros_like(v))


BAD: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # case: (corruption, damaged file, expected message after "<file>: ")
    "missing partition file": (lambda d: (d / "dev_video.npy").unlink(), "dev_video.npy", "missing file"),
    "missing lengths file": (lambda d: (d / "test_audio_seqN.npy").unlink(), "test_audio_seqN.npy", "missing file"),
    "missing embedding": (lambda d: (d / "W_embedding.npy").unlink(), "W_embedding.npy", "missing file"),
    "a folder for a file": (lambda d: ((d / "train_label.npy").unlink(), (d / "train_label.npy").mkdir()),
                            "train_label.npy", "a folder, expected a file"),
    "rows differ in a split": (_edit("train_video.npy", lambda x: x[:-1]), "train_video.npy",
                               r"\d+ utterances, but train_audio_mfcc.npy has \d+"),
    "label file of another length": (_edit("dev_label.npy", lambda x: np.r_[x, 0]), "dev_label.npy",
                                     r"\d+ utterances, but dev_audio_mfcc.npy has \d+"),
    "audio of the wrong rank": (_edit("train_audio_mfcc.npy", lambda x: x[:, 0]), "train_audio_mfcc.npy",
                                r"audio MFCCs \[N, frames, dims\] must have 3 dimensions, found shape"),
    "feature dims differ between splits": (_edit("test_video.npy", lambda x: x[:, :, :-1]), "test_video.npy",
                                           rf"{SMALL.video_dim - 1} feature dims, but train_video.npy has"),
    "label above the class range": (_edit("test_label.npy", lambda x: _put(x, 3, 7)), "test_label.npy",
                                    r"label 7 at index 3 is not a class in 0\.\.6"),
    "negative label": (_edit("train_label.npy", lambda x: _put(x, 0, -1)), "train_label.npy",
                       r"label -1 at index 0 is not a class"),
    "fractional label": (_edit("train_label.npy", lambda x: x.astype(float) + 0.5), "train_label.npy",
                         r"label is not a whole number at index \[0\]"),
    "one-hot labels": (_edit("train_label.npy", lambda x: np.eye(7, dtype=np.int64)[x]), "train_label.npy",
                       r"labels must be class indices \[N\]"),
    "token id beyond the embedding": (_edit("train_nlp_trans.npy", lambda x: _put(x, (2, 0), SMALL.vocab)),
                                      "train_nlp_trans.npy",
                                      rf"token id {SMALL.vocab} at index \[2, 0\] is outside W_embedding"),
    "negative token id": (_edit("dev_nlp_trans.npy", lambda x: _put(x, (1, 3), -5)), "dev_nlp_trans.npy",
                          r"token id -5 at index \[1, 3\] is outside W_embedding"),
    "negative length": (_edit("train_audio_seqN.npy", lambda x: _put(x, 4, -1)), "train_audio_seqN.npy",
                        r"negative length -1 at index 4"),
    "fractional length": (_edit("test_video_seqN.npy", lambda x: x + 0.25), "test_video_seqN.npy",
                          r"length is not a whole number at index \[0\]"),
    "object array (pickle) in a .npy": (_object_array, "train_label.npy", r"an object array \(pickled Python"),
    "a pickle named .npy": (_raw("dev_label.npy", pickle.dumps([1, 2, 3])), "dev_label.npy", "a pickle"),
    "not a .npy file": (_raw("test_video.npy", b"video,frames\n1,2\n"), "test_video.npy", r"not a \.npy file"),
    "truncated .npy": (_raw("train_video.npy", lambda b: b[: len(b) // 2]), "train_video.npy",
                       r"unreadable \.npy array \(truncated or corrupt\?\)"),
    "text labels": (_edit("dev_label.npy", lambda x: x.astype(str)), "dev_label.npy",
                    "labels .* must be a numeric array, found dtype <U"),
    "NaN in a real audio frame": (_nan_in_first_kept, "train_audio_mfcc.npy",
                                  r"NaN, Inf or a value beyond float32 at index \[\d+, 0\]"),
    "value beyond float32": (_edit("train_video.npy", lambda x: x.astype(np.float64) * 0 + 1e300),
                             "train_video.npy", r"NaN, Inf or a value beyond float32 at index \[\d+, 0\]"),
    "NaN in the embedding": (_edit("W_embedding.npy", lambda x: _put(x, (7, 0), np.inf)), "W_embedding.npy",
                             r"NaN, Inf or a value beyond float32 in row 7"),
    "no utterance with video": (_no_video_at_all, "dev_video_seqN.npy",
                                r"every utterance of partition 'dev' has video length 0"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case: str, fold1: Path) -> None:
    corrupt, name, message = BAD[case]
    corrupt(fold1)
    before = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in fold1.parent.parent.rglob("*"))
    with pytest.raises(DataError, match=rf"{re.escape(str(fold1 / name))}: {message}") as e:
        read_iemocap(fold1.parent.parent, 1)
    assert "\n" not in str(e.value)
    after = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in fold1.parent.parent.rglob("*"))
    assert before == after  # reading writes nothing
