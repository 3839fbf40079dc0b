"""Data: the DQN-Replay format, fetching, collecting, the Zarr store, samplers and batches."""
