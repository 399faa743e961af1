"""Audio files -> openSMILE features (stew.data.features): shapes and framing per set, the cache, workers,
the written dataset, bad input, and predictions straight from audio."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import stew.data.features as F
from stew.config import TrainConfig
from stew.data.features import (
    ExtractorSettings,
    cache_key,
    default_cache_dir,
    extract_file,
    extract_folder,
)
from stew.data.io import load_dataset
from stew.deploy.audio import predict_audio
from stew.errors import DataError
from stew.util.digest import sha256_file

SR = 16000


def speech(seconds: float, f0: float = 140.0, seed: int = 0, level: float = 0.2) -> np.ndarray:
    """Speech-like: a gliding harmonic voice in syllable bursts, over faint noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.15 * np.sin(2 * np.pi * 0.4 * t))) / SR
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    bursts = (np.sin(2 * np.pi * 3.0 * t + seed) > -0.2).astype(float)
    x = level * voice * bursts / 3 + 0.002 * rng.normal(size=t.size)
    return x.astype(np.float32)


def write_folder(root: Path, n: int = 4, seconds: float = 2.0, *, yaml: bool = True) -> Path:
    """An audio folder: n clips whose pitch carries the label, splits train/val/test, speakers as groups."""
    root.mkdir(parents=True)
    rows = []
    for i in range(n):
        sf.write(root / f"c{i}.wav", speech(seconds, f0=110 + 20 * i, seed=i), SR, subtype="PCM_16")
        label = round(-0.9 + 1.8 * i / max(n - 1, 1), 3)
        split = ("train", "dev", "test")[i % 3]
        rows.append({"file": f"c{i}.wav", "arousal": label, "split": split, "group": f"spk{i}"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    if yaml:
        (root / "audio.yaml").write_text("label_range: [-1, 1]\n")
    return root


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times openSMILE ran (in this process)."""
    calls = [0]
    real = F._run_opensmile

    def counting(*a, **k):
        calls[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(F, "_run_opensmile", counting)
    return calls


# --------------------------------------------------------------------------------------------------
# Settings and one file


@pytest.mark.parametrize(("name", "dim"), [("egemaps", 88), ("egemaps-lld", 25), ("compare-lld", 65)])
def test_shapes_per_set(tmp_path: Path, name: str, dim: int) -> None:
    sf.write(tmp_path / "a.wav", speech(9.0), SR, subtype="PCM_16")
    y = extract_file(tmp_path / "a.wav", ExtractorSettings(set=name))
    assert y.shape == (225, dim) and y.dtype == np.float32 and np.isfinite(y).all()  # 9 s at 25 Hz
    assert ExtractorSettings(set=name).dim == dim


def test_lld_rate_is_a_block_mean_of_the_100hz_frames(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", speech(3.0), SR, subtype="PCM_16")
    native = extract_file(tmp_path / "a.wav", ExtractorSettings(set="egemaps-lld", rate_hz=100))
    at25 = extract_file(tmp_path / "a.wav", ExtractorSettings(set="egemaps-lld", rate_hz=25))
    assert native.shape == (300, 25) and at25.shape == (75, 25)
    np.testing.assert_allclose(at25, native.reshape(75, 4, 25).mean(1), rtol=1e-5, atol=1e-4)


def test_functionals_slide_an_8s_window_every_40ms(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", speech(10.0), SR, subtype="PCM_16")
    settings = ExtractorSettings(set="egemaps")
    assert (settings.window_s, settings.rate_hz) == (8.0, 25.0)  # AVEC 2016 (spec §1.3)
    y = extract_file(tmp_path / "a.wav", settings)
    assert y.shape == (250, 88)
    # openSMILE's full windows [i * 40 ms, i * 40 ms + 8 s) come first, and they move; past the last
    # one (about 2 s before the end) the last window is held.
    changes = np.flatnonzero(np.any(np.diff(y, axis=0) != 0, axis=1))
    last = int(changes.max()) + 1
    assert 40 <= last <= 50 and (y[last:] == y[last]).all()
    # The first frame is the window [0, 8 s) (+ one 50 ms LLD frame): its functionals are those of that
    # audio alone, up to openSMILE's context at the window's end (a shimmer spread or two).
    x = speech(10.0)
    for i in (0, 25):  # 0 s and 1 s
        alone = F.features_of_signal(x[i * 640: i * 640 + int(8.05 * SR)], SR, settings)[0]
        assert np.isclose(y[i], alone, rtol=0.01, atol=1e-3).sum() >= 80
    whole = F.features_of_signal(x, SR, ExtractorSettings(set="egemaps", window_s=10.0))[0]
    assert np.isclose(y[0], whole, rtol=0.01, atol=1e-3).sum() < 60


def test_a_clip_shorter_than_the_window_gets_its_whole_functionals(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", speech(2.0), SR, subtype="PCM_16")
    y = extract_file(tmp_path / "a.wav", ExtractorSettings(set="egemaps"))
    assert y.shape == (50, 88) and (y == y[0]).all() and np.isfinite(y).all()


def test_too_short_for_opensmile_is_one_line(tmp_path: Path) -> None:
    sf.write(tmp_path / "blip.wav", speech(0.03), SR, subtype="PCM_16")
    with pytest.raises(DataError, match=r"blip\.wav: too short for openSMILE") as e:
        extract_file(tmp_path / "blip.wav", ExtractorSettings(set="egemaps-lld"))
    assert "\n" not in str(e.value)


def test_settings_are_checked_and_round_trip_as_json() -> None:
    s = ExtractorSettings(set="egemaps")
    assert ExtractorSettings.model_validate_json(s.model_dump_json()) == s
    assert s.opensmile_version == F.opensmile.__version__
    assert ExtractorSettings(set="egemaps-lld").window_s is None
    with pytest.raises(ValueError, match="rate_hz must divide 100"):
        ExtractorSettings.make("egemaps", rate_hz=30)
    with pytest.raises(ValueError, match="window_s applies to the egemaps functionals"):
        ExtractorSettings.make("compare-lld", window_s=8.0)
    with pytest.raises(ValueError, match="^set: "):
        ExtractorSettings.make("mfcc")
    with pytest.raises(ValueError, match="extra"):
        ExtractorSettings.model_validate({"set": "egemaps", "hop": 1})


# --------------------------------------------------------------------------------------------------
# The cache


def test_cache_hits_skip_opensmile_and_misses_recompute(tmp_path: Path, counted: list[int]) -> None:
    root = write_folder(tmp_path / "clips", n=3, seconds=9.0)
    cache = tmp_path / "cache"
    lld = ExtractorSettings(set="egemaps-lld")
    first = load_dataset(extract_folder(root, lld, tmp_path / "d1", cache_dir=cache, progress=False))
    assert counted[0] == 3
    entries = sorted(cache.rglob("*.npy"))
    assert len(entries) == 3 and np.load(entries[0], allow_pickle=False).shape == (225, 25)
    again = load_dataset(extract_folder(root, lld, tmp_path / "d2", cache_dir=cache, progress=False))
    assert counted[0] == 3  # all three from the cache
    for a, b in zip(first.sequences, again.sequences, strict=True):
        np.testing.assert_array_equal(a.features["audio"], b.features["audio"])
    # Another setting misses; so does a changed file; the others still hit.
    extract_folder(root, ExtractorSettings(set="egemaps-lld", rate_hz=50), tmp_path / "d3", cache_dir=cache,
                   progress=False)
    assert counted[0] == 6
    sf.write(root / "c1.wav", speech(9.0, f0=300, seed=9), SR, subtype="PCM_16")
    changed = load_dataset(extract_folder(root, lld, tmp_path / "d4", cache_dir=cache, progress=False))
    assert counted[0] == 7
    assert not np.array_equal(changed.sequences[1].features["audio"], first.sequences[1].features["audio"])
    # A damaged entry is recomputed, not trusted; --no-cache neither reads nor writes.
    key = cache_key(sha256_file(root / "c0.wav"), lld)
    (cache / key[:2] / f"{key}.npy").write_bytes(b"\x93NUMPY garbage")
    extract_folder(root, lld, tmp_path / "d5", cache_dir=cache, progress=False)
    assert counted[0] == 8
    n_entries = len(list(cache.rglob("*.npy")))
    extract_folder(root, lld, tmp_path / "d6", cache=False, progress=False)
    assert counted[0] == 11 and len(list(cache.rglob("*.npy"))) == n_entries


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "stew" / "features"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "stew" / "features"


def test_a_named_cache_that_cannot_be_used_is_one_line(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "clips", n=3)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="cannot use as the feature cache"):
        extract_folder(root, ExtractorSettings(set="egemaps-lld"), tmp_path / "d", cache_dir=tmp_path / "afile" / "c",
                       progress=False)
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------------------------------------
# The dataset


def test_written_dataset_carries_labels_splits_groups_and_the_extractor(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "clips", n=4, seconds=3.0)
    settings = ExtractorSettings(set="egemaps")
    out = extract_folder(root, settings, tmp_path / "data", cache=False, progress=False)
    ds = load_dataset(out)
    labels = pd.read_csv(root / "labels.csv")
    assert ds.label_level == "sequence" and ds.task == "regression" and ds.targets == ["arousal"]
    assert ds.modalities == {"audio": 88} and ds.step_rate_hz is None and ds.label_range == (-1.0, 1.0)
    assert ds.meta["extractor"] == settings.model_dump(mode="json")
    assert ExtractorSettings.model_validate(ds.meta["extractor"]) == settings
    for s, row in zip(ds.sequences, labels.itertuples(), strict=True):
        assert s.id == row.file and s.group == row.group
        assert s.split == {"dev": "val"}.get(row.split, row.split)
        assert s.targets.shape == (1, 1) and s.targets[0, 0] == pytest.approx(row.arousal)
        assert s.features["audio"].shape == (75, 88) and s.masks["audio"].all()


def test_workers_give_the_same_arrays(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "clips", n=3, seconds=3.0)
    settings = ExtractorSettings(set="egemaps")
    one = load_dataset(extract_folder(root, settings, tmp_path / "w1", cache=False, progress=False))
    two = load_dataset(extract_folder(root, settings, tmp_path / "w2", workers=2, cache=False, progress=True))
    for a, b in zip(one.sequences, two.sequences, strict=True):
        assert a.id == b.id
        np.testing.assert_array_equal(a.features["audio"], b.features["audio"])


def test_a_folder_without_labels_is_refused(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "clips", n=3)
    (root / "labels.csv").unlink()
    with pytest.raises(DataError, match=r"labels\.csv: no labels\.csv: extraction writes a labelled dataset"):
        extract_folder(root, ExtractorSettings(set="egemaps"), tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------------------------------------
# Bad input: one DataError naming the file, and nothing written


def _wav_with_format_tag(tag: int) -> bytes:
    data = (speech(0.3) * 3000).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", tag, 1, SR, 2 * SR, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", len(data)) + data)


def _ok_wav(tmp: Path) -> bytes:
    sf.write(tmp / "ok.wav", speech(0.5), SR, subtype="PCM_16")
    return (tmp / "ok.wav").read_bytes()


BAD_FILES = {
    "not audio": (lambda p, tmp: p.write_text("a text file, not audio\n"), "cannot open as audio"),
    "truncated header": (lambda p, tmp: p.write_bytes(_ok_wav(tmp)[:20]), "cannot open as audio"),
    "corrupt header": (lambda p, tmp: p.write_bytes(_ok_wav(tmp)[:12] + b"garbage!" * 8), "cannot open as audio"),
    "zero length": (lambda p, tmp: sf.write(p, np.zeros(0, np.float32), SR, subtype="PCM_16"), "zero-length"),
    "all silent": (lambda p, tmp: sf.write(p, np.zeros(SR, np.float32), SR, subtype="PCM_16"), "all-silent"),
    "NaN samples": (lambda p, tmp: sf.write(p, np.r_[speech(0.5), np.float32(np.nan)], SR, subtype="FLOAT"),
                    "NaN sample"),
    "unsupported format": (lambda p, tmp: p.write_bytes(_wav_with_format_tag(0x1234)), "unsupported sample format"),
    "8 channels": (lambda p, tmp: sf.write(p, np.tile(speech(0.5)[:, None], 8), SR, subtype="PCM_16"), "8 channels"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_audio_file_is_one_line_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    root = write_folder(tmp_path / "clips", n=3, seconds=0.5)
    bad = root / "c1.wav"
    make, message = BAD_FILES[case]
    make(bad, tmp_path)
    out, cache = tmp_path / "data", tmp_path / "cache"
    with pytest.raises(DataError) as e:
        extract_folder(root, ExtractorSettings(set="egemaps-lld"), out, cache_dir=cache, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(bad)) and message in msg
    assert not out.exists() and not any(p.name.startswith(".data") for p in tmp_path.iterdir())


def test_a_bad_file_found_by_a_worker_is_the_same_line(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "clips", n=4, seconds=0.5)
    BAD_FILES["NaN samples"][0](root / "c2.wav", tmp_path)
    BAD_FILES["all silent"][0](root / "c3.wav", tmp_path)
    with pytest.raises(DataError) as e:
        extract_folder(root, ExtractorSettings(set="egemaps-lld"), tmp_path / "data", workers=2, cache=False,
                       progress=False)
    # The first bad file in labels.csv order, whichever worker finished first.
    assert str(e.value).startswith(str(root / "c2.wav")) and "NaN sample" in str(e.value)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(("edit", "message"), [
    ("missing", r"c1\.wav: missing file: listed in labels\.csv \(row 2\)"),
    ("unlabelled", r"stray\.wav: audio file without a label"),
    ("out of range", r"labels\.csv, row 3, column arousal: label 1\.5 for c2\.wav is outside \[-1, 1\]"),
])
def test_bad_labels_are_one_line_and_nothing_is_written(tmp_path: Path, edit: str, message: str) -> None:
    root = write_folder(tmp_path / "clips", n=3, seconds=0.5)
    if edit == "missing":
        (root / "c1.wav").unlink()
    elif edit == "unlabelled":
        sf.write(root / "stray.wav", speech(0.5), SR, subtype="PCM_16")
    else:
        lab = pd.read_csv(root / "labels.csv")
        lab.loc[2, "arousal"] = 1.5
        lab.to_csv(root / "labels.csv", index=False)
    with pytest.raises(DataError, match=message) as e:
        extract_folder(root, ExtractorSettings(set="egemaps-lld"), tmp_path / "data", cache=False, progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "data").exists()


def test_an_unusable_output_is_refused_before_extraction(tmp_path: Path, counted: list[int]) -> None:
    root = write_folder(tmp_path / "clips", n=3)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    with pytest.raises(DataError, match="not empty"):
        extract_folder(root, ExtractorSettings(set="egemaps-lld"), tmp_path / "busy", cache=False, progress=False)
    assert counted[0] == 0 and (tmp_path / "busy" / "mine.txt").read_text() == "keep"


# --------------------------------------------------------------------------------------------------
# Predictions straight from audio


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny model trained on extracted eGeMAPS functionals: (audio folder, model folder)."""
    from stew.training.run import run

    tmp = tmp_path_factory.mktemp("predict")
    root = write_folder(tmp / "clips", n=9, seconds=3.0)
    (root / "sub").mkdir()
    (root / "c8.wav").rename(root / "sub" / "c8.wav")
    lab = pd.read_csv(root / "labels.csv")
    lab.loc[8, "file"] = "sub/c8.wav"
    lab.to_csv(root / "labels.csv", index=False)
    data = extract_folder(root, ExtractorSettings(set="egemaps"), tmp / "data", cache_dir=tmp / "cache", progress=False)
    out = tmp / "run"
    run(TrainConfig(data=data, modality="audio", arch="classifier", max_epochs=2, progress=False, out=out,
                    clf_hidden=16))
    return root, out / "model"


def test_predict_audio_a_folder_and_a_single_file(trained: tuple[Path, Path], tmp_path: Path) -> None:
    root, model = trained
    meta = json.loads((model / "model.json").read_text())
    assert meta["extractor"]["set"] == "egemaps" and meta["extractor"]["window_s"] == 8.0
    preds = predict_audio(model, root, tmp_path / "preds.csv", cache=False, progress=False)
    ids = [f"c{i}.wav" for i in range(8)] + ["sub/c8.wav"]
    assert sorted(preds["sequence"]) == sorted(ids) and len(preds) == 9 and set(preds["step"]) == {0}
    assert np.isfinite(preds["pred_arousal"]).all()
    on_disk = pd.read_csv(tmp_path / "preds.csv")
    np.testing.assert_allclose(on_disk["pred_arousal"], preds["pred_arousal"], rtol=1e-5)
    one = predict_audio(model, root / "sub" / "c8.wav", progress=False, cache=False)
    assert list(one["sequence"]) == ["c8.wav"]
    folder_row = preds.set_index("sequence").loc["sub/c8.wav", "pred_arousal"]
    assert one["pred_arousal"].iloc[0] == pytest.approx(folder_row, abs=1e-5)
    # The same as predicting the extracted dataset (the training features).
    from stew.deploy import predict_dataset

    ref = predict_dataset(model, root.parent / "data").set_index("sequence")
    np.testing.assert_allclose(preds.set_index("sequence").loc[ref.index, "pred_arousal"], ref["pred_arousal"],
                               atol=1e-5)


def _with_extractor(model: Path, tmp_path: Path, extractor: dict | None) -> Path:
    other = tmp_path / "other-model"
    shutil.copytree(model, other)
    meta = json.loads((other / "model.json").read_text())
    meta["extractor"] = extractor
    (other / "model.json").write_text(json.dumps(meta))
    return other


def test_a_model_without_an_extractor_refuses_audio(trained: tuple[Path, Path], tmp_path: Path,
                                                    counted: list[int]) -> None:
    root, model = trained
    other = _with_extractor(model, tmp_path, None)
    with pytest.raises(DataError) as e:
        predict_audio(other, root, tmp_path / "p.csv", progress=False)
    assert str(e.value) == f"{other}: this model was trained on features stew did not extract; give --data instead"
    assert counted[0] == 0 and not (tmp_path / "p.csv").exists()


def test_a_model_from_another_opensmile_or_unknown_settings_is_refused(trained: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    root, model = trained
    meta = json.loads((model / "model.json").read_text())
    other = _with_extractor(model, tmp_path, {**meta["extractor"], "opensmile_version": "1.0.0"})
    with pytest.raises(DataError, match=r"model\.json: the model's features came from opensmile 1\.0\.0"):
        predict_audio(other, root, progress=False)
    shutil.rmtree(other)
    other = _with_extractor(model, tmp_path, {**meta["extractor"], "set": "mfcc"})
    with pytest.raises(DataError, match=r"model\.json: extractor\.set: Input should be"):
        predict_audio(other, root, progress=False)
    shutil.rmtree(other)
    # Damaged weights: found by the model check that overlaps the extraction (their SHA-256 first);
    # nothing is written.
    other = _with_extractor(model, tmp_path, meta["extractor"])
    (other / "model.safetensors").write_bytes(b"\x80\x04 not safetensors")
    with pytest.raises(DataError, match=r"model\.safetensors: SHA-256 differs") as e:
        predict_audio(other, root / "c0.wav", tmp_path / "p.csv", cache=False, progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "p.csv").exists()


def test_predict_audio_bad_inputs(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, model = trained
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no audio files in the folder"):
        predict_audio(model, tmp_path / "empty", progress=False)
    with pytest.raises(DataError, match="missing file or folder"):
        predict_audio(model, tmp_path / "nope.wav", progress=False)
    (tmp_path / "notes.wav").write_text("not audio")
    with pytest.raises(DataError, match=r"notes\.wav: cannot open as audio"):
        predict_audio(model, tmp_path / "notes.wav", progress=False, cache=False)
