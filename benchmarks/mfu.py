"""Model FLOP utilisation of the learner benchmark: achieved FLOP/s against the device's published peak.

Achieved FLOP/s = XLA's cost analysis of the compiled train step (FLOPs per step of the program each device
runs) / seconds per step. The peak is the dense bf16 or f32 figure of `sqlcli_core.accelerators.PEAKS` for the
device kind jax reports (sources in that table); a device not in the table gets no utilisation. On CPU there is
no published peak: the benchmark says so and reports against the matmul peak it measures, as before.
"""

from __future__ import annotations

from sqlcli_core.accelerators import peak_flops

DTYPES = {"f32": "float32", "bf16": "bfloat16"}  # the benchmark's names -> NetworkConfig.compute_dtype


def utilisation(flops_per_step: float | None, seconds_per_step: float, device_kind: str, dtype: str) -> dict:
    """{achieved_flops_per_s, peak_flops_per_s, peak_device, peak_basis, peak_source, mfu} of one device; the
    peak fields and mfu are None for a device without a published peak (CPUs) or a step without a FLOP count."""
    achieved = None if not flops_per_step else flops_per_step / seconds_per_step
    found = peak_flops(device_kind, dtype)
    if found is None:
        return {"achieved_flops_per_s": achieved, "peak_flops_per_s": None, "peak_device": None,
                "peak_basis": None, "peak_source": None, "mfu": None}
    peak, entry, basis = found
    return {"achieved_flops_per_s": achieved, "peak_flops_per_s": peak, "peak_device": entry.name,
            "peak_basis": basis, "peak_source": entry.source, "mfu": None if achieved is None else achieved / peak}


def describe(row: dict, matmul_peak: float | None) -> str:
    """The tail of a result line: achieved against the published peak, or against the measured matmul peak."""
    achieved = row.get("achieved_flops_per_s")
    if achieved is None:
        return "no FLOP count from XLA"
    if row.get("mfu") is not None:
        return (f"{achieved / 1e12:7.2f} TFLOP/s achieved = {100 * row['mfu']:5.1f}% MFU of {row['peak_device']}'s "
                f"{row['peak_flops_per_s'] / 1e12:.0f} TFLOP/s {row['peak_basis']}")
    against = "" if matmul_peak is None else f" vs {matmul_peak / 1e9:.1f} GFLOP/s matmul peak"
    return f"{achieved / 1e9:6.1f} GFLOP/s achieved{against}"
