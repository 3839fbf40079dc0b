"""The learner benchmark's model FLOP utilisation: the peak lookup and ratio (accelerator kinds as jax names
them), and the CPU path run for real (no accelerator named, the matmul peak as baseline, a profiler trace)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.mfu import describe, utilisation

ROOT = Path(__file__).resolve().parents[1]


def test_utilisation_against_published_peaks():
    h100 = utilisation(2e12, 0.01, "NVIDIA H100 80GB HBM3", "bf16")  # 2 TFLOP per step, 100 steps/s
    assert h100["achieved_flops_per_s"] == pytest.approx(2e14)
    assert h100["mfu"] == pytest.approx(2e14 / 989e12) and h100["peak_device"] == "NVIDIA H100 SXM"
    assert "20.2% MFU of NVIDIA H100 SXM's 989 TFLOP/s bf16 peak" in describe(h100, None)
    a100 = utilisation(1e12, 0.5, "NVIDIA A100-SXM4-40GB", "f32")
    assert a100["mfu"] == pytest.approx(2e12 / 19.5e12) and a100["peak_basis"] == "f32 peak"
    tpu = utilisation(1e12, 0.01, "TPU v4", "f32")
    assert tpu["peak_flops_per_s"] == 275e12 and "no published f32" in tpu["peak_basis"]
    cpu = utilisation(1e9, 0.1, "cpu", "f32")
    assert cpu["mfu"] is None and cpu["peak_flops_per_s"] is None and cpu["achieved_flops_per_s"] == 1e10
    assert describe(cpu, 40e9) == "  10.0 GFLOP/s achieved vs 40.0 GFLOP/s matmul peak"
    assert describe(utilisation(None, 0.1, "TPU v4", "bf16"), None) == "no FLOP count from XLA"


@pytest.mark.slow
def test_cpu_run_names_no_accelerator_and_writes_a_profile(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_learner", "--configs", "dqn:0.25:8", "--steps", "2",
                           "--rows", "600", "--profile", str(tmp_path / "trace"), "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("no accelerator (JAX runs on the CPU)")
    summary = json.loads(lines[-1])
    assert summary["accelerator"] is False and summary["matmul_peak_flops_per_s"] > 0
    (row,) = summary["results"]
    assert row["dtype"] == "f32" and row["device_kind"] == "cpu" and row["mfu"] is None
    assert row["flops_per_step"] > 0  # XLA's cost analysis
    assert row["achieved_flops_per_s"] == pytest.approx(row["flops_per_step"] * row["compute_steps_per_s"])
    assert "GFLOP/s achieved vs" in lines[1] and "matmul peak" in lines[1]
    assert list((tmp_path / "trace" / "dqn-w0.25-b8-f32").rglob("*.xplane.pb"))  # what TensorBoard's profiler opens
