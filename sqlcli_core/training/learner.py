"""The offline learner's public face: one jitted, data-parallel update step for any registered method.

The learner lives in four modules, one per concern; this module gathers their public names so that
`from sqlcli_core.training import learner` keeps working:

    training/mesh.py      processes, devices, meshes, shardings, put_batch
    training/update.py    LearnerConfig (method + optimiser), TrainState, init, make_train_step
    training/loop.py      Prefetcher, summarize_metrics, fit
    training/pretrain.py  PretrainConfig and run_pretraining (the `sql pretrain` recipe)
"""

from __future__ import annotations

import jax  # noqa: F401  (tests reach jax through this module)

from sqlcli_core.training.loop import Prefetcher, fit, summarize_metrics
from sqlcli_core.training.mesh import (
    DATA_AXIS,
    batch_sharding,
    check_batch_size,
    init_distributed,
    make_mesh,
    put_batch,
    replicated,
)
from sqlcli_core.training.pretrain import PretrainConfig, run_pretraining
from sqlcli_core.training.update import (
    LearnerConfig,
    TrainState,
    abstract_train_state,
    init_params,
    init_train_state,
    make_optimizer,
    make_train_step,
)

__all__ = [
    "DATA_AXIS", "LearnerConfig", "Prefetcher", "PretrainConfig", "TrainState", "abstract_train_state",
    "batch_sharding", "check_batch_size", "fit", "init_distributed", "init_params", "init_train_state", "make_mesh",
    "make_optimizer", "make_train_step", "put_batch", "replicated", "run_pretraining", "summarize_metrics",
]
