"""What JAX runs on here: backend, devices and their memory, processes, the software stack, a one-step check.

`environment_report()` is what `sql env` prints. It also says when the operating system shows an accelerator
(an NVIDIA device node or `nvidia-smi`, a TPU's /dev/accel* or /dev/vfio) that JAX does not use: the usual
cause is a CPU-only `jaxlib` (`pip install jax` without the `cuda12` or `tpu` extra, docs/install.md).

`peak_flops(device_kind, dtype)` is the table of published dense peak FLOP/s that the learner benchmark divides
by (model FLOP utilisation).
"""

from __future__ import annotations

import glob
import os
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from sqlcli_core.errors import ResourceError
from sqlcli_core.provenance import package_versions

# Packages that decide which accelerator JAX can use (present or not, they explain a CPU-only install).
ACCELERATOR_PACKAGES = ("jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt", "libtpu",
                        "nvidia-cudnn-cu12", "nvidia-cublas-cu12")
# Environment variables that change which devices JAX sees or how many.
ENVIRONMENT_VARIABLES = ("JAX_PLATFORMS", "XLA_FLAGS", "CUDA_VISIBLE_DEVICES", "TPU_VISIBLE_CHIPS",
                         "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE")


def accelerators_seen_by_os() -> dict[str, list[str]]:
    """{"gpu": [...], "tpu": [...]}: device nodes and tools that show an accelerator to the operating system,
    whatever JAX does. An empty dict when there is none."""
    gpu = sorted(glob.glob("/dev/nvidia[0-9]*"))
    smi = shutil.which("nvidia-smi")
    if smi:
        gpu.append(smi)
    if os.path.exists("/dev/kfd"):  # AMD ROCm
        gpu.append("/dev/kfd")
    tpu = sorted(glob.glob("/dev/accel[0-9]*")) + sorted(p for p in glob.glob("/dev/vfio/[0-9]*"))
    return {kind: found for kind, found in (("gpu", gpu), ("tpu", tpu)) if found}


def _device_memory(device) -> int | None:
    """Bytes of memory JAX may use on the device (GPU/TPU report it; the CPU backend does not)."""
    try:
        stats = device.memory_stats()
    except Exception:  # backends without memory statistics raise (Unimplemented) or return None
        return None
    if not stats:
        return None
    limit = stats.get("bytes_limit") or stats.get("bytes_reservable_limit")
    return int(limit) if limit else None


def device_table(devices) -> list[dict[str, Any]]:
    return [{"id": d.id, "platform": d.platform, "kind": d.device_kind, "process_index": d.process_index,
             "memory_bytes": _device_memory(d)} for d in devices]


