"""The training and validation batches of a config: the TFDS split, read by the grain loader onto the mesh."""

from __future__ import annotations

from typing import Any

from audiosr_jax import sharding as shd


def batch_axes_of(rules, mesh) -> tuple:
    """The mesh axes the batch dimension is sharded over under ``rules`` (a tuple of names, () = replicated)."""
    axes = shd.batch_spec(rules, mesh)[0]
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def loader_config(config: Any, *, batch_size: int, train: bool):
    """The `LoaderConfig` of a training config's ``data`` section for ``batch_size`` global examples
    (``train``: the training stream; else the validation one)."""
    from audiosr_jax.data.loader import LoaderConfig

    d = config.data
    return LoaderConfig(
        global_batch_size=int(batch_size),
        crop_samples=int(d.crop_samples),
        seed=int(d.seed) if train else int(d.seed) + 1,
        shuffle=train,
        num_epochs=None if train else 1,
        worker_count=int(d.worker_count) if train else 0,
        lowpass=str(d.lowpass),
        degrade=d.degrade.to_dict(),
    )


def make_train_iterator(config: Any, mesh, rules):
    """Endless, checkpointable iterator of global training batches (see ``audiosr_jax.data.loader``)."""
    from audiosr_jax.data.loader import make_loader
    from audiosr_jax.data.segments import open_split

    source = open_split(config.data.dataset_dir, "train")
    return iter(make_loader(source, loader_config(config, batch_size=config.train.batch_size, train=True), mesh,
                            batch_axes=batch_axes_of(rules, mesh)))


def make_eval_batches(config: Any, mesh, rules):
    """A callable giving the same first ``train.eval_batches`` validation batches each time (or None)."""
    n = int(config.train.get("eval_batches", 0))
    if not n or not int(config.train.get("eval_every", 0)):
        return None
    from audiosr_jax.data.loader import make_loader
    from audiosr_jax.data.segments import open_split

    source = open_split(config.data.dataset_dir, "validation")
    cfg = loader_config(config, batch_size=config.train.eval_batch_size, train=False)

    def batches():
        it = iter(make_loader(source, cfg, mesh, batch_axes=batch_axes_of(rules, mesh)))
        for _ in range(n):
            try:
                yield next(it)
            except StopIteration:
                return

    return batches
