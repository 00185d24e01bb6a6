"""Super-resolve one audio file to 48 kHz with a converted AudioSR checkpoint.

    python sample.py IN -o OUT --checkpoint DIR [--steps 50] [--guidance 3.5] [--eta 1.0] [--seed 42]

IN: anything soundfile reads (wav, flac, ogg, ...), any sample rate, mono or stereo. OUT: a 48 kHz file whose
format follows its extension; it appears only when complete (written to a temporary file, then renamed).
User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="input audio file")
    p.add_argument("-o", "--output", required=True, help="output audio file (48 kHz)")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (python -m audiosr_jax.convert ...)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50, as the official CLI)")
    p.add_argument("--guidance", type=float, default=3.5, help="classifier-free guidance scale (default 3.5)")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta; 1.0 = stochastic, as the reference")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-channels", type=int, default=2, help="refuse inputs with more channels (default 2)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    return p.parse_args(argv)


def _check_output(path: str, overwrite: bool) -> None:
    import soundfile as sf

    from audiosr_jax.errors import UserError

    ext = os.path.splitext(path)[1].lstrip(".").upper()
    if ext not in sf.available_formats():
        raise UserError(f"{path}: unknown output format {ext or '(no extension)'!r}; use .wav, .flac or .ogg")
    if os.path.exists(path) and not overwrite:
        raise UserError(f"{path}: already exists (use --overwrite)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"{path}: output directory {parent} does not exist")


def write_audio_atomic(path: str, waveform, sample_rate: int) -> None:
    """Write [C, n] float audio to `path` via a temporary file in the same directory and a rename."""
    import soundfile as sf

    parent = os.path.dirname(os.path.abspath(path))
    ext = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=ext, dir=parent)
    os.close(fd)
    try:
        sf.write(tmp, waveform.T, sample_rate, format=ext.lstrip(".").upper())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _enable_compilation_cache() -> None:
    """Persist compiled XLA programs so a second run skips compilation (tens of seconds at full width)."""
    import jax

    cache = os.environ.get("AUDIOSR_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "audiosr_jax", "xla"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv=None) -> int:
    args = parse_args(argv)
    from audiosr_jax.errors import UserError

    try:
        if args.steps < 1 or args.steps > 1000:
            raise UserError(f"--steps must be in [1, 1000], got {args.steps}")
        if not os.path.exists(args.input):
            raise UserError(f"{args.input}: no such file")
        if os.path.abspath(args.input) == os.path.abspath(args.output):
            raise UserError(f"{args.output}: output would overwrite the input")
        _check_output(args.output, args.overwrite)
        _enable_compilation_cache()
        from audiosr_jax.audio import SAMPLE_RATE, prepare_waveform
        from audiosr_jax.checkpoint import load_weights
        from audiosr_jax.pipeline import SamplingOptions, super_resolve_waveform

        start = time.perf_counter()
        wave, info = prepare_waveform(args.input, max_channels=args.max_channels)  # bad audio fails before loading weights
        weights = load_weights(args.checkpoint)
        options = SamplingOptions(steps=args.steps, guidance=args.guidance, eta=args.eta)
        waveform, info = super_resolve_waveform(weights, wave, info, options, seed=args.seed, name=args.input)
        write_audio_atomic(args.output, waveform, SAMPLE_RATE)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    cut = ", ".join(f"{c / 1000:.1f} kHz" for c in info.get("cutoff_hz", []))
    print(f"{args.input} -> {args.output}: {waveform.shape[1] / SAMPLE_RATE:.2f} s, {waveform.shape[0]} channel(s), "
          f"detected cutoff {cut}, {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
