"""Half-precision checkpoints: a whole fp16 (or bf16) checkpoint converts to float32, schedule buffer included.

The schedule check compares the stored ``alphas_cumprod`` with AudioSR's cosine schedule to a tolerance that
follows the stored tensor's precision: fp16/bf16 hold that schedule rounded, a different schedule is still refused.
"""

import ml_dtypes
import numpy as np
import pytest
import torch

from audiosr_jax.convert import convert_file, convert_state_dict
from audiosr_jax.convert.core import UNET
from audiosr_jax.convert.rules import ConversionError
from audiosr_jax.convert.torch_files import open_state_dict, stored_dtype
from audiosr_jax.diffusion.schedules import make_alphas_cumprod
from audiosr_jax.lab.testing import synthetic_torch_checkpoint

BF16_KEY = UNET + "time_embed.0.weight"  # the one tensor stored in bf16 in the mixed checkpoint


@pytest.fixture(scope="module")
def tiny_sd():
    return synthetic_torch_checkpoint("tiny")


def _half(sd, bf16_key=BF16_KEY):
    """Every floating tensor of `sd` (numpy) as fp16, `bf16_key` as bf16 (ml_dtypes), whole-checkpoint style."""
    out = {}
    for k, v in sd.items():
        v = np.ascontiguousarray(v)
        if np.issubdtype(v.dtype, np.floating):
            v = v.astype(ml_dtypes.bfloat16 if k == bf16_key else np.float16)
        out[k] = v
    return out


def _write(sd, path):
    """Write a numpy state dict (fp16 / bf16 kept) as .safetensors or as a torch .pth with a state_dict."""
    tensors = {k: torch.from_numpy(v.view(np.int16)).view(torch.bfloat16) if v.dtype == ml_dtypes.bfloat16
               else torch.from_numpy(v) for k, v in sd.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path))
    else:
        torch.save({"state_dict": tensors}, path)
    return path


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}/{k}")
    else:
        yield prefix, np.asarray(tree)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_whole_half_precision_checkpoint_converts_to_float32(tmp_path, tiny_sd, suffix):
    half = _half(tiny_sd)
    path = _write(half, tmp_path / f"half{suffix}")
    opened = open_state_dict(path)
    assert stored_dtype(opened["alphas_cumprod"]) == "float16" and stored_dtype(opened[BF16_KEY]) == "bfloat16"
    weights, report = convert_file(path)  # refused before: fp16 alphas_cumprod is off the float64 schedule by 2e-4
    assert report.ignored == {"schedule buffers": 1}
    assert weights.scale_factor == float(np.float16(0.55))
    # the same weights as the half values widened to float32 (the check skipped: that copy is float32)
    widened = {k: v.astype(np.float32) for k, v in half.items() if k != "alphas_cumprod"}
    ref, _ = convert_state_dict(widened)
    got, want = dict(_leaves(weights.params)), dict(_leaves(ref.params))
    assert got.keys() == want.keys()
    for name, x in got.items():
        assert x.dtype == np.float32, name
        np.testing.assert_array_equal(x, want[name], err_msg=name)
    kernel = weights.params["vae"]["encoder"]["conv_in"]["kernel"]
    assert not np.array_equal(kernel, convert_state_dict(tiny_sd)[0].params["vae"]["encoder"]["conv_in"]["kernel"])


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_schedule_in_memory_is_accepted(tiny_sd, dtype):
    sd = dict(tiny_sd, alphas_cumprod=make_alphas_cumprod("cosine", 1000).astype(dtype))
    convert_state_dict(sd, origin="half")


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_a_different_schedule_in_half_precision_is_refused(tmp_path, tiny_sd, dtype, schedule):
    sd = dict(tiny_sd, alphas_cumprod=make_alphas_cumprod(schedule, 1000).astype(dtype))
    with pytest.raises(ConversionError, match="'alphas_cumprod' is not the unclipped 1000-step cosine schedule"):
        convert_state_dict(sd, origin="half")
    path = _write(_half(sd), tmp_path / "other.safetensors")
    with pytest.raises(ConversionError, match=f"{path}: 'alphas_cumprod' is not"):
        convert_file(path)


def test_float32_schedule_keeps_the_strict_tolerance(tiny_sd):
    # the tolerance follows the stored dtype: fp16-rounded values stored as float32 are 2e-4 off, refused
    rounded = make_alphas_cumprod("cosine", 1000).astype(np.float16).astype(np.float32)
    with pytest.raises(ConversionError, match="alphas_cumprod"):
        convert_state_dict(dict(tiny_sd, alphas_cumprod=rounded), origin="fp32")
    convert_state_dict(tiny_sd, origin="fp32")  # the float32 schedule itself passes
