"""Offline patches for running AudioSR 0.0.7 on a CPU-only machine without network access (docs/design.md
§Reference environment).

Import this module before anything from `audiosr`:

    import patches          # patches transformers and torchaudio, forces the hubs offline
    import audiosr          # now imports without network, CUDA torchaudio or torchvision

What it changes, and why (none of it is on the super-resolution numeric path):
* `RobertaTokenizer.from_pretrained("roberta-base")` runs at import time in `audiosr/clap/training/data.py` and in
  the CLAP constructor: it returns a dummy tokenizer that raises if used.
* `RobertaConfig.from_pretrained("roberta-base")` (CLAP text branch): returns the roberta-base hyper-parameters
  offline, so a CLAP built from the config gets the released key shapes.
* `torchaudio.load` needs torchcodec in torchaudio 2.11: replaced by a soundfile reader with the same contract
  (float32 tensor [channels, samples] in [-1, 1], sample rate).
`empty_clap()` gives the stand-in for `CLAPAudioEmbeddingClassifierFreev2` (unused for SR) that
`reference_model.py` installs after `audiosr` is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
import torchaudio  # noqa: E402
import transformers  # noqa: E402

__all__ = ["ROBERTA_BASE", "DummyTokenizer", "soundfile_load", "empty_clap"]

# roberta-base's config.json values (the ones that shape CLAP's text-branch tensors).
ROBERTA_BASE = dict(
    vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=514,
    type_vocab_size=1, initializer_range=0.02, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
    eos_token_id=2,
)


class DummyTokenizer:
    """Stands in for the roberta-base tokenizer, which CLAP creates eagerly but super-resolution never uses."""

    name_or_path = "roberta-base (offline dummy)"

    def __call__(self, *args, **kwargs):
        raise NotImplementedError("the roberta-base tokenizer is not available offline (AudioSR reference venv)")

    def __getattr__(self, name):
        raise NotImplementedError(f"DummyTokenizer.{name}: roberta-base is not available offline")


def _offline_tokenizer(original):
    def from_pretrained(cls, name, *args, **kwargs):
        if str(name) == "roberta-base":
            return DummyTokenizer()
        return original.__func__(cls, name, *args, **kwargs)

    return classmethod(from_pretrained)


def _offline_roberta_config(original):
    def from_pretrained(cls, name, *args, **kwargs):
        if str(name) == "roberta-base":
            return cls(**ROBERTA_BASE)
        return original.__func__(cls, name, *args, **kwargs)

    return classmethod(from_pretrained)


def soundfile_load(filepath, frame_offset: int = 0, num_frames: int = -1, normalize: bool = True,
                   channels_first: bool = True, **_unused):
    """`torchaudio.load` through soundfile: (float32 tensor [C, N] (or [N, C]), sample rate in Hz)."""
    stop = None if num_frames is None or num_frames < 0 else frame_offset + num_frames
    data, sr = sf.read(os.fspath(filepath), start=frame_offset, stop=stop, dtype="float32", always_2d=True)
    wav = torch.from_numpy(np.ascontiguousarray(data.T if channels_first else data))
    return wav, sr


def empty_clap(*_args, **_kwargs) -> torch.nn.Module:
    """Replacement for `CLAPAudioEmbeddingClassifierFreev2(...)`: an empty module (no keys, no compute)."""
    return torch.nn.Module()


for _cls in (transformers.RobertaTokenizer, transformers.RobertaTokenizerFast):
    if not getattr(_cls, "_audiosr_offline", False):
        _cls.from_pretrained = _offline_tokenizer(classmethod(_cls.from_pretrained.__func__))
        _cls._audiosr_offline = True
if not getattr(transformers.RobertaConfig, "_audiosr_offline", False):
    transformers.RobertaConfig.from_pretrained = _offline_roberta_config(
        classmethod(transformers.RobertaConfig.from_pretrained.__func__))
    transformers.RobertaConfig._audiosr_offline = True
torchaudio.load = soundfile_load
