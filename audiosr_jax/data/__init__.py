"""Training data: the TFDS / ArrayRecord segment dataset (``segments``) and its loader."""
