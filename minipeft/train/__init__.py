"""Training: the optimiser, the learning-rate schedules, the training loop."""
