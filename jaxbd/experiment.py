"""One experiment, top to bottom: data → poison → train → evaluate → summary.json.

`run(config, workdir)` is what `scripts/train.py` calls. Read it first: each stage is one
call into a library module, and every random choice comes from its own named stream of
`config.seed` (`jaxbd.rng.stream`).

Training runs in named *phases* (only "dense" so far), each checkpointed at the end of every
epoch under `workdir/checkpoints/<phase>`. Re-running the same command resumes at the last
finished epoch; a finished run (`summary.json` present) is never overwritten.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxbd import attacks, metrics, models, rng
from jaxbd import logging as runlog
from jaxbd.checkpoint import Checkpointer
from jaxbd.data import load_dataset
from jaxbd.train import CosineSchedule, DeviceData, Trainer, TrainState, make_mesh

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the valid values."""


def _check(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config.{field}: {message}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every value the pipeline uses before any work starts.

    Raises:
        ConfigError: naming the offending field, its value and what is allowed.
    """
    c = config
    _check(
        c.data.name in ("cifar10", "synthetic"),
        "data.name",
        f"must be 'cifar10' or 'synthetic', got {c.data.name!r}",
    )
    _check(
        c.attack.name in attacks.ATTACKS,
        "attack.name",
        f"must be one of {sorted(attacks.ATTACKS)}, got {c.attack.name!r}",
    )
    _check(
        0.0 <= c.attack.fraction <= 1.0,
        "attack.fraction",
        f"must be in [0, 1], got {c.attack.fraction}",
    )
    _check(
        c.model.name in models.MODELS,
        "model.name",
        f"must be one of {sorted(models.MODELS)}, got {c.model.name!r}",
    )
    _check(c.model.width >= 1, "model.width", f"must be >= 1, got {c.model.width}")
    _check(
        c.model.dtype in ("auto", *DTYPES),
        "model.dtype",
        f"must be one of {['auto', *DTYPES]}, got {c.model.dtype!r}",
    )
    t = c.train
    _check(t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}")
    _check(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    _check(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
    _check(
        0 <= t.end_lr <= t.lr, "train.end_lr", f"must be in [0, train.lr={t.lr}], got {t.end_lr}"
    )
    _check(
        0 <= t.warmup_epochs < t.epochs,
        "train.warmup_epochs",
        f"must be in [0, train.epochs={t.epochs}), got {t.warmup_epochs}",
    )
    _check(0 <= t.momentum < 1, "train.momentum", f"must be in [0, 1), got {t.momentum}")
    _check(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    _check(t.crop_padding >= 0, "train.crop_padding", f"must be >= 0, got {t.crop_padding}")
    _check(
        t.eval_every_epochs >= 0,
        "train.eval_every_epochs",
        f"must be >= 0, got {t.eval_every_epochs}",
    )
    _check(
        len(c.data.mean) == 3 and len(c.data.std) == 3 and min(c.data.std) > 0,
        "data.mean/std",
        "need three channel values each, std > 0",
    )
    _check(
        c.runtime.steps_per_call is None or c.runtime.steps_per_call >= 1,
        "runtime.steps_per_call",
        f"must be None (auto) or >= 1, got {c.runtime.steps_per_call}",
    )


def resolve_dtype(name: str) -> jnp.dtype:
    """The compute dtype: "auto" is bfloat16 on accelerators and float32 on the CPU, where
    bf16 convolutions are emulated and slower."""
    if name == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return DTYPES[name]


def evaluate(
    trainer: Trainer,
    state: TrainState,
    test_images: jax.Array,
    test_labels: np.ndarray,
    triggered: attacks.TriggeredTestSet,
    triggered_images: jax.Array,
) -> dict[str, float]:
    """Clean accuracy, ASR (target class excluded), ASR over all images, robust accuracy.

    Args:
        trainer: supplies the compiled inference step.
        state: the model to evaluate.
        test_images: uint8[M, H, W, 3] clean test images on the device.
        test_labels: int32[M] their labels.
        triggered: the triggered test set (its labels and eligibility mask).
        triggered_images: `triggered.images` on the device.
    """
    clean = trainer.predict_labels(state, test_images)
    poisoned = trainer.predict_labels(state, triggered_images)
    return {
        "clean_accuracy": float(metrics.clean_accuracy(clean, test_labels)),
        "attack_success_rate": float(
            metrics.attack_success_rate(poisoned, triggered.labels, triggered.true_labels)
        ),
        "asr_all_images": float(metrics.asr_all_images(poisoned, triggered.labels)),
        "robust_accuracy": float(
            metrics.robust_accuracy(poisoned, triggered.labels, triggered.true_labels)
        ),
    }


def train_phase(
    name: str,
    trainer: Trainer,
    state: TrainState,
    data: DeviceData,
    *,
    epochs: int,
    shuffle_key: jax.Array,
    rundir: runlog.RunDir,
    evaluate_fn: Callable[[TrainState], dict[str, float]],
    eval_every: int,
    indices: jax.Array | None = None,
) -> tuple[TrainState, dict[str, Any]]:
    """Trains for `epochs` epochs with a checkpoint after each, resuming if one exists.

    Args:
        name: phase name (checkpoint sub-directory and `phase` field of log rows).
        trainer: the compiled engine.
        state: the phase's initial state (also the template a checkpoint restores into).
        data: the on-device training data.
        epochs: epochs in this phase.
        shuffle_key: epoch e shuffles with `fold_in(shuffle_key, e)`, so a resumed run
            sees the same order as an uninterrupted one.
        rundir: where rows are logged.
        evaluate_fn: state → test metrics, called every `eval_every` epochs and at the end.
        eval_every: evaluation period in epochs (0: only after the last epoch).
        indices: optional int32[K] examples that make up each epoch.

    Returns:
        (final state, last epoch's log row).
    """
    checkpointer = Checkpointer(os.path.join(rundir.path, "checkpoints", name))
    start, row = 0, {}
    latest = checkpointer.latest_step()
    if latest is not None:
        state, meta = checkpointer.restore(latest, state)
        start, row = int(meta["epoch"]), dict(meta.get("row", {}))
        logging.info("phase %s: resuming after epoch %d of %d", name, start, epochs)
        rundir.log({"event": "resume", "phase": name, "epoch": start})
    step = int(state.step)
    for epoch in range(start + 1, epochs + 1):
        state, stats, _ = trainer.train_epoch(
            state,
            data,
            jax.random.fold_in(shuffle_key, epoch),
            indices=indices,
            desc=f"{name} epoch {epoch}/{epochs}",
        )
        step += stats.steps
        row = {
            "event": "epoch",
            "phase": name,
            "epoch": epoch,
            "step": step,
            "loss": stats.loss,
            "accuracy": stats.accuracy,
            "lr": stats.lr,
            "seconds": stats.seconds,
            "images_per_second": stats.images_per_second,
        }
        if epoch == epochs or (eval_every and epoch % eval_every == 0):
            row.update({f"test_{k}": v for k, v in evaluate_fn(state).items()})
        rundir.log(row)
        logging.info(
            "%s epoch %d/%d: loss %.4f, train accuracy %.4f, %.1f s (%.0f images/s)%s",
            name,
            epoch,
            epochs,
            stats.loss,
            stats.accuracy,
            stats.seconds,
            stats.images_per_second,
            f", test accuracy {row['test_clean_accuracy']:.4f}, ASR "
            f"{row['test_attack_success_rate']:.4f}"
            if "test_clean_accuracy" in row
            else "",
        )
        checkpointer.save(epoch, state, {"epoch": epoch, "row": row})
    checkpointer.close()
    return state, row


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) one experiment and returns its summary.

    Args:
        config: an experiment configuration (see `jaxbd.configs.base_config`).
        workdir: the run directory; created if missing, resumed if it holds an unfinished
            run with the same configuration, refused if finished or different.

    Returns:
        The summary also written to `workdir/summary.json`.
    """
    validate_config(config)
    started = time.perf_counter()
    rundir = runlog.RunDir(workdir)
    rundir.check_not_finished()

    # Data and poisoning.
    splits = load_dataset(config.data)
    train_set, test_set = splits.train, splits.test
    _check(
        0 <= config.attack.target < train_set.num_classes,
        "attack.target",
        f"must be in [0, {train_set.num_classes}), got {config.attack.target}",
    )
    attack = attacks.make_attack(config.attack)

    # Model and engine (this validates the batch sizes against the devices).
    mesh = make_mesh(config.runtime.num_devices)
    dtype = resolve_dtype(config.model.dtype)
    model = models.MODELS[config.model.name](
        num_classes=train_set.num_classes, width=config.model.width, dtype=dtype
    )
    t = config.train
    trainer = Trainer(
        model,
        mesh,
        batch_size=t.batch_size,
        eval_batch_size=config.runtime.eval_batch_size,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        mean=tuple(config.data.mean),
        std=tuple(config.data.std),
        crop_padding=t.crop_padding,
        flip=t.flip,
        steps_per_call=config.runtime.steps_per_call,
        progress=config.runtime.progress,
    )
    steps_per_epoch = trainer.steps_per_epoch(len(train_set))
    if steps_per_epoch == 0:
        raise ConfigError(
            f"config.train.batch_size={t.batch_size} exceeds the {len(train_set)} training examples"
        )

    # Everything is valid: claim the run directory (new run, or resume).
    resumed = rundir.open(config.to_dict())
    rundir.log({"event": "start", "resumed": resumed, "time": time.time()})
    poisoned = attacks.poison_dataset(
        rng.stream(config.seed, "poison"),
        train_set,
        attack,
        fraction=config.attack.fraction,
        exclude_target=config.attack.exclude_target,
    )
    triggered = attacks.triggered_test_set(
        rng.stream(config.seed, "test_trigger"), test_set, attack
    )
    logging.info(
        "data: %s; %d training images, %d poisoned (%s → class %d)",
        splits.source,
        len(train_set),
        len(poisoned.poison_indices),
        attack.name,
        attack.target,
    )
    data = trainer.put(poisoned.dataset.images, poisoned.dataset.labels)
    test_images = trainer.replicate(test_set.images)
    triggered_images = trainer.replicate(triggered.images)

    def evaluate_fn(state):
        return evaluate(trainer, state, test_images, test_set.labels, triggered, triggered_images)

    # Dense training on the whole poisoned set.
    schedule = CosineSchedule.create(
        t.lr,
        t.epochs * steps_per_epoch,
        end=t.end_lr,
        warmup_steps=t.warmup_epochs * steps_per_epoch,
    )
    state = trainer.init_state(
        rng.stream(config.seed, "init"),
        train_set.image_shape,
        schedule,
        rng=rng.stream(config.seed, "augment"),
    )
    train_started = time.perf_counter()
    state, last_row = train_phase(
        "dense",
        trainer,
        state,
        data,
        epochs=t.epochs,
        shuffle_key=rng.stream(config.seed, "shuffle"),
        rundir=rundir,
        evaluate_fn=evaluate_fn,
        eval_every=t.eval_every_epochs,
    )
    train_seconds = time.perf_counter() - train_started

    # The last epoch's row already holds the final test metrics (train_phase always
    # evaluates after the last epoch, and a resumed finished phase restores that row).
    result = {k.removeprefix("test_"): v for k, v in last_row.items() if k.startswith("test_")}
    if not result:
        result = evaluate_fn(state)
    all_indices = np.arange(len(train_set))
    summary = {
        **result,
        "poison_retention": float(metrics.poison_retention(poisoned.is_poison, all_indices)),
        "num_train": len(train_set),
        "num_selected": len(train_set),
        "num_poison": len(poisoned.poison_indices),
        "num_test": len(test_set),
        "num_test_triggered_eligible": int(np.sum(triggered.eligible)),
        "attack": attack.name,
        "target": attack.target,
        "data_source": splits.source,
        "final_train_loss": last_row.get("loss"),
        "final_train_accuracy": last_row.get("accuracy"),
        "epochs": t.epochs,
        "seed": config.seed,
        "model": config.model.name,
        "width": config.model.width,
        "compute_dtype": jnp.dtype(dtype).name,
        "num_parameters": int(sum(p.size for p in jax.tree.leaves(state.params))),
        "devices": int(mesh.devices.size),
        "device_kind": mesh.devices.flat[0].device_kind,
        "platform": jax.default_backend(),
        "jax_version": jax.__version__,
        "python_version": platform.python_version(),
        "resumed": resumed,
        "train_seconds_this_invocation": train_seconds,
        "wall_seconds": time.perf_counter() - started,
    }
    rundir.log({"event": "end", **result})
    rundir.write_summary(summary)
    return summary
