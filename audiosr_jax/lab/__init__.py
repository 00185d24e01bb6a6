"""Lab code: the demo, experiments and ablations, parity against the reference, synthetic checkpoints."""
