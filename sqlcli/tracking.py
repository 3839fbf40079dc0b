"""Where the training commands send their metrics besides RUN/metrics.jsonl and RUN/tensorboard/: the
progress display and, with `--wandb PROJECT`, Weights & Biases (the optional `wandb` extra)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlcli_core.errors import UsageError
from sqlcli_core.runs.metrics import flatten, scalars

WANDB_INSTALL = "pip install 'scaled-ql[wandb]'"


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise UsageError("--wandb needs the wandb package, which is not installed",
                         hint=f"{WANDB_INSTALL}, or drop --wandb") from None
    return wandb


class WandbLog:
    """Forwards each metrics record's scalars to a W&B run (`<kind>/<column>`, as in TensorBoard).

    The W&B run id is derived from the run directory, so a resumed run continues the same W&B run. wandb is
    imported when this is made (a missing extra is a one-line error before any training) and the W&B run is
    started at the first record (wandb's own login, WANDB_MODE and WANDB_DIR settings apply).
    """

    def __init__(self, project: str, run_dir: str | Path, command: str, config: dict[str, Any]):
        self._wandb = _import_wandb()
        self.project, self.run_dir, self.command, self.config = project, Path(run_dir), command, config
        self._run = None

    def log(self, record: dict) -> None:
        if self._run is None:
            run_id = hashlib.sha1(str(self.run_dir.resolve()).encode()).hexdigest()[:16]
            self._run = self._wandb.init(project=self.project, name=self.run_dir.name, id=run_id, resume="allow",
                                         job_type=self.command, config={"command": self.command, **self.config})
        self._run.log(scalars(flatten(record)), step=int(record["step"]))

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def open_wandb(project: str | None, run_dir: str | Path, command: str, config: dict[str, Any]) -> WandbLog | None:
    """A WandbLog for `--wandb PROJECT`, None without the flag."""
    return None if not project else WandbLog(project, run_dir, command, config)
