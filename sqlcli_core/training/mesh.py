"""Processes, devices and meshes of the data-parallel learner.

Data parallelism is expressed with `jax.sharding` only: a 1-D device mesh with the axis 'data' spans every
device of every process; batches are split along their leading axis over it and the train state is
replicated. XLA then inserts the all-reduce of the gradients (the loss is a batch mean), so one code path
serves 1 CPU device, 4 forced host devices, and many hosts joined by `jax.distributed`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sqlcli_core.errors import UsageError

DATA_AXIS = "data"



def init_distributed(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
    """Join a multi-process JAX job; returns True when running with more than one process.

    Arguments left None are read from SQL_COORDINATOR / SQL_NUM_PROCESSES / SQL_PROCESS_ID, then from
    JAX's own JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID. With none of them set this is a
    single-process run and nothing is initialised. Must run before any other JAX call.
    """
    env = os.environ
    coordinator = coordinator or env.get("SQL_COORDINATOR") or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None:
        num_processes = _env_int("SQL_NUM_PROCESSES") or _env_int("JAX_NUM_PROCESSES")
    if process_id is None:
        process_id = _env_int("SQL_PROCESS_ID")
        if process_id is None:
            process_id = _env_int("JAX_PROCESS_ID")
    if coordinator is None and (num_processes or 1) == 1:
        return False
    if coordinator is None or num_processes is None or process_id is None:
        raise UsageError(
            "a multi-process run needs the coordinator address, the number of processes and this process's id",
            hint="pass --coordinator HOST:PORT --num-processes N --process-id I (or set SQL_COORDINATOR, ...)",
        )
    if not 0 <= process_id < num_processes:
        raise UsageError(f"--process-id {process_id} is outside 0..{num_processes - 1}", hint="ids count from 0")
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    # CPU devices of different processes talk through gloo; without it cross-process reductions fail.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return jax.process_count() > 1


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not an integer", hint="unset it or fix it") from None


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named 'data' over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of the train state: a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batch arrays: the leading (batch) axis split over the 'data' axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh) -> int:
    """Validate that `global_batch` splits evenly over devices and processes; return the per-process batch."""
    devices = mesh.devices.size
    processes = jax.process_count()
    if global_batch < 1 or global_batch % devices:
        raise UsageError(
            f"batch size {global_batch} does not divide over {devices} devices",
            hint=f"use a multiple of {devices}, e.g. {max(devices, (global_batch // devices) * devices or devices)}",
        )
    if global_batch % processes:
        raise UsageError(f"batch size {global_batch} does not divide over {processes} processes",
                         hint=f"use a multiple of {processes}")
    return global_batch // processes


def put_batch(batch: Any, sharding: NamedSharding) -> Any:
    """Place this process's rows of a batch on its devices as slices of one global array per field.

    batch: any pytree of (B_local, ...) host arrays (a `TransitionBatch`, a method's own batch type).
    With one process the rows are the whole batch; with P processes each contributes B / P rows, in
    process order, and the result is the (B, ...) global batch of the same type.
    """
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
