"""Scaling report: score against parameter count across run directories, with power-law fits.

Each run directory (docs/architecture.md) gives one point: its parameter count (RUN/run.json) and one
aggregate of one eval result file (RUN/eval/*.json). Points are grouped (by default by method and data
composition) and each group is fitted with `score = a * params ** b` by least squares on
`log(score) = log(a) + b * log(params)`, with a pairs-bootstrap percentile interval on `b` (and `a`).

Decisions (documented in docs/scale-report.md):
- Log-log needs positive scores. Points with a score <= 0 (tiny runs can score below random) are left
  out of the fit, named in the result with the reason, and still plotted.
- When every kept point has the same score, the sizes could not be told apart: the group is reported as
  `indistinguishable`, with no fit (a line through identical points would give b = 0 and a zero-width
  interval, which is no finding).
- A fit needs at least 2 distinct parameter counts among the kept points. With exactly 2 points the line
  passes through both and there is no scatter to resample: the fit is reported as `exact` with no
  interval. From 3 points on, the interval comes from the bootstrap.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sqlcli_core.analysis.power_law import bootstrap_power_law, fit_log_log
from sqlcli_core.errors import DataError, SourceUnavailable, SqlError, SqlWarning, UsageError
from sqlcli_core.evaluation import result_file
from sqlcli_core.ranges import format_ranges

METRICS = ("iqm", "median", "mean")
# Which parameters the x axis counts. The heads grow with the number of games, not with the model (about
# 26M of every atari40 model), so `shared` and `torso` show the scaling of the part that is transferred.
PARAM_COUNTS = {
    "total": "all parameters (torso, spatial embedding, projection, heads)",
    "shared": "all but the per-game heads (torso, spatial embedding, projection)",
    "torso": "the torso alone",
}
GROUP_FIELDS = ("method", "composition", "family", "arch")
DEFAULT_GROUP_BY = ("method", "composition")
OUTPUT_STEM = "scale_report"

# Where run.json keeps each field: first the layout `sql pretrain` writes (checkpoint.prepare_run_dir with
# learner.PretrainConfig.to_dict() as config), then the flatter names of docs/architecture.md's contract.
_ARCH_KEYS = ("identity.network.arch", "config.network.arch", "config.arch")
_WIDTH_KEYS = ("identity.network.width", "config.network.width", "config.width")
_METHOD_KEYS = ("identity.method", "config.learner.method", "config.method")
_ALPHA_KEYS = ("config.learner.method_config.alpha", "config.learner.alpha", "config.alpha")  # new, 0.2, flat
_COMPOSITION_KEYS = ("config.data_composition", "config.composition", "config.data.composition")
_STORE_KEYS = ("config.data", "config.data.store", "config.data_store")
_GAMES_KEYS = ("identity.games", "config.games")
_PARAM_KEYS = ("parameter_counts", "num_parameters")


@dataclasses.dataclass(frozen=True)
class RunPoint:
    """One run's coordinates in the scaling plot."""

    run: str                      # the run directory as given
    name: str                     # its base name, the label in tables
    arch: str
    width: float | None
    family: str                   # arch without its size digits: resnet101 -> resnet
    method: str
    composition: str              # sub-optimal, near-optimal, "checkpoints 0-4", ... or unknown
    composition_source: str       # run.json, store (read from the Zarr store's checkpoint records) or none
    data_store: str | None
    num_games: int | None
    params: int                   # the parameter count on the x axis (`param_count` of them)
    param_count: str              # which: total, shared or torso (PARAM_COUNTS)
    param_parts: dict[str, int]   # torso, spatial_embedding, projection, heads (when run.json has them)
    eval_file: str
    eval_created: str | None
    eval_step: int | None
    metric: str
    score: float                  # aggregates[metric].value of the eval file (human-normalized)
    ci_low: float | None
    ci_high: float | None
    eval_games: tuple[str, ...]   # the games inside the eval's aggregates
    eval_deviates: bool           # the eval deviated from its protocol (e.g. capped episodes)

    def group_key(self, group_by: Sequence[str]) -> tuple[str, ...]:
        return tuple(str(getattr(self, f)) for f in group_by)


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """The fit of one group. `status`: `fit` (with interval), `exact` (2 points, no interval),
    `indistinguishable` (every size scored the same: no fit), `none`."""

    group: dict[str, str]
    status: str
    n_points: int                          # points in the group, kept or not
    used: tuple[str, ...]                  # run names in the fit (empty when status is `none`)
    left_out: tuple[tuple[str, str], ...]  # (run name, reason)
    a: float | None = None
    b: float | None = None
    a_ci95: tuple[float, float] | None = None
    b_ci95: tuple[float, float] | None = None
    r2_log: float | None = None            # coefficient of determination in log-log space
    n_bootstrap: int = 0                   # resamples that gave a slope (degenerate ones are dropped)
    note: str = ""

    @property
    def label(self) -> str:
        return ", ".join(self.group.values()) or "all runs"


