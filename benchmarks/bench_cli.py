"""Start-up time of the `sql` command against a bare typer CLI's, on this machine.

Each case is a fresh process (the interpreter, the imports, the work, the exit), timed wall-clock from spawn to
exit, several times; the table shows the median and the best. The baselines start the same interpreter:
  python -c pass          : the interpreter alone
  python -c 'import typer': what any typer CLI pays before its own code (the floor for `sql --help`)
  typer hello --help      : a one-command typer app printing its help
and the `sql` cases are `sql --help`, `sql pretrain --help`, `sql --version`, an argument error
(`sql eval --protocol bogus`, exit 2) and `sql games` (the atari40 table). Each row prints its figure and its
baseline side by side; the start-up targets of issue 24 are 0.5 s for help, version and argument errors and
1 s for `sql games`.

    python -m benchmarks.bench_cli [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TYPER_HELLO = '''import typer
app = typer.Typer()
@app.command()
def hello(name: str = "world") -> None:
    """Say hello."""
    typer.echo(f"hello {name}")
app()
'''
# (label, arguments after the interpreter, the exit code it must end with, baseline label, target seconds)
SQL_CASES = (
    ("sql --help", ["-m", "sqlcli.main", "--help"], 0, "typer hello --help", 0.5),
    ("sql pretrain --help", ["-m", "sqlcli.main", "pretrain", "--help"], 0, "typer hello --help", 0.5),
    ("sql --version", ["-m", "sqlcli.main", "--version"], 0, "python -c 'import typer'", 0.5),
    ("sql eval --protocol bogus", ["-m", "sqlcli.main", "eval", "--protocol", "bogus"], 2,
     "python -c 'import typer'", 0.5),
    ("sql games", ["-m", "sqlcli.main", "games"], 0, "python -c 'import typer'", 1.0),
)


def time_process(args: list[str], expected_code: int, repeats: int) -> list[float]:
    """Wall-clock seconds of `python ARGS` from spawn to exit, `repeats` times (after one untimed warm-up run
    that fills the OS file cache)."""
    runs = []
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
        elapsed = time.perf_counter() - start
        if proc.returncode != expected_code:
            raise SystemExit(f"{args} exited {proc.returncode}, expected {expected_code}: {proc.stderr[-500:]}")
        if attempt:
            runs.append(elapsed)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        hello = Path(tmp) / "hello.py"
        hello.write_text(TYPER_HELLO)
        baselines = {
            "python -c pass": time_process(["-c", "pass"], 0, args.repeats),
            "python -c 'import typer'": time_process(["-c", "import typer"], 0, args.repeats),
            "typer hello --help": time_process([str(hello), "--help"], 0, args.repeats),
        }
        rows = []
        for label, call, code, baseline, target in SQL_CASES:
            runs = time_process(call, code, args.repeats)
            base = baselines[baseline]
            row = {"case": label, "median_s": statistics.median(runs), "best_s": min(runs), "runs_s": runs,
                   "baseline": baseline, "baseline_median_s": statistics.median(base), "target_s": target}
            rows.append(row)
            print(f"{label:<28} median {row['median_s']:6.2f} s  best {row['best_s']:6.2f} s  (target "
                  f"{target:.1f} s) | {baseline}: median {row['baseline_median_s']:5.2f} s", flush=True)
    print(f"{'python -c pass':<28} median {statistics.median(baselines['python -c pass']):6.2f} s  (the interpreter "
          "alone)", flush=True)
    if args.json:
        from sqlcli_core.provenance import package_versions

        print(json.dumps({"repeats": args.repeats, "cases": rows,
                          "baselines": {k: {"median_s": statistics.median(v), "best_s": min(v), "runs_s": v}
                                        for k, v in baselines.items()},
                          "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
                          "versions": package_versions()}))


if __name__ == "__main__":
    main()
