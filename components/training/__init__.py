"""The training loop and what it uses: losses, learning-rate schedules, checkpoints, the CPU heap setting."""
