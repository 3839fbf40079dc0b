"""`sql env` on the real CPU backend (devices forced to 2 in a subprocess), its GPU-without-JAX warning, and the
peak table that the learner benchmark divides by."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest

from sqlcli_core.accelerators import PEAKS, peak_flops


def sql_env(*args, extra_env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "sqlcli.main", "env", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_env_reports_forced_host_devices_and_a_correct_check():
    proc = sql_env("--json", extra_env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # one object on stdout, the table on stderr
    assert report["backend"] == "cpu"
    assert [d["id"] for d in report["devices"]] == [0, 1]
    assert {d["platform"] for d in report["devices"]} == {"cpu"}
    assert report["local_device_count"] == report["device_count"] == 2
    assert report["process_count"] == 1 and report["process_index"] == 0
    assert report["versions"]["jax"] == metadata.version("jax")
    assert report["environment"]["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
    host = np.arange(64 * 64, dtype=np.float64).reshape(64, 64) % 7  # the check's answer, in float64 here
    check = report["check"]
    assert check["ok"] is True and check["device"] == "cpu:0"
    assert check["value"] == check["expected"] == (host @ host.T).sum() + 64
    assert "2 here, 2 in all" in proc.stderr and "check on cpu:0: ok" in proc.stderr


def test_env_warns_when_the_os_shows_a_gpu_that_jax_does_not_use(tmp_path):
    fake = tmp_path / "nvidia-smi"  # what a GPU machine has on PATH, whatever jaxlib was installed
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    proc = sql_env("--json", "--no-check", extra_env={"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert str(fake) in report["accelerators_seen_by_os"]["gpu"]
    assert report["check"] is None
    assert len(report["warnings"]) == 1 and "JAX runs on the CPU" in report["warnings"][0]
    assert "pip install -e '.[cuda12]'" in report["warnings"][0]
    warning_lines = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning_lines) == 1 and "JAX runs on the CPU" in warning_lines[0]


def test_env_names_a_backend_jax_cannot_start():
    proc = sql_env("--json", extra_env={"JAX_PLATFORMS": "nosuchplatform"})
    assert proc.returncode == 5 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: JAX could not start a backend (JAX_PLATFORMS=nosuchplatform): RuntimeError: ")
    assert line.endswith("or unset JAX_PLATFORMS)")


def test_env_rejects_an_inconsistent_process_id():
    proc = sql_env("--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "5")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --process-id 5 is outside 0..1 (ids count from 0)"]


@pytest.mark.parametrize("kind, dtype, peak, name", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989e12, "NVIDIA H100 SXM"),
    ("NVIDIA H100 80GB HBM3", "f32", 67e12, "NVIDIA H100 SXM"),
    ("NVIDIA H100 PCIe", "bf16", 756e12, "NVIDIA H100 PCIe"),
    ("NVIDIA H200", "bf16", 989e12, "NVIDIA H200 SXM"),
    ("NVIDIA A100-SXM4-80GB", "f32", 19.5e12, "NVIDIA A100 SXM/PCIe"),
    ("TPU v5 lite", "bf16", 197e12, "TPU v5e"),
    ("TPU v5", "bf16", 459e12, "TPU v5p"),
    ("TPU v4", "f32", 275e12, "TPU v4"),  # no published f32 figure: against the bf16 peak
    ("TPU v3", "bf16", 61.5e12, "TPU v3 (one TensorCore: half of 123 TFLOP/s per chip)"),
])
def test_peak_lookup_by_jax_device_kind(kind, dtype, peak, name):
    value, entry, basis = peak_flops(kind, dtype)
    assert value == peak and entry.name == name and entry.source
    assert ("no published f32" in basis) == (dtype == "f32" and entry.f32 is None)


def test_peak_lookup_unknown_devices_and_dtypes():
    assert peak_flops("cpu", "bf16") is None
    assert peak_flops("NVIDIA GeForce RTX 4090", "f32") is None
    with pytest.raises(ValueError):
        peak_flops("TPU v4", "f16")
    assert all(p.bf16 > 0 and (p.f32 is None or p.f32 < p.bf16) for _, p in PEAKS)
