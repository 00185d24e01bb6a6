"""Training code: discriminators and losses, per-stage train steps, the loop, checkpoints and summaries."""
