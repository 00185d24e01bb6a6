"""Inference: the pipeline, the batch engine, files and arrays in, 48 kHz out; the Python API (`AudioSR`)."""
