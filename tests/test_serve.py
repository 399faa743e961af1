"""`stew serve`: the HTTP contract in-process (FastAPI's test client) and against a real server process."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from stew.cli import app as cli
from stew.deploy import export, predict_dataset
from stew.deploy.serve import ServeSettings, Service, create_app
from tests.conftest import tiny_clips, tiny_frames, tiny_utterances, tiny_waves
from tests.onnx_models import make_run, random_features, small_spec

DIM = 5  # tiny_frames' modality 'b'


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Three exported ONNX models: regression on frames (windows, delay, label scale), binary per step on
    utterances, multiclass per clip (pooled)."""
    root = tmp_path_factory.mktemp("serve-models")
    out = {}
    for name, (ds, m, kind, kw) in {
        "arousal": (tiny_frames(), "b", "cmstew", dict(window_steps=50, delay=3, label_scale={"original": [0, 10]})),
        "sentiment": (tiny_utterances(), "audio", "unimodal", {}),
        "emotion": (tiny_clips(), "long", "emobed", {}),
    }.items():
        spec = small_spec(kind, d_in=ds.modalities[m], task=ds.task, targets=tuple(ds.targets),
                          n_classes=ds.n_classes, pool="mean" if ds.label_level == "sequence" else "none")
        make_run(root / f"run-{name}", spec, ds, m, **kw)
        out[name] = export(root / f"run-{name}", root / name)
    return out


@pytest.fixture(scope="module")
def client(models) -> TestClient:
    settings = ServeSettings(max_steps=400, max_body_bytes=60_000)
    with TestClient(create_app(models, settings), raise_server_exceptions=False) as c:
        yield c


