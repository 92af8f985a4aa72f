"""The training loop and what it uses: the model spec, where batches come from, the device and precision it runs
under, losses, learning-rate schedules, checkpoints (and loading a trained model), the CPU heap setting."""