# ---------------------------------------------------------------------------------------------------
# Reading run directories


def _lookup(tree: Mapping[str, Any], paths: Iterable[str]) -> Any:
    """The value at the first dotted path that exists and is not None, else None."""
    for path in paths:
        node: Any = tree
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None:
            return node
    return None


def _read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no {what}", hint=fix) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: {what} is not valid JSON ({exc})", hint=fix) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: {what} is not a JSON object", hint=fix)
    return obj


def arch_family(arch: str) -> str:
    """The architecture family: the name without its size suffix (resnet101 -> resnet, impala-cnn-4x -> impala-cnn,
    dt-40m -> dt)."""
    family = re.sub(r"[-_]?(\d+[xm]?|x\d+)$", "", arch.lower())
    return family or arch.lower()


def total_parameters(counts: Any) -> tuple[int, dict[str, int]] | None:
    """(total, parts) from a run's parameter counts: an int, or a dict of parts with or without `total`."""
    if isinstance(counts, bool):
        return None
    if isinstance(counts, (int, float)) and counts > 0:
        return int(counts), {}
    if isinstance(counts, Mapping):
        parts = {k: int(v) for k, v in counts.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "total"}
        total = counts.get("total")
        if isinstance(total, (int, float)) and not isinstance(total, bool) and total > 0:
            return int(total), parts
        if parts and sum(parts.values()) > 0:
            return sum(parts.values()), parts
    return None


def select_parameters(total: int, parts: Mapping[str, int], param_count: str, run_path: Path
                      ) -> tuple[int, dict[str, int]]:
    """(count on the x axis, parts) for `param_count` in PARAM_COUNTS."""
    if param_count == "total":
        return total, dict(parts)
    need = "heads" if param_count == "shared" else "torso"
    if need not in parts:
        raise DataError(f"{run_path}: run.json has no per-part parameter counts (no '{need}')",
                        hint="use --params total, or re-create the run with a current `sql pretrain`")
    count = total - parts["heads"] if param_count == "shared" else parts["torso"]
    return int(count), dict(parts)


def _eval_sort_key(path: Path, created: str | None) -> tuple[float, float, str]:
    """Newest first by provenance.created (survives copies), then file mtime, then name."""
    stamp = -math.inf
    if created:
        try:
            when = _dt.datetime.fromisoformat(created)
            if when.tzinfo is None:
                when = when.replace(tzinfo=_dt.UTC)
            stamp = when.timestamp()
        except ValueError:
            pass
    return (stamp, path.stat().st_mtime, path.name)


def eval_files(run_dir: Path) -> list[Path]:
    """The run's eval result files, RUN/eval/*.json, sorted by name."""
    folder = run_dir / "eval"
    return sorted(p for p in folder.glob("*.json") if p.is_file()) if folder.is_dir() else []


def choose_eval_file(run_dir: Path, eval_name: str | None) -> tuple[Path, dict[str, Any]]:
    """The eval file of `run_dir` named `eval_name` (stem or file name), or the newest one."""
    files = eval_files(run_dir)
    if not files:
        raise DataError(f"{run_dir}: no eval results (no {run_dir / 'eval'}/*.json)",
                        hint=f"run `sql eval {run_dir}` first, or leave this run out")
    if eval_name is not None:
        wanted = eval_name if eval_name.endswith(".json") else f"{eval_name}.json"
        match = [p for p in files if p.name == wanted]
        if not match:
            names = ", ".join(p.stem for p in files)
            raise DataError(f"{run_dir}: no eval result named {eval_name!r}",
                            hint=f"--eval-name takes one of: {names}")
        path = match[0]
        return path, _read_json(path, "eval result", f"re-run `sql eval {run_dir}`")
    loaded = [(p, _read_json(p, "eval result", f"re-run `sql eval {run_dir}` or delete {p}")) for p in files]
    return max(loaded, key=lambda pe: _eval_sort_key(pe[0], _lookup(pe[1], ("provenance.created",))))


