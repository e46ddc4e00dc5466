"""MPMA: multi-task paired masking with global/local alignment and memory-augmented cross-modal fusion."""
