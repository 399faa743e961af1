"""``stew serve``: exported ONNX models over HTTP (FastAPI + uvicorn), without torch.

Endpoints: ``GET /healthz``, ``GET /models``, ``POST /models/{name}/predict`` (JSON: ``features``
steps x dims, optional ``mask`` and ``recording_id``), OpenAPI docs at ``/docs``.

What keeps a burst or a hostile client from hurting the service:

- models load once at start (JSON + ONNX graph, no pickle); a bad folder stops the start with one line;
- a request is admitted only while fewer than ``workers + queue`` are in flight (503 otherwise), and
  only then is its body read, capped at ``max_body_bytes`` (413, before reading when Content-Length
  says so): memory is bounded by (workers + queue) x max_body_bytes;
- parsing, validation and inference run in a pool of ``workers`` threads, each ONNX Runtime call with
  ``threads`` intra-op threads (ONNX Runtime releases the GIL while it computes);
- every bad input is a 4xx with ``{"detail": "..."}``; an unexpected failure is a 500 with a fixed
  message, never a traceback.
"""

from __future__ import annotations

import asyncio
import re
import socket
import sys
import tempfile
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from stew import __version__
from stew.deploy.meta import LabelScale
from stew.deploy.predict import output_columns, postprocess
from stew.deploy.runtime import OnnxModel, predict_arrays
from stew.errors import DataError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Uploads the audio route takes; libsndfile reads the container from the bytes, not from this header.
AUDIO_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/flac", "audio/ogg", "application/octet-stream")


class ServeSettings(BaseModel):
    """Limits and pool sizes (``stew serve`` options)."""

    model_config = ConfigDict(extra="forbid")
    workers: int = Field(default=2, ge=1, le=64)  # requests computed at once
    threads: int = Field(default=1, ge=1, le=64)  # ONNX Runtime intra-op threads per request
    max_steps: int = Field(default=100_000, ge=1)  # steps per request (413 above)
    max_body_bytes: int = Field(default=16_000_000, ge=1)  # request body (413 above)
    queue: int = Field(default=8, ge=0)  # admitted requests waiting for a worker (503 above)


class PredictRequest(BaseModel):
    """One recording (or utterance sequence) of raw, unstandardised features at the model's step rate."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    features: list[list[float]] = Field(min_length=1, description="steps x dims, finite numbers")
    mask: list[bool] | None = Field(default=None, description="per step: False where the modality is missing")
    recording_id: str | None = Field(default=None, max_length=256, description="echoed back")


class PredictResponse(BaseModel):
    model: str
    recording_id: str | None
    task: str
    steps: int = Field(description="input steps")
    columns: list[str] = Field(description="what each value of a prediction row is")
    predictions: list[list[float]] = Field(description="per label step (one row for a per-sequence model)")
    predictions_original: list[list[float]] | None = Field(
        default=None, description="regression in the labels' own units, when the model records them")
    summary: dict[str, Any] = Field(description="regression: mean per target; classification: label and "
                                                "mean probabilities")


class BadRequest(Exception):
    """A 4xx answer: ``status`` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def parse_model_args(args: list[str]) -> dict[str, Path]:
    """``DIR`` or ``NAME=DIR`` -> {name: folder}; names unique and URL-safe."""
    out: dict[str, Path] = {}
    for a in args:
        name, sep, folder = a.partition("=")
        path = Path(folder if sep else a)
        name = name if sep else path.resolve().name
        if not _NAME.match(name):
            raise DataError(f"model name {name!r} must be 1-64 letters, digits, '_', '.' or '-' "
                            "(give NAME=DIR)", file=path)
        if name in out:
            raise DataError(f"two models named {name!r}: give NAME=DIR to tell them apart", file=path)
        out[name] = path
    if not out:
        raise DataError("give at least one model folder")
    return out