@functools.lru_cache(maxsize=64)
def composition_from_store(store_path: str, games: tuple[str, ...] | None) -> str | None:
    """The data composition of a Zarr store for `games`, from the checkpoints its runs hold.

    All DQN-Replay checkpoints held for those games, pooled: exactly fetch's `sub-optimal` or `near-optimal`
    set gives that name; any other set is named by its checkpoints ("checkpoints 0-4"). None when the
    store cannot be read here (e.g. the runs were copied to another machine without it).
    """
    from sqlcli_core.data import fetch, store

    try:
        root = store.open_store(store_path)
        held = {int(record["checkpoint"])
                for _, _, group in store.iter_runs(root, set(games) if games else None)
                for record in store.run_meta(group).get("checkpoints", [])}
    except (UsageError, SourceUnavailable) as exc:  # a missing bucket, an unreachable store: say which
        warnings.warn(f"data composition unknown: {exc}", SqlWarning, stacklevel=2)
        return None
    except (SqlError, OSError, KeyError, TypeError, ValueError):
        return None
    if not held:
        return None
    for name, subset in fetch.SUBSETS.items():
        if held == set(subset):
            return name
    return f"checkpoints {format_ranges(held)}"


def _method_of(run: Mapping[str, Any]) -> str:
    method = _lookup(run, _METHOD_KEYS)
    if method and method != "scaled-ql":  # scaled-ql runs are told apart by their CQL weight below
        return str(method)
    alpha = _lookup(run, _ALPHA_KEYS)
    # Runs that differ in the CQL weight are different methods for the purpose of a scaling fit.
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        return f"scaled-ql(alpha={alpha:g})"
    return "scaled-ql"


def load_run_point(run_dir: str | Path, metric: str = "iqm", eval_name: str | None = None,
                   param_count: str = "total") -> RunPoint:
    """Read one run directory into a `RunPoint` (raises DataError naming the file and the fix)."""
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}", hint=f"--metric takes one of: {', '.join(METRICS)}")
    run_path = Path(run_dir)
    if not run_path.is_dir():
        raise UsageError(f"{run_path}: not a directory", hint="pass run directories made by `sql pretrain`")
    run = _read_json(run_path / "run.json", "run.json",
                     "pass run directories made by `sql pretrain` (RUN/run.json)")
    eval_path, ev = choose_eval_file(run_path, eval_name)
    if not isinstance(ev.get("provenance"), Mapping):
        raise DataError(f"{eval_path}: no provenance block, so not a result file of `sql eval`",
                        hint=f"re-run `sql eval {run_dir}`, or remove that file from {run_path / 'eval'}")

    # A malformed aggregate is exit 3 naming the key (never a point without its error bar).
    value, (ci_low, ci_high) = _checked_aggregate(ev, eval_path, metric, run_dir)

    counted = total_parameters(_lookup(run, _PARAM_KEYS)) or total_parameters(
        _lookup(ev, ("policy.num_params",)))
    if counted is None:
        raise DataError(f"{run_path}: run.json has no parameter counts",
                        hint="re-create the run with a current `sql pretrain`")
    params, parts = select_parameters(*counted, param_count, run_path)

    arch = _lookup(run, _ARCH_KEYS) or _lookup(ev, ("policy.arch",))
    if not arch:
        raise DataError(f"{run_path / 'run.json'}: no architecture (config.arch)",
                        hint="re-create the run with a current `sql pretrain`")
    width = _lookup(run, _WIDTH_KEYS)
    games = _lookup(run, _GAMES_KEYS)
    games = list(games) if isinstance(games, Sequence) and not isinstance(games, str) else None
    step = _lookup(ev, ("policy.step",))
    store_path = next((v for k in _STORE_KEYS if isinstance(v := _lookup(run, (k,)), str)), None)
    composition, source = _lookup(run, _COMPOSITION_KEYS), "run.json"
    if not composition and store_path:
        composition, source = composition_from_store(store_path, tuple(games) if games else None), "store"
    if not composition:
        composition, source = "unknown", "none"
    agg_games = _lookup(ev, ("aggregate_method.games",))
    if not isinstance(agg_games, Sequence) or isinstance(agg_games, str):
        agg_games = [g for g, b in (ev.get("games") or {}).items()
                     if isinstance(b, Mapping) and b.get("human_normalized") is not None]
    return RunPoint(
        run=str(run_dir), name=run_path.resolve().name, arch=str(arch),
        width=float(width) if isinstance(width, (int, float)) and not isinstance(width, bool) else None,
        family=arch_family(str(arch)), method=_method_of(run),
        composition=str(composition), composition_source=source, data_store=store_path,
        num_games=len(games) if games is not None else None,
        params=params, param_count=param_count, param_parts=parts, eval_file=str(eval_path),
        eval_created=_lookup(ev, ("provenance.created",)),
        eval_step=int(step) if isinstance(step, int) else None,
        metric=metric, score=float(value), ci_low=ci_low, ci_high=ci_high,
        eval_games=tuple(sorted(str(g) for g in agg_games)),
        eval_deviates=bool(_lookup(ev, ("protocol.deviates_from_protocol",))),
    )


