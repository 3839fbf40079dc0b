"""Suite-wide settings, applied before any test module imports numpy or JAX.

- XLA's LLVM optimisation passes dominate compile time for the tiny networks the tests use and buy
  nothing at their size: compile at level 0 (the same programs, compiled faster; subprocess tests
  inherit it). Benchmarks do not use this.
- OpenBLAS threads make the emulators' 84x84 resize (two small matmuls) many times slower on a busy
  2-core machine; the CLI sets the same default in sqlcli/main.py.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
