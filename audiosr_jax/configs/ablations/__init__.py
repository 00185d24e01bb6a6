"""Ablation grids for ``ablate.py`` (one module per grid, ``get_config()``), and the base they share."""

import ml_collections


def demo_base() -> ml_collections.ConfigDict:
    """The shared part of a grid on the demo's setup: its workdir (dataset, frozen tiny VAE and vocoder, trained
    there by the demo's recipe if missing), the offline corpus, and the LDM training every cell shares (the
    demo's recipe: 400 steps, batch 4, data seed 0)."""
    return ml_collections.ConfigDict(dict(
        workdir="out/demo",  # the demo's workdir: its dataset, VAE and vocoder (trained there by its recipe if missing)
        corpus="",           # an existing corpus folder ("" = build one with data/build_corpus.py)
        cache="out/corpus_cache", minutes=20.0,
        ldm=dict(train=dict(total_steps=400, batch_size=4, eval_batch_size=4, eval_every=250, save_every=100),
                 data=dict(seed=0)),
    ))