def _checked_aggregate(ev: Mapping[str, Any], eval_path: Path, metric: str, run_dir) -> tuple[float, tuple]:
    value, ci = result_file.aggregate(ev, eval_path, metric, hint=f"re-run `sql eval {run_dir}`, or remove "
                                      f"{eval_path.name} from {Path(run_dir) / 'eval'}")
    if value is None:
        raise DataError(f"{eval_path}: no human-normalized {metric} (aggregates.{metric})",
                        hint="evaluate on games with human reference scores, or pick another --eval-name")
    return value, ci


def _shorten(names: Sequence[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def gather(run_dirs: Sequence[str | Path], metric: str = "iqm", eval_name: str | None = None,
           param_count: str = "total") -> list[RunPoint]:
    """Load every run; runs without eval results are reported together in one error."""
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}", hint=f"--metric takes one of: {', '.join(METRICS)}")
    if param_count not in PARAM_COUNTS:
        raise UsageError(f"unknown parameter count {param_count!r}",
                         hint=f"--params takes one of: {', '.join(PARAM_COUNTS)}")
    if not run_dirs:
        raise UsageError("no run directories given", hint="pass the run directories of `sql pretrain`")
    seen: set[Path] = set()
    unique = []
    for d in run_dirs:
        key = Path(d).resolve()
        if key not in seen:
            seen.add(key)
            unique.append(d)
    for d in unique:
        if not Path(d).is_dir():
            raise UsageError(f"{d}: not a directory", hint="pass run directories made by `sql pretrain`")
    not_runs = [str(d) for d in unique if not (Path(d) / "run.json").is_file()]
    if not_runs:
        raise DataError(f"not run directories (no run.json): {_shorten(not_runs)}",
                        hint="pass run directories made by `sql pretrain`, e.g. runs/*/ without other folders")
    missing = [str(d) for d in unique if not eval_files(Path(d))]
    if missing:
        raise DataError(f"no eval results in {_shorten(missing)}",
                        hint="run `sql eval RUN` on each (writes RUN/eval/*.json), or leave them out")
    points = [load_run_point(d, metric, eval_name, param_count) for d in unique]
    # Base names label the runs; where two runs share one (sweep1/r18, sweep2/r18) use the path given.
    clash = {p.name for p in points if sum(q.name == p.name for q in points) > 1}
    return [dataclasses.replace(p, name=p.run) if p.name in clash else p for p in points]


# ---------------------------------------------------------------------------------------------------
# Fitting


def fit_group(group: dict[str, str], points: Sequence[RunPoint], n_bootstrap: int = 10_000,
              seed: int = 0) -> PowerLawFit:
    """Fit one group's points: leave out non-positive scores, then fit, then bootstrap when N >= 3."""
    left_out = tuple((p.name, f"score {p.score:.4g} <= 0: log-log needs positive scores")
                     for p in points if p.score <= 0)
    kept = [p for p in points if p.score > 0]
    base = dict(group=group, n_points=len(points), used=tuple(p.name for p in kept), left_out=left_out)
    distinct = len({p.params for p in kept})
    if distinct < 2:
        why = ("no point with a positive score" if not kept else
               f"{len(kept)} point(s) with a positive score but {distinct} distinct parameter count")
        return PowerLawFit(status="none", note=f"no fit: {why}; a fit needs 2 distinct parameter counts",
                           **{**base, "used": ()})
    params = np.array([p.params for p in kept], float)
    scores = np.array([p.score for p in kept], float)
    if np.ptp(scores) <= 1e-9 * np.max(np.abs(scores)):
        # A line through equal scores has b = 0 up to rounding (8.8e-18) and a zero-width interval: that is no
        # finding about size, so no fit is reported.
        return PowerLawFit(status="indistinguishable",
                           note=f"every size scored {scores[0]:.4g}: the sizes could not be told apart (no fit)",
                           **base)
    a, b, r2 = fit_log_log(params, scores)
    if len(kept) == 2:
        return PowerLawFit(status="exact", a=a, b=b, r2_log=r2,
                           note="2 points: the line passes through both; no interval (needs 3 or more)",
                           **base)
    a_ci, b_ci, used = bootstrap_power_law(params, scores, n_bootstrap, seed)
    return PowerLawFit(status="fit", a=a, b=b, r2_log=r2, a_ci95=a_ci, b_ci95=b_ci, n_bootstrap=used, **base)


def consistency_notes(points: Sequence[RunPoint], group_by: Sequence[str]) -> list[str]:
    """Warnings about points that should not be compared as they stand: one line each."""
    notes = []
    groups: dict[tuple[str, ...], list[RunPoint]] = {}
    for p in points:
        groups.setdefault(p.group_key(group_by), []).append(p)
    for key, members in groups.items():
        game_sets = {p.eval_games for p in members}
        if len(game_sets) > 1:
            sizes = ", ".join(f"{p.name}: {len(p.eval_games)} games" for p in members)
            notes.append(f"{', '.join(key)}: the evals aggregate different games ({sizes}); their scores are "
                         f"not comparable: evaluate every run on the same --games")
    for p in points:
        if p.eval_deviates:
            notes.append(f"{p.name}: {Path(p.eval_file).name} deviates from its eval protocol (see its notes)")
        if p.composition_source == "none":
            where = f"store {p.data_store} not readable here" if p.data_store else "no data store in run.json"
            notes.append(f"{p.name}: data composition unknown ({where}); grouped as 'unknown'")
    return notes


def parse_group_by(text: str | Sequence[str]) -> tuple[str, ...]:
    """`method,composition` -> ('method', 'composition'); checks the names against GROUP_FIELDS."""
    fields = tuple(f.strip() for f in (text.split(",") if isinstance(text, str) else text) if f.strip())
    bad = [f for f in fields if f not in GROUP_FIELDS]
    if bad or len(set(fields)) != len(fields):
        raise UsageError(f"bad --group-by {','.join(fields) or text!r}",
                         hint=f"a comma-separated list of distinct names from: {', '.join(GROUP_FIELDS)}")
    return fields


def fit_all(points: Sequence[RunPoint], group_by: Sequence[str] = DEFAULT_GROUP_BY, n_bootstrap: int = 10_000,
            seed: int = 0) -> list[PowerLawFit]:
    """One fit per group (groups in order of first appearance). Raises UsageError if no group can be fit."""
    if n_bootstrap < 100:
        raise UsageError(f"--bootstrap {n_bootstrap} is too few resamples", hint="use 100 or more (default 10000)")
    groups: dict[tuple[str, ...], list[RunPoint]] = {}
    for p in points:
        groups.setdefault(p.group_key(group_by), []).append(p)
    fits = [fit_group(dict(zip(group_by, key)), members, n_bootstrap, seed) for key, members in groups.items()]
    if all(f.status == "none" for f in fits):
        detail = "; ".join(f"{f.label}: {f.note.removeprefix('no fit: ')}" for f in fits)
        raise UsageError(f"too few points to fit a power law ({detail})",
                         hint="give at least 2 runs of different sizes with positive scores in one group "
                              "(3 or more for an interval on the exponent)")
    return fits


# ---------------------------------------------------------------------------------------------------
# Writing the report

















