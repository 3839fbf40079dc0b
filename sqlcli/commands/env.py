"""`sql env`: what JAX runs on here (backend, devices, processes, versions) and whether a jitted step works."""

from __future__ import annotations

import warnings

import typer
from rich.table import Table

from sqlcli.console import JSON_OPTION, emit_summary, result_console
from sqlcli.errors import handles_errors
from sqlcli_core.errors import ResourceError, SqlWarning

EXAMPLE = "Example: sql env --json | python -m json.tool"


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.1f} GiB"


@handles_errors
def env(
    coordinator: str = typer.Option(
        None, "--coordinator", help="HOST:PORT of process 0, to check a multi-process job the way `sql pretrain` "
        "joins it (or SQL_COORDINATOR / JAX_COORDINATOR_ADDRESS). Default: single process."),
    num_processes: int = typer.Option(None, "--num-processes", help="Processes of the job (or SQL_NUM_PROCESSES). "
                                      "Default: 1."),
    process_id: int = typer.Option(None, "--process-id", help="This process's id, 0..N-1 (or SQL_PROCESS_ID). "
                                   "Default: 0."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compile and run one small jitted step on the "
                               "default device and compare it with numpy. Default: on."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show the backend JAX uses, its devices (with memory where JAX reports it), the process count and the
    versions of the stack, and run a one-step jitted check on the default device (exit 5 if it fails)."""
    # jax, imported by these, is what this command inspects
    from sqlcli_core.accelerators import environment_report
    from sqlcli_core.training.mesh import init_distributed

    init_distributed(coordinator, num_processes, process_id)
    report = environment_report(check=check)
    out = result_console(as_json)
    out.print(f"backend: {report['backend']}   processes: {report['process_count']} (this is "
              f"{report['process_index']})   devices: {report['local_device_count']} here, "
              f"{report['device_count']} in all   host CPUs: {report['host_cpus']}", markup=False, highlight=False)
    table = Table(title="devices of this process")
    for column in ("id", "platform", "kind", "memory"):
        table.add_column(column, justify="right" if column in ("id", "memory") else "left")
    for device in report["devices"]:
        if device["process_index"] == report["process_index"]:
            table.add_row(str(device["id"]), device["platform"], device["kind"], _gib(device["memory_bytes"]))
    out.print(table)
    out.print("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), markup=False,
              highlight=False)
    if report["environment"]:
        out.print("environment: " + " ".join(f"{k}={v}" for k, v in report["environment"].items()), markup=False,
                  highlight=False)
    result = report["check"]
    if result is not None:
        if result["ok"]:
            outcome = f"ok (compile {result['compile_s']:.2f} s, run {result['run_s'] * 1000:.1f} ms)"
        else:
            outcome = "FAILED: " + (result.get("error") or f"got {result['value']}, expected {result['expected']}")
        out.print(f"check on {result['device']}: {outcome}", markup=False, highlight=False)
    for message in report["warnings"]:
        warnings.warn(message, SqlWarning, stacklevel=1)
    emit_summary(report, as_json)
    if result is not None and not result["ok"]:
        raise ResourceError(f"the jitted check failed on {result['device']}",
                            hint="reinstall jax for this accelerator (docs/install.md) or run with JAX_PLATFORMS=cpu")
