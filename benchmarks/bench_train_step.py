"""UNet train-step and sampling throughput, FLOPs from XLA's cost analysis, and the implied MFU.

  python benchmarks/bench_train_step.py --width full --batch 16 --dtype bfloat16          # GPU
  python benchmarks/bench_train_step.py --width reduced --batch 4 --frames 128            # CPU

Train: one jitted AdamW step of the LDM objective (v-prediction, cosine schedule) on random latents
[B, frames/8, 32, 16] with the condition concatenated, bf16 or fp32 compute, fp32 master params.
Sample: 50 DDIM steps (η = 1) with classifier-free guidance batched into one UNet call per step, as one
``lax.scan``; reported as seconds of 48 kHz audio generated per second (UNet only: the VAE decoder and the
vocoder add ~10 % at full width). Imports only jax/flax/optax so it runs on any accelerator image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from audiosr_jax.diffusion import objectives  # noqa: E402
from audiosr_jax.diffusion.samplers import classifier_free_guidance, ddim_sample, ddim_tables  # noqa: E402
from audiosr_jax.diffusion.schedules import cosine_alphas_cumprod  # noqa: E402
from audiosr_jax.models.unet import UNetConfig, UNetModel  # noqa: E402
from audiosr_jax.training import state as st  # noqa: E402
from audiosr_jax.training.optim import make_optimizer  # noqa: E402
from audiosr_jax.training.summary import compiled_flops, peak_flops  # noqa: E402

WIDTHS = {"full": UNetConfig, "reduced": UNetConfig.reduced, "tiny": UNetConfig.tiny}


def _time(fn, args, repeats):
    out = fn(*args)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / repeats, out


def bench_train(cfg: UNetConfig, batch: int, frames: int, dtype, repeats: int) -> dict:
    unet = UNetModel(cfg, dtype=dtype)
    lat = cfg.out_channels
    h, w = frames // 8, 32
    ac = jnp.asarray(cosine_alphas_cumprod(), jnp.float32)
    params = jax.jit(unet.init)(jax.random.PRNGKey(0), jnp.zeros((1, h, w, cfg.in_channels)), jnp.zeros((1,), jnp.int32))["params"]
    tx, _ = make_optimizer(_optim(), 1000)
    state = st.create_state({"unet": params}, {"unet": tx})

    def loss_fn(p, b, key):
        k1, k2 = jax.random.split(key)
        t = jax.random.randint(k1, (batch,), 0, 1000)
        eps = jax.random.normal(k2, b["z"].shape)
        a = ac[t][:, None, None, None]
        x_t = jnp.sqrt(a) * b["z"] + jnp.sqrt(1 - a) * eps
        pred = unet.apply({"params": p["unet"]}, jnp.concatenate([x_t, b["cond"]], -1), t)
        loss = objectives.diffusion_loss(pred, b["z"], eps, ac[t], "v")
        return loss, {"loss": loss}

    def step(state, b):
        loss, m, grads = st.accumulate_grads(loss_fn, state.params, b, st.step_key(state), 1)
        new = st.apply_group(state, "unet", grads["unet"], tx)
        return st.finish_step(state, new, jnp.isfinite(loss)), m

    rng = np.random.default_rng(0)
    b = {"z": jnp.asarray(rng.standard_normal((batch, h, w, lat)), jnp.float32),
         "cond": jnp.asarray(rng.standard_normal((batch, h, w, cfg.in_channels - lat)), jnp.float32)}
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, b).compile()
    compile_s = time.perf_counter() - t0
    flops = compiled_flops(compiled)
    holder = {"s": state}

    def run(b):
        holder["s"], m = compiled(holder["s"], b)
        return m["loss"]

    dt, loss = _time(run, (b,), repeats)
    return {"compile_s": compile_s, "step_s": dt, "flops": flops, "loss": float(loss)}


class _Cfg(dict):
    __getattr__ = dict.__getitem__

    def get(self, k, d=None):
        return dict.get(self, k, d)


def _optim():
    return _Cfg(lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, warmup_steps=0, schedule="constant")


def bench_sample(cfg: UNetConfig, batch: int, frames: int, dtype, steps: int, repeats: int) -> dict:
    unet = UNetModel(cfg, dtype=dtype)
    h, w, lat = frames // 8, 32, cfg.out_channels
    params = jax.jit(unet.init)(jax.random.PRNGKey(0), jnp.zeros((1, h, w, cfg.in_channels)), jnp.zeros((1,), jnp.int32))["params"]
    tables = ddim_tables(cosine_alphas_cumprod(), steps, 1.0)

    def sample(params, cond, x_T, noise):
        def model(x, t, c):
            return unet.apply({"params": params}, jnp.concatenate([x, c], -1), t).astype(jnp.float32)

        den = classifier_free_guidance(model, cond, jnp.full_like(cond, -11.4981 * 0.3342), 3.5)
        return ddim_sample(den, x_T, noise, tables)

    rng = np.random.default_rng(0)
    cond = jnp.asarray(rng.standard_normal((batch, h, w, cfg.in_channels - lat)), jnp.float32)
    x_T = jnp.asarray(rng.standard_normal((batch, h, w, lat)), jnp.float32)
    noise = jnp.asarray(rng.standard_normal((len(tables.timesteps), batch, h, w, lat)), jnp.float32)
    t0 = time.perf_counter()
    compiled = jax.jit(sample).lower(params, cond, x_T, noise).compile()
    compile_s = time.perf_counter() - t0
    flops = compiled_flops(compiled)
    dt, _ = _time(compiled, (params, cond, x_T, noise), repeats)
    audio_s = batch * frames / 100.0
    return {"compile_s": compile_s, "run_s": dt, "flops_per_unet_call": flops, "audio_s_per_s": audio_s / dt}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", default="full", choices=sorted(WIDTHS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=512, help="mel frames (512 = 5.12 s; latent frames/8)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--part", default="both", choices=["train", "sample", "both"])
    p.add_argument("--sample-batch", type=int, default=16)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--json", help="also write the figures here")
    a = p.parse_args(argv)
    cfg = WIDTHS[a.width]()
    dtype = jnp.dtype(a.dtype)
    dev = jax.devices()[0]
    peak = peak_flops(dev, a.dtype)
    print(f"device: {dev.device_kind} x{jax.device_count()}  width={a.width}  dtype={a.dtype}  "
          f"peak={peak / 1e12 if peak else float('nan'):.0f} TFLOP/s")
    out = {"device": dev.device_kind, "width": a.width, "dtype": a.dtype}
    if a.part in ("train", "both"):
        r = bench_train(cfg, a.batch, a.frames, dtype, a.repeats)
        tf = r["flops"] / r["step_s"] / 1e12 if r["flops"] else float("nan")
        mfu = f"{100 * r['flops'] / r['step_s'] / peak:.1f} %" if (peak and r["flops"]) else "n/a"
        print(f"train step  batch {a.batch} x {a.frames / 100:.2f} s: {r['step_s'] * 1e3:.1f} ms/step, "
              f"{a.batch / r['step_s']:.1f} examples/s, {r['flops'] or float('nan'):.3g} FLOPs/step, "
              f"{tf:.1f} TFLOP/s, MFU {mfu}, compile {r['compile_s']:.1f} s")
        out["train"] = {**r, "tflops_per_s": tf, "mfu": mfu}
    if a.part in ("sample", "both"):
        r = bench_sample(cfg, a.sample_batch, a.frames, dtype, a.sample_steps, max(1, a.repeats // 2))
        print(f"sampling    batch {a.sample_batch} x {a.frames / 100:.2f} s, DDIM {a.sample_steps} steps + CFG: "
              f"{r['run_s']:.2f} s, {r['audio_s_per_s']:.1f} s of audio per s (UNet only), "
              f"compile {r['compile_s']:.1f} s")
        out["sample"] = r
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
