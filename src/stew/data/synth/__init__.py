"""Synthetic data with known structure: RECOLA-like frames and MOSI-like utterances (``affect``), IEMOCAP
in the AMH fold layout (``iemocap``), a conflict corpus of talkers (``conflict``); docs/synthetic.md.

:func:`write_synthetic` is the one entry point of ``stew data synth``, the protocols' default data and
``stew.api.synth_data``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from stew.data.formats.native import write_native
from stew.data.formats.recola import write_recola_layout
from stew.data.synth.affect import RATE_HZ, synth_mosi, synth_recola
from stew.data.synth.conflict import write_synthetic_conflict
from stew.data.synth.iemocap import write_synthetic_iemocap
from stew.errors import DataError
from stew.util.atomic import check_output_folder

Kind = Literal["recola", "mosi", "iemocap", "conflict"]


def write_synthetic(
    kind: Kind, out: Path, *, seed: int = 0, speakers: int = 27, minutes: float = 5.0, videos: int = 93,
    utterances: int = 350, full_shapes: bool = False, clips: int = 240, clip_s: float = 30.0,
    fmt: str = "parquet", layout: Literal["native", "avec"] = "native",
) -> str:
    """Write a synthetic dataset of ``kind`` to ``out`` (deterministic per seed; ``out`` absent or empty)
    and return a one-line summary. The sizes that apply to ``kind`` are used, the others ignored;
    ``layout: avec`` writes RECOLA-like data in the AVEC 2016 layout instead of stew's own."""
    # The generators' own checks raise ValueError (a library contract); here they are options, so the
    # same conditions are one-line errors, checked before anything is written.
    if fmt not in ("parquet", "npz"):
        raise DataError(f"--format must be parquet or npz, not {fmt!r}")
    if kind == "recola" and speakers % 3:
        raise DataError(f"--speakers must be a multiple of 3 (train, dev and test get a third each), not {speakers}")
    if kind == "recola" and round(minutes * 60 * RATE_HZ) < 2:
        raise DataError(f"--minutes {minutes:g} gives fewer than 2 frames at {RATE_HZ:g} Hz")
    out = Path(out)
    check_output_folder(out)  # the writers' own check, made before the data are generated
    if kind == "conflict":
        write_synthetic_conflict(out, clips=clips, seed=seed, clip_s=clip_s)
        return f"wrote a synthetic conflict corpus: {clips} clips of {clip_s:g} s at 8 kHz -> {out}"
    if kind == "iemocap":
        write_synthetic_iemocap(out, utterances=utterances, seed=seed, full_shapes=full_shapes)
        return f"wrote synthetic IEMOCAP: {utterances} utterances, 5 folds (AMH layout) -> {out}"
    if kind == "recola":
        ds = synth_recola(seed, n_speakers=speakers, minutes=minutes)
    else:
        ds = synth_mosi(seed, n_videos=videos)
    if layout == "avec":
        write_recola_layout(ds, out)
    else:
        write_native(ds, out, fmt=fmt)
    return f"wrote {ds.name}: {len(ds.sequences)} sequences, {ds.n_steps()} steps, {ds.splits()} -> {out}"
