"""Optimizers, schedules and gradient clipping (`dreidel.optim`)."""