class Service:
    """The loaded models and the inference pool behind the app."""

    def __init__(self, models: dict[str, Path], settings: ServeSettings) -> None:
        self.settings = settings
        self.models = {name: OnnxModel(path, settings.threads) for name, path in models.items()}
        for name, model in self.models.items():
            if model.fused:  # a request carries one feature matrix; a fusion model reads several
                raise DataError(f"model {name!r} is a fusion model; stew serve takes single-modality models "
                                "(predict it with stew predict)", file=model.path)
        self.pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="stew-infer")
        self._lock = threading.Lock()
        self._in_flight = 0

    def admit(self) -> bool:
        with self._lock:
            if self._in_flight >= self.settings.workers + self.settings.queue:
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def describe(self, name: str) -> dict[str, Any]:
        m = self.models[name].meta
        ext = m["extractor"] or {}
        return {
            "name": name, "modality": m["modality"], "dim": m["dim"], "task": m["task"], "targets": m["targets"],
            "n_classes": m["n_classes"], "feature_set": ext.get("set"), "extractor": m["extractor"],
            "step_rate_hz": m["step_rate_hz"], "window_steps": m["window_steps"],
            "label_delay_steps": m["label_delay_steps"], "per_sequence": self.models[name].per_sequence,
            "method": m["provenance"].get("method"), "engine": "onnxruntime", "stew_version": __version__,
        }

    def predict(self, name: str, body: bytes) -> dict[str, Any]:
        """Validate a JSON ``body`` and predict (runs in the pool)."""
        model = self.models[name]
        req = _parse(body)
        x = _features(req, model.meta["dim"], self.settings.max_steps)
        present = np.ones(len(x), bool) if req.mask is None else np.asarray(req.mask, bool)
        if len(present) != len(x):
            raise BadRequest(422, f"mask has {len(present)} values; features have {len(x)} steps")
        return self.answer(name, x, present, req.recording_id)

    def predict_audio(self, name: str, body: bytes, filename: str | None) -> dict[str, Any]:
        """Decode an uploaded audio file, make the model's inputs as ``stew predict --audio`` does (its
        openSMILE settings, or the raw waveform as its clips were read), and predict (runs in the pool)."""
        model = self.models[name]
        ext = model.meta["extractor"] or {}
        if not ext:
            raise BadRequest(422, f"model {name!r} was trained on features stew did not extract: send features")
        if not body:
            raise BadRequest(400, "empty body: send the audio file's bytes")
        with tempfile.TemporaryDirectory(prefix="stew-serve-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(body)
            try:
                if ext.get("set") == "waveform":
                    # Imported on the first upload: a server of feature models never pays for the decoders.
                    from stew.data.formats.waveform import prepare_clip, read_audio

                    wave, n = prepare_clip(read_audio(path, int(ext["sample_rate"]))[0], ext.get("clip_samples"))
                    x, present = wave[:, None].astype(np.float32), np.arange(len(wave)) < n
                else:
                    try:  # on the first upload: openSMILE costs ~0.7 s, and a torch-free install has none
                        from stew.data.features import extract_file
                        from stew.deploy.audio import model_extractor
                    except ImportError as e:
                        raise BadRequest(501, f"audio needs {e.name}, not in this install: send features") from None
                    x = extract_file(path, model_extractor(model.path, model.meta))
                    present = np.ones(len(x), bool)
            except DataError as e:  # not audio, truncated, silent, too short: the reader's one line, minus the path
                raise BadRequest(422, str(e).replace(f"{path}: ", "").replace(str(path), "the upload")) from None
        if len(x) > self.settings.max_steps and ext.get("set") != "waveform":
            raise BadRequest(413, f"{len(x)} feature steps; this server takes at most {self.settings.max_steps}")
        return self.answer(name, x, present, filename)

    def answer(self, name: str, x: np.ndarray, present: np.ndarray, recording_id: str | None) -> dict[str, Any]:
        """Predictions and summary for one recording's raw features x [T, d] (present: [T] mask)."""
        model = self.models[name]
        n = len(x)
        meta = model.meta
        xs = model.scaler.transform(meta["modality"], x, present)
        per_sequence = model.per_sequence
        m = model.modalities[0]
        p = predict_arrays(model, [{m: xs}], [{m: present}], [1 if per_sequence else n])[0]
        if not np.isfinite(p).all():
            raise BadRequest(422, "the model's outputs are not finite for these features (values far outside "
                                  "the training range?)")
        p = postprocess(meta, [p])[0]
        scale = LabelScale.model_validate(meta["label_scale"]) if meta["label_scale"] else None
        cols = output_columns(meta, p, None)
        out: dict[str, Any] = {"model": name, "recording_id": recording_id, "task": meta["task"], "steps": n}
        if meta["task"] == "regression":
            out["columns"] = list(meta["targets"])
            out["predictions"] = p.tolist()
            out["summary"] = {"mean": {t: float(p[:, j].mean()) for j, t in enumerate(meta["targets"])}}
            if scale is not None:
                orig = scale.to_original(p)
                out["predictions_original"] = orig.tolist()
                out["summary"]["mean_original"] = {t: float(orig[:, j].mean()) for j, t in enumerate(meta["targets"])}
        elif meta["task"] == "binary":
            out["columns"] = ["prob"]
            out["predictions"] = p.tolist()
            prob = float(p[:, 0].mean())
            out["summary"] = {"label": int(prob >= 0.5), "probability": prob,
                              "labels": cols["pred"].astype(int).tolist()}
        else:
            out["columns"] = [f"prob_{c}" for c in range(p.shape[1])]
            out["predictions"] = p.tolist()
            mean = p.mean(0)
            out["summary"] = {"label": int(mean.argmax()), "probabilities": mean.tolist(),
                              "labels": cols["pred"].astype(int).tolist()}
        return out


def _parse(body: bytes) -> PredictRequest:
    if not body.strip():
        raise BadRequest(400, "empty body: send a JSON object {\"features\": [[...], ...]}")
    try:
        return PredictRequest.model_validate_json(body)
    except ValidationError as e:
        err = e.errors(include_url=False, include_input=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "json_invalid":
            raise BadRequest(400, f"invalid JSON: {err.get('ctx', {}).get('error', msg)}") from None
        if err["type"] == "finite_number":
            msg = "must be a finite number (no NaN or infinity)"
        raise BadRequest(422, f"{loc}: {msg}" if loc else msg) from None


def _features(req: PredictRequest, dim: int, max_steps: int) -> np.ndarray:
    rows = req.features
    if len(rows) > max_steps:
        raise BadRequest(413, f"{len(rows)} steps; this server takes at most {max_steps} per request")
    for i, r in enumerate(rows):
        if len(r) != dim:
            raise BadRequest(422, f"features row {i} has {len(r)} values; the model reads {dim} per step")
    x = np.asarray(rows, np.float64)
    if not (np.abs(x) <= np.finfo(np.float32).max).all():  # finite JSON numbers, but beyond float32
        raise BadRequest(422, "features must be finite float32 numbers (|value| < 3.4e38)")
    return x.astype(np.float32)


def create_app(models: dict[str, Path], settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``models`` ({name: folder}); loads every model now (DataError if one is bad)."""
    settings = settings or ServeSettings()
    service = Service(models, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="stew serve", version=__version__, lifespan=lifespan,
                  description="Affect predictions from one modality's features (models exported by `stew export`).")
    app.state.service = service

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        return error(422, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # never a traceback to the client
        return error(500, "internal error")

    @app.get("/healthz", summary="liveness: 200 while the server answers")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": len(service.models)}

    @app.get("/models", summary="the served models")
    async def list_models() -> list[dict[str, Any]]:
        return [service.describe(n) for n in service.models]

    @app.post(
        "/models/{name}/predict", response_model=PredictResponse, summary="predict one recording",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()}}}},
        responses={400: {"description": "not JSON"}, 404: {"description": "unknown model"},
                   413: {"description": "body or steps over the limit"}, 415: {"description": "not JSON"},
                   422: {"description": "invalid features"}, 503: {"description": "busy"}},
    )
    async def predict(name: str, request: Request) -> Any:
        return await _run(name, request, ("application/json",), service.predict)

    @app.post(
        "/models/{name}/predict-audio", response_model=PredictResponse, summary="predict one audio file",
        description="The body is the file itself (WAV, FLAC, OGG, ...): features are made as the model's were "
                    "(its openSMILE settings, or its raw-waveform clip reading). Optional query: recording_id.",
        openapi_extra={"requestBody": {"required": True, "content": {
            t: {"schema": {"type": "string", "format": "binary"}} for t in AUDIO_TYPES}}},
        responses={400: {"description": "empty body"}, 404: {"description": "unknown model"},
                   413: {"description": "body over the limit"}, 415: {"description": "not audio"},
                   422: {"description": "undecodable audio, or a model without an extractor"},
                   501: {"description": "no openSMILE in this install"}, 503: {"description": "busy"}},
    )
    async def predict_audio(name: str, request: Request, recording_id: str | None = None) -> Any:
        if recording_id is not None and len(recording_id) > 256:
            return error(422, "recording_id: at most 256 characters")
        return await _run(name, request, AUDIO_TYPES,
                          lambda n, body: service.predict_audio(n, body, recording_id))

    async def _run(name: str, request: Request, types: tuple[str, ...], fn: Any) -> JSONResponse:
        """Admission, bounded body, the pool, and errors as one-line JSON: shared by both predict routes."""
        if name not in service.models:
            return error(404, f"no model named {name!r}; GET /models lists them")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in types:
            return error(415, f"send {' or '.join(types)}, not {ctype or 'no Content-Type'!r}")
        declared = request.headers.get("content-length")
        limit = settings.max_body_bytes
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return error(413, f"body over {limit} bytes")
        if not service.admit():
            return error(503, "busy: too many requests in flight; retry later")
        try:
            body = bytearray()
            async for chunk in request.stream():  # chunked bodies have no Content-Length: count as they come
                body += chunk
                if len(body) > limit:
                    return error(413, f"body over {limit} bytes")
            loop = asyncio.get_running_loop()
            try:
                out = await loop.run_in_executor(service.pool, fn, name, bytes(body))
                # A Response as is: response_model documents the shape without re-validating 1,500 rows.
                return JSONResponse(out)
            except BadRequest as e:
                return error(e.status, e.message)
            except DataError as e:
                return error(422, str(e))
        finally:
            service.release()

    return app


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket; any failure (port in use, unknown address) is a one-line DataError."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
        # without it every keep-alive response waits for the client's delayed ACK (44 ms instead of 1 ms).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except (OSError, UnicodeError) as e:
        raise DataError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    return sock


def run_server(model_args: list[str], host: str, port: int, settings: ServeSettings, console: Any) -> None:
    """Load the models, bind, serve until interrupted (Ctrl-C, SIGTERM)."""
    import uvicorn

    # The event loop hands each request to a worker thread and back: with CPython's default 5 ms GIL
    # switch interval every hand-off can wait a full interval behind a busy thread (a 0.3 ms request
    # answered in ~10 ms). ONNX Runtime releases the GIL while it computes, so a short interval costs little.
    sys.setswitchinterval(0.0005)
    models = parse_model_args(model_args)
    app = create_app(models, settings)
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    console.print(f"serving {len(models)} model(s) ({', '.join(models)}) on http://{host}:{bound} "
                  f"(docs at /docs); Ctrl-C stops", soft_wrap=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
