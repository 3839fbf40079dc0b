"""Analysis across runs: the scaling report."""
