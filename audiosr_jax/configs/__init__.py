"""ml_collections config files (big_vision style): `--config=audiosr_jax/configs/ldm.py:tiny`."""
