"""Training: the data-parallel learner, run directories and checkpoints, the training recipes."""
