"""Runs: a run's identity and RUN/run.json (`run_record.py`), its checkpoints (`checkpointer.py`, checksums in
`checksums.py`), loading its policy (`policy.py`), its lifecycle (`lifecycle.py`: the lock, resume or fresh,
saving, logging) and its metrics (`metrics.py`)."""