def stack_versions() -> dict[str, str]:
    """The versions every result file records, plus the accelerator plugins that are installed."""
    versions = package_versions()
    for name in ACCELERATOR_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def jitted_check() -> dict[str, Any]:
    """Compile and run one small jitted step on the default device and compare it with numpy's answer.

    The step is a (64, 64) matrix product of integers small enough to be exact in float32, so any device
    that computes at all must match to the last bit. Returns {device, ok, value, expected, compile_s, run_s}
    or {device, ok: False, error} when compiling or running fails."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    host = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) % 7
    expected = float((host @ host.T).sum() + host.shape[0])
    device = jax.devices()[0]

    def step(x):
        return (x @ x.T).sum() + x.shape[0]

    try:
        start = time.perf_counter()
        compiled = jax.jit(step).lower(jax.ShapeDtypeStruct(host.shape, jnp.float32)).compile()
        compiled_at = time.perf_counter()
        value = float(jax.device_get(compiled(jax.device_put(host, device))))
        ran_at = time.perf_counter()
    except Exception as exc:  # a broken driver or plugin fails here: that is what the check is for
        return {"device": str(device), "ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    return {"device": str(device), "ok": value == expected, "value": value, "expected": expected,
            "compile_s": round(compiled_at - start, 4), "run_s": round(ran_at - compiled_at, 4)}


def environment_report(*, check: bool = True) -> dict[str, Any]:
    """Everything `sql env` shows, as one JSON-serialisable object (keys in docs/install.md)."""
    import jax

    try:
        backend = jax.default_backend()
        devices = jax.devices()
    except Exception as exc:  # jax raises RuntimeError, or a bare AssertionError for a missing plugin
        asked = os.environ.get("JAX_PLATFORMS")
        detail = " ".join(str(exc).split())
        raise ResourceError(f"JAX could not start a backend{f' (JAX_PLATFORMS={asked})' if asked else ''}: "
                            f"{type(exc).__name__}{f': {detail}' if detail else ''}",
                            hint="install the accelerator build of jaxlib (pip install -e '.[cuda12]' or "
                            "'.[tpu]', docs/install.md), or unset JAX_PLATFORMS") from None
    seen = accelerators_seen_by_os()
    warnings = []
    if backend == "cpu" and seen:
        kinds = " and ".join(f"a {kind.upper()} ({', '.join(found[:3])})" for kind, found in seen.items())
        extra = "cuda12" if "gpu" in seen else "tpu"
        warnings.append(f"the operating system shows {kinds} but JAX runs on the CPU: install the accelerator "
                        f"build of jaxlib, pip install -e '.[{extra}]' (docs/install.md)")
    report = {
        "backend": backend,
        "devices": device_table(devices),
        "local_device_count": jax.local_device_count(),
        "device_count": jax.device_count(),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "host_cpus": os.cpu_count(),
        "accelerators_seen_by_os": seen,
        "environment": {name: os.environ[name] for name in ENVIRONMENT_VARIABLES if name in os.environ},
        "versions": stack_versions(),
        "check": jitted_check() if check else None,
        "warnings": warnings,
    }
    return report


# ---------------------------------------------------------------------------------------------------------
# Peak FLOP/s for model FLOP utilisation


@dataclass(frozen=True)
class DevicePeak:
    """Published dense (no sparsity) peak FLOP/s of one JAX device, per dtype, and where the numbers come from.

    f32 is plain IEEE float32 on the vector/CUDA cores (not TF32); None where the vendor publishes none (TPUs:
    their matrix units take bf16, and XLA runs float32 matmuls as bf16 passes by default)."""

    name: str
    bf16: float
    f32: float | None
    source: str


_H100 = "NVIDIA H100 Tensor Core GPU datasheet (dense: half the 'with sparsity' figures)"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet (dense)"
_A100 = "NVIDIA A100 Tensor Core GPU datasheet (dense)"
_TPU = "Google Cloud TPU system architecture pages, bf16 peak per chip"
# Matched against jax's `device.device_kind` (case-insensitive) in order, first match wins: the more specific
# first ("TPU v5 lite" is v5e, "TPU v5" is v5p). On TPU v2/v3 a JAX device is one of the chip's two
# TensorCores, so its peak is half the chip's; from v4 on a device is a chip.
PEAKS: tuple[tuple[tuple[str, ...], DevicePeak], ...] = (
    (("h100 pcie",), DevicePeak("NVIDIA H100 PCIe", 756e12, 51e12, _H100)),
    (("h100",), DevicePeak("NVIDIA H100 SXM", 989e12, 67e12, _H100)),
    (("h200",), DevicePeak("NVIDIA H200 SXM", 989e12, 67e12, _H200)),
    (("a100",), DevicePeak("NVIDIA A100 SXM/PCIe", 312e12, 19.5e12, _A100)),
    (("tpu v6 lite", "tpu v6e"), DevicePeak("TPU v6e (Trillium)", 918e12, None, _TPU)),
    (("tpu v5 lite", "tpu v5e"), DevicePeak("TPU v5e", 197e12, None, _TPU)),
    (("tpu v5",), DevicePeak("TPU v5p", 459e12, None, _TPU)),
    (("tpu v4",), DevicePeak("TPU v4", 275e12, None, _TPU)),
    (("tpu v3",), DevicePeak("TPU v3 (one TensorCore: half of 123 TFLOP/s per chip)", 61.5e12, None, _TPU)),
)


def peak_flops(device_kind: str, dtype: str) -> tuple[float, DevicePeak, str] | None:
    """(peak FLOP/s, table entry, what the peak is) for a device kind as jax names it and "bf16" or "f32";
    None for a device not in the table. Without a published f32 figure (TPUs) f32 is measured against the
    bf16 peak, and the third element says so."""
    if dtype not in ("bf16", "f32"):
        raise ValueError(f"dtype must be bf16 or f32, got {dtype!r}")
    kind = device_kind.lower()
    for keys, peak in PEAKS:
        if any(key in kind for key in keys):
            if dtype == "f32" and peak.f32 is not None:
                return peak.f32, peak, "f32 peak"
            if dtype == "f32":
                return peak.bf16, peak, "bf16 peak (no published f32 figure)"
            return peak.bf16, peak, "bf16 peak"
    return None
