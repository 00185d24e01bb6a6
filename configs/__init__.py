"""ml_collections config files (big_vision style): `--config=configs/ldm.py:tiny`."""
