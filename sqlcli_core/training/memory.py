"""Memory a training run will hold, estimated before anything is allocated, and refused when it cannot fit.

A batch too large for the machine used to end, a minute in, in a numpy MemoryError traceback from the
sampler's thread (or XLA's RESOURCE_EXHAUSTED on a device), with the run directory left behind. The runners
call `check_fits(estimate)` before building the sampler or opening the run directory: a run that cannot fit
is a ResourceError (exit 5) with the numbers, and nothing is created. The estimate counts what scales with
the settings (batches in flight, the sampler's frame cache); the network's parameters and XLA's workspace
come on top, so a run that passes can still run out, which the CLI then reports as exit 5 too
(`errors.memory_error`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from sqlcli_core.data.replay_format import FRAME_SHAPE
from sqlcli_core.errors import ResourceError

FRAME_BYTES = FRAME_SHAPE[0] * FRAME_SHAPE[1]
STACK = 4  # frames per transition state
# Bytes of one sample of each batch kind (data.batch.TransitionBatch, data.sequences.SequenceBatch).
TRANSITION_SAMPLE_BYTES = 2 * STACK * FRAME_BYTES + 5 * 4  # state, next_state; game, action, reward, done, steps


def sequence_sample_bytes(window: int) -> int:
    """One SequenceBatch window: a frame, an action and four float32 columns per step, plus the game id."""
    return window * (FRAME_BYTES + 4 + 4 * 4) + 4


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run holds on the host and (per device) on the accelerators; `parts` name where they go."""

    host_parts: Mapping[str, int]
    device_parts: Mapping[str, int]

    @property
    def host(self) -> int:
        return int(sum(self.host_parts.values()))

    @property
    def device(self) -> int:
        return int(sum(self.device_parts.values()))


def training_estimate(*, local_batch: int, sample_bytes: int, cache_bytes: int, host_batches: int,
                      device_batches: int, devices: int) -> MemoryEstimate:
    """The estimate of a sampler-fed run: `host_batches` batches being built or queued on the host, the
    sampler's cache, and `device_batches` batches queued on the devices (each device holds its share)."""
    batch = local_batch * sample_bytes
    per_device = -(-local_batch // max(1, devices)) * sample_bytes
    return MemoryEstimate(
        host_parts={f"{host_batches} batches of {local_batch:,} samples": host_batches * batch, "sampler cache": cache_bytes},
        device_parts={f"{device_batches} batches (one device's share)": device_batches * per_device})


def available_host_bytes() -> int | None:
    """Memory the kernel can give this process now without swapping (Linux MemAvailable; elsewhere the free
    physical pages), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def device_bytes_limit() -> int | None:
    """The memory XLA may use on the first local device, where JAX reports it (GPUs, TPUs); None on CPU."""
    try:
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 - a backend without memory statistics
        return None
    limit = stats.get("bytes_limit")
    return int(limit) if limit else None


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"


def check_fits(estimate: MemoryEstimate, *, hint: str, host_available: int | None = None,
               device_limit: int | None = None) -> None:
    """Refuse (ResourceError, exit 5) a run whose estimate exceeds the memory available, with the numbers.

    host_available / device_limit: the machine's (measured when None); unknown limits are not checked."""
    host_available = available_host_bytes() if host_available is None else host_available
    if host_available is not None and estimate.host > host_available:
        raise ResourceError(f"this run needs about {human_bytes(estimate.host)} of host memory "
                            f"({_parts(estimate.host_parts)}), more than the {human_bytes(host_available)} available",
                            hint=hint)
    device_limit = device_bytes_limit() if device_limit is None else device_limit
    if device_limit is not None and estimate.device > device_limit:
        raise ResourceError(f"this run's batches need about {human_bytes(estimate.device)} of device memory "
                            f"({_parts(estimate.device_parts)}), more than the device's {human_bytes(device_limit)}",
                            hint=hint)


def _parts(parts: Mapping[str, int]) -> str:
    return ", ".join(f"{name}: {human_bytes(n)}" for name, n in parts.items())
