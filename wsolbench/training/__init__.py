"""The training layer: the loops, their distribution over processes, checkpoints and a run's life."""
