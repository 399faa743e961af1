"""What ``stew reproduce`` runs: the jobs of a protocol (group x seed, plus the first seed's grid
candidates), their run-store keys, and the choice of a grid's best candidate on validation."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stew import methods
from stew.config import TrainConfig
from stew.data.io import data_fingerprint
from stew.errors import DataError
from stew.experiments.protocols import Protocol
from stew.experiments.store import RunStore, run_key
from stew.training.fitcache import FITS


@dataclass
class Job:
    name: str
    group: str
    seed: int
    candidate: str | None
    cfg: TrainConfig
    key: str
    missing: tuple[str, ...] = ()  # missing-modality evaluations (stew.experiments.protocols.GroupSpec.missing)


class Plan:
    """The protocol's runs, resolved against what the store already holds."""

    def __init__(
        self, protocol: Protocol, data: Path, out: Path, seeds: list[int], store: RunStore,
        tuned: dict[str, dict[str, Any]] | None = None, overrides: dict[str, Any] | None = None,
        only: list[str] | None = None,
    ) -> None:
        self.protocol, self.data, self.out, self.seeds, self.store = protocol, Path(data), Path(out), seeds, store
        self.fingerprint = data_fingerprint(self.data)
        self.groups = select_groups(protocol.expand_groups(), only)
        self.tuned, self.overrides = tuned or {}, overrides or {}
        self._resolved: dict[tuple[str, int], list[Job]] = {}
        # Grid candidates are fixed by the configuration alone (not by results), so the total is known now.
        self.grid = {g: self._candidates(g, seeds[0]) for g in self.groups}
        self.total = sum(len(seeds) - 1 + len(self.grid[g]) for g in self.groups)

    def _config(self, group: str, seed: int) -> TrainConfig:
        cfg = self.protocol.config(group, self.data, seed, self.out / "runs" / group / f"seed{seed}", self.overrides)
        if cfg.fit_cache is None:  # fits several runs share (CM-StEW's cross-fitted teachers of a seed) train once
            cfg = cfg.model_copy(update={"fit_cache": self.out / FITS})
        params = self.tuned.get(group)
        if params:
            from stew.experiments.tune import apply_params

            cfg = apply_params(cfg, params)
        return cfg

    def _candidates(self, group: str, seed: int) -> list[TrainConfig]:
        cfg = self._config(group, seed)
        return methods.get(cfg.method).candidates(cfg)

    def finished(self, group: str, seed: int) -> dict[str, Any] | None:
        """The store row that stands for (group, seed): the selected candidate on the first seed."""
        jobs = self._jobs_for(group, seed)
        if jobs is None:
            return None
        rows = [self.store.get(j.key) for j in jobs]
        if any(r is None for r in rows):
            return None
        return select(rows)

    def _jobs_for(self, group: str, seed: int) -> list[Job] | None:
        """The jobs of (group, seed), or None while a dependency is unfinished.

        Once resolved they never change (store rows are final), so they are worked out only once.
        """
        if (group, seed) not in self._resolved:
            jobs = self._resolve(group, seed)
            if jobs is None:
                return None
            self._resolved[group, seed] = jobs
        return self._resolved[group, seed]

    def _resolve(self, group: str, seed: int) -> list[Job] | None:
        cfg = self._config(group, seed)
        spec = self.groups[group][1]
        teacher_key = None
        if spec.teacher_run is not None:
            teacher = self.finished(spec.teacher_run, seed)
            if teacher is None:
                return None
            teacher_key = teacher["key"]
            cfg = cfg.model_copy(update={"cmstew": cfg.cmstew.model_copy(
                update={"teacher_run": self.store.run_dir(teacher)})})
        grid = self.grid[group]
        if len(grid) == 1:
            return [self._job(group, seed, None, _adopt(cfg, grid[0]), teacher_key)]
        if seed == self.seeds[0]:
            jobs = []
            for cand in grid:
                name = methods.get(cand.method).candidate_name(cand)
                c = _adopt(cfg, cand).model_copy(update={"out": Path(cfg.out) / name})
                jobs.append(self._job(group, seed, name, c, teacher_key))
            return jobs
        first = self.finished(group, self.seeds[0])
        if first is None:
            return None
        chosen = TrainConfig.model_validate(first["config"])
        return [self._job(group, seed, None, _adopt(cfg, chosen), teacher_key)]

    def _job(self, group: str, seed: int, candidate: str | None, cfg: TrainConfig, teacher_key: str | None) -> Job:
        name = f"{group}/seed{seed}" + (f"/{candidate}" if candidate else "")
        key = run_key(json.loads(cfg.model_dump_json()), self.fingerprint, teacher_key)
        return Job(name, group, seed, candidate, cfg, key, tuple(self.groups[group][1].missing))

    def _known(self) -> Iterator[tuple[Job, bool]]:
        """(job, whether the store holds it) for every job whose dependencies are done, in protocol order."""
        for g in self.groups:
            for s in self.seeds:
                for j in self._jobs_for(g, s) or []:
                    yield j, is_done(self.store.get(j.key), j)

    def ready(self) -> list[Job]:
        """Unfinished jobs whose dependencies are done, in protocol order (teachers first).

        With folds, fold by fold (stable, so teachers still come first within a fold): the workers'
        dataset cache then holds one fold at a time instead of reloading as folds alternate.
        """
        jobs = [j for j, done in self._known() if not done]
        return sorted(jobs, key=lambda j: j.cfg.fold or 0) if self.protocol.folds else jobs

    def selected(self) -> dict[str, dict[int, str]]:
        """group -> seed -> key of the finished row that stands for it (what tables and reports read)."""
        out: dict[str, dict[int, str]] = {}
        for g in self.groups:
            for s in self.seeds:
                row = self.finished(g, s)
                if row is not None:
                    out.setdefault(g, {})[s] = row["key"]
        return out

    def done_count(self) -> int:
        return sum(done for _, done in self._known())


def is_done(row: dict[str, Any] | None, job: Job) -> bool:
    """Whether a store row finishes ``job``: recorded, with every missing-modality evaluation it asks for."""
    return row is not None and all(m in (row["metrics"].get("missing") or {}) for m in job.missing)


def select_groups(groups: dict[str, Any], only: list[str] | None) -> dict[str, Any]:
    """The groups matching any ``only`` glob, plus the teachers they need (all groups without ``only``)."""
    if not only:
        return groups
    keep = {g for g in groups if any(fnmatch.fnmatchcase(g, pat) for pat in only)}
    if not keep:
        raise DataError(f"--only {' '.join(only)} matches no group; the groups are {list(groups)}")
    todo = list(keep)
    while todo:
        teacher = groups[todo.pop()][1].teacher_run
        if teacher is not None and teacher not in keep:
            keep.add(teacher)
            todo.append(teacher)
    return {g: v for g, v in groups.items() if g in keep}


def _adopt(cfg: TrainConfig, chosen: TrainConfig) -> TrainConfig:
    """``cfg`` with the values the chosen grid candidate fixed (its method's rule; none without a grid)."""
    adopt = methods.get(cfg.method).adopt
    return adopt(cfg, chosen) if adopt is not None else cfg


def select(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best validation row of a grid (first on ties, i.e. grid order); the only row otherwise."""
    if len(rows) == 1:
        return rows[0]
    key = rows[0]["metrics"]["selection"]["key"]
    return max(rows, key=lambda r: r["metrics"]["val"][key])
