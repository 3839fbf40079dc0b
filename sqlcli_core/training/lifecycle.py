"""One run lifecycle for the three training commands (pretrain, finetune-offline, finetune-online).

    validate settings -> check_resume_settings -> TrainingRun(...)    run.json written or checked, Orbax opened
      -> run.latest_step(): restore(abstract) or start_fresh()        metrics cut back to the checkpoint
      -> the command's own loop, calling run.log(record) and run.save(step, state, meta)
         (records go to RUN/metrics.jsonl and RUN/tensorboard/: training/metrics.py)
      -> run.wait() -> write_final_eval(...) for the fine-tuning commands -> run.close()

Each runner (training/pretrain.py, finetune_offline.py, finetune_online.py) reads as its recipe: what it
builds, what it feeds the loop; opening, resuming and closing the run directory are written here once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlcli_core.atomic import write_json
from sqlcli_core.errors import UsageError
from sqlcli_core.training import checkpoint
from sqlcli_core.training.metrics import MetricsLog


def settings_difference(had: Mapping[str, Any], wanted: Mapping[str, Any],
                        defaults: Mapping[str, Any] | None = None) -> list[str]:
    """Names of the settings that differ, comparing the keys both sides know.

    A key only one side has counts as equal when the other side's value is its default (`defaults`): a
    setting added by a newer version, left at its default, does not make an older run different.
    """
    defaults = defaults or {}
    diff = []
    for key in sorted(set(had) | set(wanted)):
        if key in had and key in wanted:
            if had[key] != wanted[key]:
                diff.append(key)
        elif key in defaults:
            value = had[key] if key in had else wanted[key]
            if value != defaults[key]:
                diff.append(key)
    return diff


def check_resume_settings(run_dir: str | Path, command: str, settings: Mapping[str, Any], source: str | None,
                          defaults: Mapping[str, Any] | None = None) -> None:
    """Refuse to continue a run directory written by another command or started with other settings.

    settings: what a resumed run must repeat (recorded in run.json under config.settings); source: the run
    it starts from (config.from). Nothing happens for a directory without run.json (a new run).
    """
    run_dir = Path(run_dir)
    if not (run_dir / checkpoint.RUN_FILE).exists():
        return
    previous = checkpoint.read_run(run_dir).get("config", {})
    if previous.get("command") != command:
        raise UsageError(f"run directory {run_dir} was not written by `sql {command}`", hint="pass a new --run-dir")
    diff = settings_difference(previous.get("settings") or {}, settings, defaults)
    if previous.get("from") != source:
        diff.append("from")
    if diff:
        raise UsageError(f"run directory {run_dir} was started with other settings ({', '.join(diff)})",
                         hint="repeat that run's options to resume it, or pass a new --run-dir")


class TrainingRun:
    """An open run directory: run.json written (or checked against the identity), an Orbax checkpointer, and
    the metrics (`MetricsLog`: metrics.jsonl and TensorBoard events). Only the primary process (`write=True`) writes run.json and metrics; all processes
    take part in saves (Orbax writes each array once).
    """

    def __init__(self, run_dir: str | Path, *, command: str, identity: dict, config: dict,
                 parameter_counts: dict, seed: int, checkpoint_every: int, keep: int, write: bool = True):
        self.run_dir = Path(run_dir)
        self.write = write
        self.record = checkpoint.prepare_run_dir(self.run_dir, identity=identity, config=config,
                                                 parameter_counts=parameter_counts, seed=seed, command=command,
                                                 write=write)
        self.checkpointer = checkpoint.Checkpointer(self.run_dir, identity, every=checkpoint_every, keep=keep)
        self.metrics = MetricsLog(self.run_dir, write=write)
        self.metrics_path = self.metrics.path

    def latest_step(self) -> int | None:
        return self.checkpointer.latest_step()

    def read_meta(self, step: int) -> dict:
        return self.checkpointer.read_meta(step)

    def restore(self, abstract_state: Any, step: int, *, metrics_step: int | None = None) -> tuple[Any, dict]:
        """(state, meta) of checkpoint `step`; metric lines past `metrics_step` (default: step) are dropped."""
        state, meta = self.checkpointer.restore(abstract_state, step)
        self.metrics.resume(step if metrics_step is None else metrics_step)
        return state, meta

    def start_fresh(self) -> None:
        """A run without a checkpoint: drop the metric lines of an attempt killed before its first save."""
        self.metrics.reset()

    def log(self, record: dict) -> dict:
        """Append a metrics record (flat columns, `kind` train unless given); returns the record as written."""
        return self.metrics.log(record)

    def save(self, step: int, state: Any, meta: Any, *, force: bool = False) -> bool:
        return self.checkpointer.save(step, state, meta, force=force)

    def wait(self) -> None:
        self.checkpointer.wait()

    def close(self) -> None:
        self.metrics.close()
        self.checkpointer.close()

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def final_eval_is_current(path: Path, key: str, value: int) -> bool:
    """Whether RUN/eval/final.json exists and was written for `finetune.<key> == value` (e.g. grad_steps)."""
    return path.exists() and json.loads(path.read_text()).get("finetune", {}).get(key) == value


def write_final_eval(path: Path, *, command: str, run_config: dict, seed: int, eval_config, results,
                     run_dir: Path, step: int, arch: str, num_params: int, finetune: dict) -> dict:
    """RUN/eval/final.json: the eval result schema (docs/architecture.md) plus the fine-tuning block."""
    from sqlcli_core.evaluation import evaluate as evaluation
    from sqlcli_core.provenance import provenance

    result = {
        "provenance": provenance(command, {**run_config, "eval": eval_config.play_settings()}, seed),
        "protocol": evaluation.protocol_block(eval_config),
        "policy": {"kind": "checkpoint", "run": str(Path(run_dir).absolute()), "step": step, "arch": arch,
                   "num_params": int(num_params)},
        **evaluation.summarize(results, eval_config),
        "finetune": finetune,
    }
    write_json(path, result)
    return result
