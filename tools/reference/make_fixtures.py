"""Generate the parity fixtures from the official AudioSR 0.0.7 (run inside .refenv).

    .refenv/bin/python tools/reference/make_fixtures.py --width reduced --out tests/fixtures
    .refenv/bin/python tools/reference/make_fixtures.py --width full --out /work/fullref

Writes, for the given width (prefix `reduced_`/`full_` only on the shapes json):
  {width}_param_shapes.json  seeds, scale_factor, fingerprint and {key: shape} of the synthetic weights (first
                             stage + UNet with seed 0, the conditioning VAE's encoder with its own seed 1)
  frontend.npz               the reference's loading / mel front-end / low-pass pre-processing of the clip
  modules.npz                single-module outputs (VAE encode/decode, UNet with and without condition, vocoder)
  ddim.npz                   the whole pipeline (super_resolution -> generate_batch) with every torch RNG draw
                             recorded in order, and the intermediates of the post-processing
See tests/fixtures/README.md for every array.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_model as rm  # noqa: E402  (imports patches, audiosr, audiosr_jax.lab.synthetic)
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

import audiosr.pipeline as pipeline  # noqa: E402
import audiosr.utils as autils  # noqa: E402
from audiosr.latent_diffusion.models import ddpm  # noqa: E402
from audiosr_jax.lab.synthetic import fingerprint, parity_clip  # noqa: E402

CLIP_SR = 48000
CLIP_SECONDS = 3.0
DDIM = dict(seed=42, ddim_steps=2, guidance_scale=3.5, ddim_eta=1.0)
MODULES_SEED = 1234
UNET_T = 501
COND_KEY = "concat_lowpass_cond"


def f32(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.array(x, dtype=np.float32, copy=True, order="C")  # a copy: the reference mutates in place


def write_clip(directory: str) -> tuple[str, np.ndarray]:
    """The parity clip as a 32-bit float wav; returns (path, the samples as read back)."""
    path = os.path.join(directory, "parity_clip.wav")
    sf.write(path, parity_clip(CLIP_SR, CLIP_SECONDS), CLIP_SR, subtype="FLOAT")
    clip, sr = sf.read(path, dtype="float32")
    assert sr == CLIP_SR
    return path, clip


class RNGRecorder:
    """Wraps torch.randn / randn_like / rand / randint / normal while active and logs every draw, in order.

    Each draw is named from its call site: the posterior sample of which VAE input, DDIM x_T, or the noise of
    which DDIM step (read from the sampler frame's locals).
    """

    FUNCS = ("randn", "randn_like", "rand", "rand_like", "randint", "normal")

    def __init__(self):
        self.draws: list[tuple[str, str, np.ndarray]] = []  # (function, description, value)
        self.stage = None  # set by the pipeline wrappers around the two posterior samples
        self._saved = {}

    def _describe(self) -> str:
        for frame_info in inspect.stack(0)[2:12]:
            name, loc = frame_info.function, frame_info.frame.f_locals
            if name == "p_sample_ddim":
                step = int(loc["t"].flatten()[0])
                return f"ddim step noise (index {int(loc['index'])}, t={step})"
            if name == "ddim_sampling":
                return "x_T (DDIM initial latent)"
            if name == "sample" and "DiagonalGaussianDistribution" in type(loc.get("self")).__name__:
                return f"posterior eps ({self.stage})"
        return "unknown: " + " <- ".join(fi.function for fi in inspect.stack(0)[2:7])

    def __enter__(self):
        for fname in self.FUNCS:
            original = getattr(torch, fname)
            self._saved[fname] = original

            def wrapped(*args, _fname=fname, _orig=original, **kwargs):
                out = _orig(*args, **kwargs)
                self.draws.append((_fname, self._describe(), out.detach().cpu().numpy().copy()))
                return out

            setattr(torch, fname, wrapped)
        return self

    def __exit__(self, *exc):
        for fname, original in self._saved.items():
            setattr(torch, fname, original)
        return False


def run_pipeline(model, wav_path: str) -> dict:
    """`audiosr.pipeline.super_resolution` as released, with wrappers that record its intermediates."""
    rec: dict = {}
    recorder = RNGRecorder()

    original_make_batch = pipeline.make_batch_for_super_resolution
    original_lowpass = autils.lowpass

    def make_batch(*args, **kwargs):
        batch, duration = original_make_batch(*args, **kwargs)
        rec["batch"] = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        rec["duration"] = duration
        return batch, duration

    def lowpass(data, highcut, fs, order=5, _type="butter"):
        rec["lowpass_call"] = dict(highcut=float(highcut), fs=int(fs), order=int(order), ftype=str(_type))
        return original_lowpass(data, highcut, fs, order=order, _type=_type)

    # instance-level wrappers (they shadow the class methods for this model only)
    def wrap(obj, name, after):
        original = getattr(obj, name)

        def wrapped(*args, **kwargs):
            out = original(*args, **kwargs)
            after(out, *args, **kwargs)
            return out

        setattr(obj, name, wrapped)

    cond_model = model.cond_stage_models[0]

    def stage(label, obj, name):
        original = getattr(obj, name)

        def wrapped(*args, **kwargs):
            recorder.stage = label
            try:
                return original(*args, **kwargs)
            finally:
                recorder.stage = None

        setattr(obj, name, wrapped)

    stage("first_stage_model, log_mel_spec: unused except for its shape", model, "get_first_stage_encoding")
    stage("cond_stage_models.0.vae, lowpass_mel: the concat condition", cond_model, "forward")
    wrap(cond_model, "forward", lambda out, *a, **k: rec.__setitem__("cond", f32(out)))
    wrap(model, "sample_log", lambda out, *a, **k: rec.__setitem__("latent", f32(out[0])))
    wrap(model, "decode_first_stage", lambda out, *a, **k: rec.__setitem__("mel", f32(out)))  # before in-place replace
    wrap(model, "mel_replace_ops", lambda out, *a, **k: rec.__setitem__("mel_replaced", f32(out)))
    wrap(model, "mel_spectrogram_to_waveform", lambda out, *a, **k: rec.__setitem__("wave_vocoder", f32(out)))
    wrap(model, "postprocessing", lambda out, *a, **k: rec.__setitem__("wave_post", f32(out)))
    unet_calls = []
    wrap(model, "apply_model", lambda out, x, t, cond, **k: unet_calls.append(
        (int(t.flatten()[0]), "uncond" if float(cond[COND_KEY].flatten()[0]) == np.float32(-11.4981) else "cond",
         f32(out))))
    samplers = []
    original_sampler_cls = ddpm.DDIMSampler

    class RecordingSampler(original_sampler_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            samplers.append(self)

    pipeline.make_batch_for_super_resolution = make_batch
    autils.lowpass = lowpass
    ddpm.DDIMSampler = RecordingSampler
    try:
        with recorder:
            t0 = time.perf_counter()
            waveform = pipeline.super_resolution(model, wav_path, seed=DDIM["seed"], ddim_steps=DDIM["ddim_steps"],
                                                 guidance_scale=DDIM["guidance_scale"])
            rec["seconds"] = time.perf_counter() - t0
    finally:
        pipeline.make_batch_for_super_resolution = original_make_batch
        autils.lowpass = original_lowpass
        ddpm.DDIMSampler = original_sampler_cls
        for name in ("get_first_stage_encoding", "sample_log", "decode_first_stage", "mel_replace_ops",
                     "mel_spectrogram_to_waveform", "postprocessing", "apply_model"):
            model.__dict__.pop(name, None)
        cond_model.__dict__.pop("forward", None)
    rec["waveform"] = f32(waveform)
    rec["draws"] = recorder.draws
    rec["unet_calls"] = unet_calls
    s = samplers[-1]
    rec["sampler"] = dict(timesteps=np.asarray(s.ddim_timesteps, np.int64),
                          alphas=np.asarray(s.ddim_alphas, np.float64),
                          alphas_prev=np.asarray(s.ddim_alphas_prev, np.float64),
                          sigmas=np.asarray(s.ddim_sigmas, np.float64))
    return rec


def frontend_arrays(model, rec: dict) -> dict:
    b = rec["batch"]
    stft = b["stft"][0]  # [T, 1024]
    cutoff_bin = autils._locate_cutoff_freq(stft, percentile=0.985)
    lowpass_mel = b["lowpass_mel"][0]
    return dict(
        waveform=f32(b["waveform"][0]),  # [1, N]
        log_mel=f32(b["log_mel_spec"][0]),  # [T, 256]
        lowpass_waveform=f32(b["waveform_lowpass"][0, 0]),  # [N]; the batch holds [B=1, 1, N]
        lowpass_mel=f32(lowpass_mel),  # [T, 256]
        cutoff_hz=np.float64(rec["lowpass_call"]["highcut"]),
        cutoff_bin=np.int64(cutoff_bin),
        filter_type=np.array(rec["lowpass_call"]["ftype"]),
        filter_order=np.int64(rec["lowpass_call"]["order"]),
        duration=np.float64(rec["duration"]),  # padded duration in s, as the pipeline passes it on
        target_frame=np.int64(b["log_mel_spec"].shape[1]),
        mel_cutoff_bin=np.int64(model._locate_cutoff_freq(torch.exp(lowpass_mel))),
        stft_cutoff_bin=np.int64(model._get_cutoff_index_np(b["waveform_lowpass"][0, 0].numpy())),
    )


@torch.no_grad()
def module_arrays(model, lowpass_mel: torch.Tensor) -> dict:
    """Single-module reference outputs on fixed inputs (torch layouts)."""
    vae = model.first_stage_model
    vae_in = lowpass_mel[None, None, :128].contiguous()  # [1, 1, 128, 256]
    posterior = vae.encode(vae_in)
    vae_dec = vae.decode(posterior.mean)  # no scale_factor division

    rng = np.random.default_rng(MODULES_SEED)
    latent_shape = (1, 16, lowpass_mel.shape[0] // 8, 32)  # [1, 16, 64, 32]
    unet_x = rng.standard_normal(latent_shape, dtype=np.float32)
    unet_cond = rng.standard_normal(latent_shape, dtype=np.float32)
    t = torch.full((1,), UNET_T, dtype=torch.long)
    out_cond = model.apply_model(torch.from_numpy(unet_x), t, {COND_KEY: torch.from_numpy(unet_cond)})
    cond_model = model.cond_stage_models[0]
    cond_model(lowpass_mel[None])  # sets the unconditional constant with this latent's shape
    uncond = cond_model.get_unconditional_condition(1)
    out_uncond = model.apply_model(torch.from_numpy(unet_x), t, {COND_KEY: uncond})

    voc_in = lowpass_mel[:64].T[None].contiguous()  # [1, 256, 64]
    voc_out = vae.vocoder(voc_in)
    return dict(
        vae_in=f32(vae_in), vae_mean=f32(posterior.mean), vae_logvar=f32(posterior.logvar),
        vae_dec_out=f32(vae_dec),
        unet_x=unet_x, unet_cond=unet_cond, unet_t=np.int64(UNET_T),
        unet_uncond_value=f32(uncond.flatten()[0]),
        unet_out_cond=f32(out_cond), unet_out_uncond=f32(out_uncond),
        voc_in=f32(voc_in), voc_out=f32(voc_out),
        scale_factor=np.float32(float(model.scale_factor)),
    )


def ddim_arrays(rec: dict) -> dict:
    out = {}
    names = []
    for i, (fname, desc, value) in enumerate(rec["draws"]):
        out[f"noise_{i}"] = f32(value)
        names.append(f"torch.{fname}{tuple(value.shape)}: {desc}")
    out["noise_names"] = np.array(names)
    for i, (t, kind, v) in enumerate(rec["unet_calls"]):
        out[f"unet_call_{i}"] = v
    out["unet_call_names"] = np.array([f"t={t} {kind}" for t, kind, _ in rec["unet_calls"]])
    s = rec["sampler"]
    wave_post = rec["wave_post"]
    out.update(
        ddim_cond=rec["cond"],  # [1, 16, 64, 32] sampled condition latent (before the wrapper's scale_factor)
        ddim_latent=rec["latent"], ddim_mel=rec["mel"], ddim_mel_replaced=rec["mel_replaced"],
        ddim_waveform_vocoder=rec["wave_vocoder"], ddim_waveform=rec["waveform"],
        # the final normalisation is w = 0.5*p/max|p|; w -= mean(w), on the postprocessed p:
        post_max_abs=np.float32(np.max(np.abs(wave_post))),
        post_mean_after_scale=np.float32(np.mean(0.5 * wave_post / np.max(np.abs(wave_post)))),
        ddim_timesteps=s["timesteps"], ddim_alphas=s["alphas"], ddim_alphas_prev=s["alphas_prev"],
        ddim_sigmas=s["sigmas"],
        seed=np.int64(DDIM["seed"]), ddim_steps=np.int64(DDIM["ddim_steps"]),
        guidance_scale=np.float64(DDIM["guidance_scale"]), ddim_eta=np.float64(DDIM["ddim_eta"]),
    )
    return out


def save(path: str, arrays: dict) -> None:
    np.savez_compressed(path, **arrays)
    size = os.path.getsize(path)
    print(f"wrote {path}: {size / 1e6:.2f} MB, {len(arrays)} arrays")
    for k, v in arrays.items():
        v = np.asarray(v)
        print(f"    {k:24s} {str(v.dtype):8s} {list(v.shape)}")
    if size >= 5e6:
        raise SystemExit(f"{path} is {size / 1e6:.2f} MB: fixtures must stay under 5 MB")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", choices=sorted(rm.WIDTHS), default="reduced")
    ap.add_argument("--out", required=True, help="output directory")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    torch.set_grad_enabled(False)

    t0 = time.perf_counter()
    model, shapes, weights = rm.build_reference_model(args.width)
    print(f"built the {args.width} reference model in {time.perf_counter() - t0:.1f} s "
          f"({sum(int(np.prod(s)) for s in shapes.values()):,} synthetic elements in {len(shapes)} keys)")
    shapes_path = os.path.join(args.out, f"{args.width}_param_shapes.json")
    with open(shapes_path, "w") as f:
        # "seed" for every key but those under a "prefix_seeds" prefix (the conditioning VAE's own weights)
        json.dump({"seed": 0, "prefix_seeds": {rm.COND_PREFIX: rm.COND_SEED}, "scale_factor": rm.SCALE_FACTOR,
                   "fingerprint": fingerprint(weights), "shapes": {k: list(v) for k, v in shapes.items()}}, f, indent=0)
    print(f"wrote {shapes_path}: {os.path.getsize(shapes_path) / 1e3:.0f} kB")
    del weights

    with tempfile.TemporaryDirectory() as tmp:
        wav_path, clip = write_clip(tmp)
        rec = run_pipeline(model, wav_path)  # fresh model: the first generate_batch call (see README)
    print(f"super_resolution (ddim_steps={DDIM['ddim_steps']}) took {rec['seconds']:.1f} s")
    print("torch RNG draws in order:")
    for i, (fname, desc, value) in enumerate(rec["draws"]):
        print(f"    noise_{i}: torch.{fname}{tuple(value.shape)}: {desc}")

    frontend = frontend_arrays(model, rec)
    frontend["clip"] = clip
    save(os.path.join(args.out, "frontend.npz"), frontend)
    save(os.path.join(args.out, "ddim.npz"), ddim_arrays(rec))
    save(os.path.join(args.out, "modules.npz"), module_arrays(model, rec["batch"]["lowpass_mel"][0]))


if __name__ == "__main__":
    main()