def post(client, name, body, ctype="application/json"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(f"/models/{name}/predict", content=data, headers={"Content-Type": ctype})


def test_health_and_catalogue(client):
    assert client.get("/healthz").json() == {"status": "ok", "models": 3}
    listed = {m["name"]: m for m in client.get("/models").json()}
    assert set(listed) == {"arousal", "sentiment", "emotion"}
    a = listed["arousal"]
    assert (a["modality"], a["dim"], a["task"], a["targets"], a["window_steps"]) == ("b", DIM, "regression", ["y"], 50)
    assert a["stew_version"] and a["engine"] == "onnxruntime" and listed["emotion"]["per_sequence"]
    assert "/models/{name}/predict" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_served_predictions_equal_stew_predict(client, models):
    """The service computes what `stew predict` computes on the same recording (mask included)."""
    ds = tiny_frames()
    seq = ds.split("test")[0]
    x, mask = seq.features["b"], seq.masks["b"]
    r = post(client, "arousal", {"features": x.tolist(), "mask": mask.tolist(), "recording_id": "rec-1"})
    assert r.status_code == 200, r.text
    got = r.json()
    one = replace(ds, sequences=[seq])
    want = predict_dataset(models["arousal"], one)
    assert got["recording_id"] == "rec-1" and got["steps"] == len(x) and got["columns"] == ["y"]
    np.testing.assert_allclose(np.array(got["predictions"])[:, 0], want["pred_y"], atol=1e-6)
    np.testing.assert_allclose(np.array(got["predictions_original"])[:, 0], want["pred_y_original"], atol=1e-5)
    assert got["summary"]["mean"]["y"] == pytest.approx(float(want["pred_y"].mean()), abs=1e-6)


def test_classification_summaries(client):
    r = post(client, "sentiment", {"features": random_features(7, 4).tolist()}).json()
    assert len(r["predictions"]) == 7 and r["columns"] == ["prob"]
    assert r["summary"]["label"] in (0, 1) and 0 <= r["summary"]["probability"] <= 1
    r = post(client, "emotion", {"features": random_features(23, 4).tolist()}).json()
    assert len(r["predictions"]) == 1 and r["columns"] == ["prob_0", "prob_1", "prob_2"]  # one label per clip
    assert sum(r["summary"]["probabilities"]) == pytest.approx(1, abs=1e-5)
    assert r["summary"]["label"] == int(np.argmax(r["predictions"][0]))


def row(v="1.0", n=DIM):
    return "[" + ",".join([v] * n) + "]"


# (what, body, content type, expected status). Shared by the in-process and the real-server tests.
MALFORMED = [
    ("wrong dims", '{"features": [[1, 2, 3]]}', "application/json", 422),
    ("NaN", '{"features": [' + row("NaN") + "]}", "application/json", 422),
    ("Infinity", '{"features": [' + row("Infinity") + "]}", "application/json", 422),
    ("beyond float32", '{"features": [' + row("1e39") + "]}", "application/json", 422),
    ("strings", '{"features": [' + row('"1.0"') + "]}", "application/json", 422),
    ("booleans", '{"features": [' + row("true") + "]}", "application/json", 422),
    ("empty body", "", "application/json", 400),
    ("not JSON", '{"features": [[1,', "application/json", 400),
    ("top-level array", "[[1, 2, 3, 4, 5]]", "application/json", 422),
    ("no features", '{"mask": [true]}', "application/json", 422),
    ("features null", '{"features": null}', "application/json", 422),
    ("zero steps", '{"features": []}', "application/json", 422),
    ("negative steps field", '{"features": [' + row() + '], "steps": -3}', "application/json", 422),
    ("nested garbage", '{"features": [[' + row() + "]]}", "application/json", 422),
    ("deep nesting", '{"features": ' + "[" * 5000 + "]" * 5000 + "}", "application/json", 400),
    ("mask length", '{"features": [' + row() + "], \"mask\": [true, false]}", "application/json", 422),
    ("mask not bool", '{"features": [' + row() + '], "mask": ["yes"]}', "application/json", 422),
    ("id not string", '{"features": [' + row() + '], "recording_id": 5}', "application/json", 422),
    ("too many steps", '{"features": [' + ",".join([row("0")] * 401) + "]}", "application/json", 413),
    ("huge body", '{"features": [' + ",".join([row("0.000000000001")] * 3000) + "]}", "application/json", 413),
    ("wrong content type", '{"features": [' + row() + "]}", "text/plain", 415),
    ("no content type", '{"features": [' + row() + "]}", "", 415),
]


@pytest.mark.parametrize("what,body,ctype,status", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_requests_in_process(client, what, body, ctype, status):
    r = post(client, "arousal", body, ctype)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail and "Traceback" not in detail and "\n" not in detail


def test_unknown_model_and_method(client):
    r = post(client, "nope", {"features": [[1.0] * DIM]})
    assert r.status_code == 404 and "GET /models" in r.json()["detail"]
    assert client.get("/models/arousal/predict").status_code == 405
    assert client.get("/nothing-here").status_code == 404


def test_admission_is_bounded(models):
    """At most workers + queue requests in flight; the next is refused (503) rather than queued in memory."""
    service = Service({"arousal": models["arousal"]}, ServeSettings(workers=1, queue=1))
    assert service.admit() and service.admit() and not service.admit()
    service.release()
    assert service.admit()
    service.pool.shutdown()


def _start(args: list[str]) -> tuple[subprocess.Popen, int]:
    """A real `stew serve` on 127.0.0.1 and the port it chose (--port 0: no race for a free port)."""
    proc = subprocess.Popen([sys.executable, "-c", "from stew.cli import app; app()", "serve", *args,
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "400"})
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise AssertionError(f"server did not start: {line}{proc.stderr.read()}")
    return proc, int(line.split("http://127.0.0.1:")[1].split()[0])


def _request(port: int, method: str, path: str, body: str | bytes = b"", headers: dict | None = None,
             chunked: bool = False) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = body.encode() if isinstance(body, str) else body
    if chunked:
        conn.putrequest(method, path)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for i in range(0, len(data), 4096):
            part = data[i: i + 4096]
            conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        conn.send(b"0\r\n\r\n")
    else:
        conn.request(method, path, body=data, headers=headers or {})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, json.loads(raw) if raw else {}


def test_real_server_survives_a_catalogue_of_malformed_requests(models):
    proc, port = _start([f"arousal={models['arousal']}", "--max-steps", "400", "--max-body-mb", "0.06"])
    try:
        assert _request(port, "GET", "/healthz") == (200, {"status": "ok", "models": 1})
        for what, body, ctype, status in MALFORMED:
            headers = {"Content-Type": ctype} if ctype else {}
            got, answer = _request(port, "POST", "/models/arousal/predict", body, headers)
            assert got == status, (what, answer)
            assert isinstance(answer["detail"], str) and "Traceback" not in answer["detail"], what
        # a chunked body has no Content-Length: counted as it arrives, refused past the limit
        huge = '{"features": [' + ",".join([row("0.5")] * 3000) + "]}"
        assert _request(port, "POST", "/models/arousal/predict", huge, {"Content-Type": "application/json"},
                        chunked=True)[0] == 413
        assert _request(port, "POST", "/models/nope/predict", '{"features": []}',
                        {"Content-Type": "application/json"})[0] == 404
        assert _request(port, "POST", "/models/arousal/predict-audio", b"RIFF\x00garbage",
                        {"Content-Type": "audio/wav"})[0] == 422  # no extractor recorded, and not audio
        ok, answer = _request(port, "POST", "/models/arousal/predict",
                              json.dumps({"features": random_features(60, DIM).tolist()}),
                              {"Content-Type": "application/json"})
        assert ok == 200 and len(answer["predictions"]) == 60
        assert _request(port, "GET", "/healthz")[0] == 200  # still answering
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err


runner = CliRunner()


def one_line_error(res):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    return lines[0]


def test_serve_refuses_bad_starts_in_one_line(models, tmp_path):
    """Missing folder, a model without model.onnx, a duplicate or bad name, a port in use: one line, exit 2."""
    assert "nope" in one_line_error(runner.invoke(cli, ["serve", str(tmp_path / "nope")]))
    export(models["arousal"].parent / "run-arousal", tmp_path / "st", fmt="safetensors")
    assert "model.onnx" in one_line_error(runner.invoke(cli, ["serve", str(tmp_path / "st")]))
    assert "two models named" in one_line_error(runner.invoke(
        cli, ["serve", f"a={models['arousal']}", f"a={models['emotion']}"]))
    assert "model name" in one_line_error(runner.invoke(cli, ["serve", f"a/b={models['arousal']}"]))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        line = one_line_error(runner.invoke(cli, ["serve", str(models["arousal"]), "--port", str(port)]))
    assert "cannot listen" in line and str(port) in line


def _wav(seconds: float, sr: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.normal(size=len(t))
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def audio_models(tmp_path_factory) -> dict[str, Path]:
    """A raw-waveform ConflictNET (1 s clips at 8 kHz) and an eGeMAPS-features student, both exported."""
    from stew.data.dataset import Dataset, Sequence
    from stew.data.features import ExtractorSettings
    from stew.models.specs import ConflictNetSpec, RawAudioSpec

    root = tmp_path_factory.mktemp("audio-models")
    waves = tiny_waves(n=10)
    spec = RawAudioSpec(modality="audio", targets=["conflict"], net=ConflictNetSpec(samples=8000))
    make_run(root / "run-wave", spec, waves, "audio", label_scale={"original": [-10, 10]},
             extractor={"set": "waveform", "sample_rate": 8000, "clip_samples": 8000, "rms_normalise": True})
    settings = ExtractorSettings(set="egemaps")
    rng = np.random.default_rng(0)
    seqs = [Sequence(id=f"c{i}", group=f"c{i}", split="train", features={"audio": rng.normal(size=(30, 88)).astype(
        np.float32)}, masks={"audio": np.ones(30, bool)}, targets=np.zeros((1, 1), np.float32), step_ids=[f"c{i}"])
        for i in range(3)]
    feats = Dataset(name="f", task="regression", targets=["arousal"], modalities={"audio": 88}, sequences=seqs,
                    label_level="sequence")  # as `stew features extract` output: one label per clip
    make_run(root / "run-feat", small_spec("sew", d_in=88, pool="mean"), feats, "audio",
             extractor=settings.model_dump(mode="json"))
    return {"wave": export(root / "run-wave", root / "wave"), "feat": export(root / "run-feat", root / "feat")}


def test_audio_upload_equals_stew_predict_audio(audio_models, tmp_path):
    """An uploaded file gives what `stew predict --audio` gives on it: the raw waveform read as the model's
    clips were, or its openSMILE features."""
    from stew.deploy.audio import predict_audio

    settings = ServeSettings()
    with TestClient(create_app(audio_models, settings), raise_server_exceptions=False) as client:
        for name, sr in (("wave", 8000), ("feat", 16000)):
            wav = _wav(2.0, sr)
            (tmp_path / f"{name}.wav").write_bytes(wav)
            r = client.post(f"/models/{name}/predict-audio?recording_id=call-1", content=wav,
                            headers={"Content-Type": "audio/wav"})
            assert r.status_code == 200, r.text
            got = r.json()
            want = predict_audio(audio_models[name], tmp_path / f"{name}.wav", cache=False, progress=False)
            col = "pred_conflict" if name == "wave" else "pred_arousal"
            assert got["recording_id"] == "call-1"
            np.testing.assert_allclose(np.array(got["predictions"])[:, 0], want[col], atol=1e-5)
        # bad uploads: not audio, empty, wrong type; a model trained on features stew did not extract
        bad = [("wave", b"RIFF....WAVEfmt garbage", "audio/wav", 422), ("wave", b"", "audio/wav", 400),
               ("wave", _wav(1.0, 8000), "text/plain", 415), ("feat", b"\x00" * 1000, "application/octet-stream", 422)]
        for name, body, ctype, status in bad:
            r = client.post(f"/models/{name}/predict-audio", content=body, headers={"Content-Type": ctype})
            assert r.status_code == status, (name, ctype, r.text)
            assert "Traceback" not in r.json()["detail"] and "/tmp" not in r.json()["detail"]


def test_audio_upload_needs_an_extractor(client):
    r = client.post("/models/arousal/predict-audio", content=_wav(1.0, 8000), headers={"Content-Type": "audio/wav"})
    assert r.status_code == 422 and "send features" in r.json()["detail"]
