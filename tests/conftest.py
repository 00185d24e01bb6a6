"""Test setup: CPU only, 8 fake devices, before JAX is imported anywhere; one persistent XLA cache per run."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# sample.main enables the persistent XLA cache: keep the tests' out of the user's home.
if "AUDIOSR_JAX_CACHE" not in os.environ:
    os.environ["AUDIOSR_JAX_CACHE"] = _cache = tempfile.mkdtemp(prefix="audiosr_jax_xla_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _persistent_compilation_cache():
    """One XLA cache for the whole run (both xdist workers and every subprocess they start inherit
    AUDIOSR_JAX_CACHE): a program compiled once, in-process or by a CLI under test, is not compiled again."""
    from audiosr_jax.runtime import enable_compilation_cache

    enable_compilation_cache()


@pytest.fixture(scope="session")
def tiny_torch_checkpoint(tmp_path_factory):
    """A released-layout .safetensors file with tiny synthetic networks."""
    from audiosr_jax.lab.testing import write_synthetic_checkpoint

    return write_synthetic_checkpoint(tmp_path_factory.mktemp("torch") / "tiny.safetensors", "tiny")


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory, tiny_torch_checkpoint):
    """That checkpoint converted to an audiosr-jax checkpoint directory."""
    from audiosr_jax.convert import convert_file

    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    convert_file(tiny_torch_checkpoint, out)
    return str(out)
