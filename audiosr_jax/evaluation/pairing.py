"""Pairing outputs with references and inputs: by relative path, by a unique stem, by the `lp<N>` folder of a
simulated cutoff, or from the manifest `simulate` writes."""

from __future__ import annotations

import json
import os
import re

from audiosr_jax.errors import UserError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "audiosr_jax.evaluate.simulate"  # the manifest's format id (kept: manifests already written carry it)
DEFAULT_SUFFIXES = ("_AudioSR_Processed_48K",)
_LP_DIR = re.compile(r"^lp(\d+)$", re.IGNORECASE)
_AUDIO_EXTENSIONS = {
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd", ".caf", ".w64",
    ".rf64", ".wv", ".voc", ".sd2", ".htk", ".ircam", ".sf", ".mat", ".nist", ".paf", ".pvf", ".xi", ".mpc",
}


def _is_audio(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in _AUDIO_EXTENSIONS and not name.startswith(".")


def scan_audio(root: str) -> list[str]:
    """Audio files below root (recursive, hidden files such as partial writes skipped), relative, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if _is_audio(name):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return found


def _key(rel: str, suffixes=()) -> str:
    stem = os.path.splitext(rel)[0].replace(os.sep, "/")
    for suffix in suffixes:
        if suffix and stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _split_lp(key: str) -> tuple[str, float | None]:
    """``"lp4000/a/b"`` -> ``("a/b", 4000.0)``: the first ``lp<N>`` folder is a simulated cutoff."""
    parts = key.split("/")
    for i, part in enumerate(parts[:-1]):
        m = _LP_DIR.match(part)
        if m:
            return "/".join(parts[:i] + parts[i + 1 :]), float(m.group(1))
    return key, None


class _Index:
    """Lookup of a folder's audio files by key (relative path without extension), else by unique stem."""

    def __init__(self, root: str, suffixes=(), warnings: list[str] | None = None):
        self.root = root
        self.by_key: dict[str, str] = {}
        self.by_stem: dict[str, list[str]] = {}
        for rel in scan_audio(root):
            key = _key(rel, suffixes)
            if key in self.by_key:
                if warnings is not None:
                    warnings.append(f"{os.path.join(root, rel)}: ignored, same name as {self.path(self.by_key[key])}")
                continue
            self.by_key[key] = rel
            self.by_stem.setdefault(key.rsplit("/", 1)[-1], []).append(rel)

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def find(self, key: str) -> str | None:
        """The file with this key, else the only one with the same stem and the same ``lp<N>`` folder."""
        if key in self.by_key:
            return self.by_key[key]
        tag = _split_lp(key)[1]
        same = [r for r in self.by_stem.get(key.rsplit("/", 1)[-1], []) if _split_lp(_key(r))[1] == tag]
        return same[0] if len(same) == 1 else None


def plan_pairs(outputs: str, references: str, inputs: str | None, manifest: dict | None, suffixes, problems, warnings):
    """List of (output, reference, input, cutoff_hz, cutoff_source, key) to evaluate; missing pairs go to
    ``problems``."""
    outs = _Index(outputs, suffixes, warnings)
    refs = _Index(references, (), warnings)
    plan, used_outputs = [], set()
    if manifest is not None:
        base = manifest.get("_dir", inputs)
        for item in manifest["items"]:
            key = _key(item["input"])
            ref = os.path.join(references, item["reference"])
            rel = outs.find(key)
            if rel is None:
                problems.append(f"{os.path.join(outputs, key)}.*: missing output for simulated input {item['input']}")
                continue
            used_outputs.add(rel)
            inp = os.path.join(base, item["input"]) if base else None
            if inp is not None and not os.path.isfile(inp):
                warnings.append(f"{inp}: simulated input not found (no baseline / input panel)")
                inp = None
            plan.append((outs.path(rel), ref, inp, float(item["cutoff_hz"]), "manifest", key))
        for key, rel in outs.by_key.items():
            if rel not in used_outputs:
                problems.append(f"{outs.path(rel)}: not in the manifest (no reference / cutoff known)")
        return plan

    ins = _Index(inputs, (), warnings) if inputs else None
    used_refs, used_inputs = set(), set()
    for key, rel in outs.by_key.items():
        ref_key, named_cutoff = _split_lp(key)
        ref_rel = refs.find(ref_key)
        if ref_rel is None:
            problems.append(f"{outs.path(rel)}: no reference named {ref_key}.* in {references}")
            continue
        used_refs.add(ref_rel)
        inp = None
        if ins is not None:
            in_rel = ins.find(key)
            if in_rel is None:
                problems.append(f"{outs.path(rel)}: no input named {key}.* in {inputs}")
            else:
                used_inputs.add(in_rel)
                inp = ins.path(in_rel)
        source = "name" if named_cutoff is not None else None
        plan.append((outs.path(rel), refs.path(ref_rel), inp, named_cutoff, source, key))
    for rel in refs.by_key.values():
        if rel not in used_refs:
            problems.append(f"{refs.path(rel)}: reference without an output in {outputs}")
    if ins is not None:
        for rel in ins.by_key.values():
            if rel not in used_inputs:
                problems.append(f"{ins.path(rel)}: input without an output in {outputs}")
    return plan


def load_manifest(path: str) -> dict:
    """Read a ``--simulate`` manifest. Raises UserError (one line) when missing or malformed."""
    try:
        with open(path) as f:
            m = json.load(f)
    except OSError as e:
        raise UserError(f"{path}: cannot read the manifest ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not a valid manifest (JSON error: {e.msg} at line {e.lineno})") from None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT or not isinstance(m.get("items"), list):
        raise UserError(f"{path}: not a manifest written by --simulate")
    for item in m["items"]:
        if not isinstance(item, dict) or not {"input", "reference", "cutoff_hz"} <= item.keys():
            raise UserError(f"{path}: manifest item without input / reference / cutoff_hz: {item!r}")
    m["_dir"] = os.path.dirname(os.path.abspath(path))
    return m
