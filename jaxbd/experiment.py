"""One experiment, top to bottom: data → poison → select → train dense and pruned → evaluate →
summary.json.

`run(config, workdir)` is what `scripts/train.py` calls. Read it first: each stage is one
call into a library module, and every random choice comes from its own named stream of
`config.seed` (`jaxbd.rng.stream`). `run_group(configs, workdirs)` runs replicate seeds of
one experiment with their training phases batched into one model (what `jaxbd.sweep` uses);
`run` is a group of one.

Training runs in named *phases* ("pretrain" and "pretrain_<m>" for selection, "dense" on the
selection, "imp_rewind", "imp_round<r>" and "pruned" for the pruned arm; `jaxbd.phase`),
each checkpointed at the end of every epoch under `workdir/checkpoints/<phase>`; the
selection itself is saved as `workdir/selection.npz`. Re-running the same command resumes at
the last finished epoch; a finished run (`summary.json` present) is never overwritten.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxbd import attacks, models, rng
from jaxbd import logging as runlog
from jaxbd import prune as prune_lib
from jaxbd import select as select_lib
from jaxbd.data import Dataset, load_dataset
from jaxbd.phase import EpochFn, evaluate, train_phase, train_phase_group
from jaxbd.select import pipeline as select_pipeline
from jaxbd.train import (
    CosineSchedule,
    DeviceData,
    Trainer,
    TrainState,
    init_variables,
    make_mesh,
)

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
        c.attack.surrogate_epochs >= 1,
        "attack.surrogate_epochs",
        f"must be >= 1, got {c.attack.surrogate_epochs}",
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
    _validate_select(c)
    _validate_prune(c)
    _check(
        c.runtime.steps_per_call is None or c.runtime.steps_per_call >= 1,
        "runtime.steps_per_call",
        f"must be None (auto) or >= 1, got {c.runtime.steps_per_call}",
    )


def _validate_select(c: ml_collections.ConfigDict) -> None:
    s = c.select
    if s.name is None:
        return
    _check(
        s.name in select_pipeline.METHODS,
        "select.name",
        f"must be None (full set) or one of {list(select_pipeline.METHODS)}, got {s.name!r}",
    )
    _check(0 < s.fraction <= 1, "select.fraction", f"must be in (0, 1], got {s.fraction}")
    _check(
        s.variant in select_pipeline.VARIANTS,
        "select.variant",
        f"must be one of {list(select_pipeline.VARIANTS)}, got {s.variant!r}",
    )
    _check(
        s.pretrain_epochs >= 1, "select.pretrain_epochs", f"must be >= 1, got {s.pretrain_epochs}"
    )
    _check(
        0 <= s.pretrain_warmup_epochs < s.pretrain_epochs,
        "select.pretrain_warmup_epochs",
        f"must be in [0, select.pretrain_epochs={s.pretrain_epochs}), got "
        f"{s.pretrain_warmup_epochs}",
    )
    _check(
        s.score.ensemble_size >= 1,
        "select.score.ensemble_size",
        f"must be >= 1, got {s.score.ensemble_size}",
    )
    epochs = tuple(s.score.score_epochs)
    _check(
        len(epochs) > 0 and all(1 <= e <= s.pretrain_epochs for e in epochs),
        "select.score.score_epochs",
        f"must be a non-empty list of epochs in [1, select.pretrain_epochs="
        f"{s.pretrain_epochs}], got {list(epochs)}",
    )
    for field in ("score", "forgetting"):
        sub = s[field]
        _check(
            sub.keep in ("hard", "easy"),
            f"select.{field}.keep",
            f"must be 'hard' or 'easy', got {sub.keep!r}",
        )
        _check(
            0 <= sub.offset < 1, f"select.{field}.offset", f"must be in [0, 1), got {sub.offset}"
        )
    _check(
        s.score.parallel in ("auto", "vmap", "sequential"),
        "select.score.parallel",
        f"must be 'auto', 'vmap' or 'sequential', got {s.score.parallel!r}",
    )
    _check(
        s.score.chunk_size >= 1,
        "select.score.chunk_size",
        f"must be >= 1, got {s.score.chunk_size}",
    )
    _check(
        s.craig.proxy in ("error", "concat", "outer"),
        "select.craig.proxy",
        f"must be 'error', 'concat' or 'outer', got {s.craig.proxy!r}",
    )
    _check(
        s.craig.greedy in ("exact", "lazy", "stochastic"),
        "select.craig.greedy",
        f"must be 'exact', 'lazy' or 'stochastic', got {s.craig.greedy!r}",
    )
    _check(
        0 < s.craig.epsilon < 1, "select.craig.epsilon", f"must be in (0, 1), got {s.craig.epsilon}"
    )


def imp_settings(config: ml_collections.ConfigDict) -> prune_lib.IMPSettings:
    """The pruned arm's IMP settings from `config.prune` (rounds must be ≥ 1)."""
    p = config.prune
    return prune_lib.IMPSettings(
        rounds=p.rounds,
        rate=p.rate,
        scope=p.scope,
        rewind_epoch=p.rewind_epoch,
        round_epochs=p.round_epochs,
        final_epochs=config.train.epochs if p.final_epochs is None else p.final_epochs,
        control=p.control,
    )


def _validate_prune(c: ml_collections.ConfigDict) -> None:
    _check(
        c.prune.rounds >= 0,
        "prune.rounds",
        f"must be >= 0 (0: no pruned arm), got {c.prune.rounds}",
    )
    if c.prune.rounds == 0:
        return
    try:
        settings = imp_settings(c)
    except ValueError as e:
        raise ConfigError(f"config.prune.{e}") from None
    for field, epochs in (
        ("round_epochs", settings.round_epochs),
        ("final_epochs", settings.final_epochs),
    ):
        _check(
            c.train.warmup_epochs < epochs,
            "train.warmup_epochs",
            f"must be below prune.{field}={epochs} (the pruned arm's schedules warm up too), "
            f"got {c.train.warmup_epochs}",
        )


def resolve_dtype(name: str) -> jnp.dtype:
    """The compute dtype: "auto" is bfloat16 on accelerators and float32 on the CPU, where
    bf16 convolutions are emulated and slower."""
    if name == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return DTYPES[name]


def _untrained_surrogate(images):
    raise AssertionError("only used to validate hyper-parameters; never called")


def _adversarial_clean_label(config, trainer, train_set, rundir) -> attacks.Attack:
    """Trains the surrogate of an adversarial clean-label attack on the clean training set
    (phase "surrogate", `attack.surrogate_epochs` epochs with the train.* settings and its
    own random streams) and builds the attack around it (Turner et al. 2019)."""
    t = config.train
    steps = trainer.steps_per_epoch(len(train_set)) * config.attack.surrogate_epochs
    schedule = CosineSchedule.create(t.lr, steps, end=t.end_lr)
    state = trainer.init_state(
        rng.stream(config.seed, "surrogate/init"),
        train_set.image_shape,
        schedule,
        rng=rng.stream(config.seed, "surrogate/augment"),
    )
    state, _, _ = train_phase(
        "surrogate",
        trainer,
        state,
        trainer.put(train_set.images, train_set.labels),
        epochs=config.attack.surrogate_epochs,
        shuffle_key=rng.stream(config.seed, "surrogate/shuffle"),
        rundir=rundir,
        evaluate_fn=None,
        eval_every=0,
    )
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits_fn = attacks.surrogate_logits_fn(
        trainer.model, variables, tuple(config.data.mean), tuple(config.data.std)
    )
    return attacks.make_attack(
        config.attack, num_classes=train_set.num_classes, logits_fn=logits_fn
    )


def _parameter_controlled_backdoor(config, trainer, train_set):
    """The PCB attack (Lukas & Kerschbaum 2023): its fixed random parameter subset is drawn
    from the "pcb_mask" stream over the model's parameter shapes; its trigger is BadNets
    configured by `config.attack.badnets`."""
    trigger = attacks.badnets(
        target=config.attack.target, **attacks.make_attack_kwargs(config.attack, "badnets")
    )
    params, _ = init_variables(
        trainer.model, rng.stream(config.seed, "init"), train_set.image_shape
    )
    hparams = attacks.make_attack_kwargs(config.attack, "pcb")
    return attacks.pcb(
        params,
        key=rng.stream(config.seed, "pcb_mask"),
        target=config.attack.target,
        trigger=trigger,
        **hparams,
    )


def _pcb_epoch_fn(config, trainer, train_set, attack):
    """An `epoch_fn` for `train_phase` running PCB's alternating epochs. The poisoned steps
    draw from triggered copies of `attack.fraction` of the training images ("poison")."""
    pool = attack.poison_source(
        rng.stream(config.seed, "poison"),
        train_set,
        fraction=config.attack.fraction,
        exclude_target=config.attack.exclude_target,
    )
    pool_data = trainer.put(pool.images, pool.labels)
    update_mask = trainer.replicate(attack.update_mask)

    def epoch_fn(state, data, key, *, indices=None, desc="train", record_presentations=False):
        state, stats = attack.train_epoch(
            trainer,
            state,
            data,
            pool_data,
            key,
            indices=indices,
            update_mask=update_mask,
            desc=desc,
        )
        return state, _PCBEpochStats(stats), None

    return epoch_fn


class _PCBEpochStats:
    """An alternating epoch's statistics under `EpochStats`'s names (the clean steps' loss
    and accuracy), with the poisoned steps' figures in `extra` for the log."""

    def __init__(self, stats):
        self.loss = stats.clean_loss
        self.accuracy = stats.clean_accuracy
        self.lr = stats.lr
        self.steps = stats.clean_steps + stats.poison_steps
        self.seconds = stats.seconds
        self.images_per_second = stats.images_per_second
        self.extra = {
            "poison_loss": stats.poison_loss,
            "poison_accuracy": stats.poison_accuracy,
            "poison_steps": stats.poison_steps,
        }


_TRAINERS: dict[tuple, Trainer] = {}


def make_trainer(config: ml_collections.ConfigDict, num_classes: int) -> Trainer:
    """The engine for a configuration, reused across runs in one process.

    A `Trainer` owns compiled functions; runs that share the model, mesh and optimizer
    settings (the methods and seeds of a sweep, the tests) reuse one instead of compiling
    the same steps again. Only the progress-bar flag is updated per run.
    """
    t = config.train
    mesh = make_mesh(config.runtime.num_devices)
    dtype = resolve_dtype(config.model.dtype)
    key = (
        config.model.name,
        config.model.width,
        jnp.dtype(dtype).name,
        num_classes,
        tuple(d.id for d in mesh.devices.flat),
        t.batch_size,
        config.runtime.eval_batch_size,
        t.momentum,
        t.weight_decay,
        tuple(config.data.mean),
        tuple(config.data.std),
        t.crop_padding,
        t.flip,
        config.runtime.steps_per_call,
    )
    if key not in _TRAINERS:
        model = models.MODELS[config.model.name](
            num_classes=num_classes, width=config.model.width, dtype=dtype
        )
        _TRAINERS[key] = Trainer(
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
        )
    trainer = _TRAINERS[key]
    trainer.progress = config.runtime.progress
    return trainer


def _final_metrics(last_row: dict, state, evaluate_fn) -> dict[str, float]:
    """A phase's final test metrics: its last log row holds them (`train_phase` always
    evaluates after the last epoch, and a resumed finished phase restores that row);
    evaluated afresh only if the row lacks them."""
    metrics = {k.removeprefix("test_"): v for k, v in last_row.items() if k.startswith("test_")}
    return metrics or evaluate_fn(state)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) one experiment and returns its summary.

    Args:
        config: an experiment configuration (see `jaxbd.configs.base_config`).
        workdir: the run directory; created if missing, resumed if it holds an unfinished
            run with the same configuration, refused if finished or different.

    Returns:
        The summary also written to `workdir/summary.json`.
    """
    return run_group([config], [workdir])[0]


def run_group(
    configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str]
) -> list[dict[str, Any]]:
    """Runs (or resumes) experiments that differ only in their seed, training them together.

    Each experiment is prepared as `run` would (data, poisoning, selection, each in its own
    run directory), then the dense arms train as one `vmap`-batched model
    (`jaxbd.phase.train_phase_group`), and the pruned arms likewise (`prune.run_imp_group`).
    Every run directory holds what `run` writes (the same phases, checkpoints, log rows and
    summary fields) and resumes either way. The computation is the same too, but not bit
    for bit: batched kernels round differently, and training amplifies rounding, so a
    grouped run is another equally valid draw of the same experiment rather than a copy of
    the one-at-a-time run (BENCHMARKS.md measures how far they drift). Worth it where one
    model leaves the device idle (a small network on an accelerator); on the CPU one model
    already occupies every core and batching is slower (BENCHMARKS.md).

    Args:
        configs: experiment configurations equal in everything but `seed`.
        workdirs: one distinct run directory per configuration.

    Returns:
        Each experiment's summary, in order.

    Raises:
        ConfigError: if the configurations differ in more than the seed, or use a
            training-time attack (PCB trains one model with its own epoch function).
    """
    if len(configs) != len(workdirs) or not configs:
        raise ValueError("run_group needs one workdir per config, and at least one config")
    for config in configs:
        validate_config(config)
    if len(configs) > 1:
        _check_groupable(configs, workdirs)
        for workdir in workdirs:  # before any directory is claimed
            runlog.RunDir(workdir).check_not_finished()
    cells = [_prepare(config, workdir) for config, workdir in zip(configs, workdirs, strict=True)]
    sizes = {len(cell.selection) for cell in cells}
    # Subsets of one fraction have one size; anything else trains one at a time.
    groups = [cells] if len(sizes) == 1 else [[cell] for cell in cells]
    if len(groups) > 1:
        logging.warning("selections of different sizes %s: training one at a time", sizes)
    for group in groups:
        _train_dense(group)
        if configs[0].prune.rounds > 0:
            _train_pruned(group)
    return [_finish(cell, len(cells) // len(groups)) for cell in cells]


def _check_groupable(configs, workdirs) -> None:
    """Refuses experiments that cannot train as one batched model."""
    first = configs[0].to_dict()
    for config in configs[1:]:
        diff = [
            line
            for line in runlog.config_differences(first, config.to_dict(), ignore=())
            if not line.startswith("seed:")
        ]
        if diff:
            raise ConfigError(
                "experiments trained together must differ only in config.seed, got:\n  "
                + "\n  ".join(diff)
            )
    if configs[0].attack.name == "pcb":
        raise ConfigError(
            "config.attack.name=pcb trains one model at a time (alternating poisoned steps); "
            "run its seeds separately"
        )
    if len({os.path.abspath(w) for w in workdirs}) < len(workdirs):
        raise ConfigError(f"experiments trained together need distinct workdirs: {workdirs}")


@dataclasses.dataclass
class _Cell:
    """One prepared experiment: everything its training phases and summary need."""

    config: ml_collections.ConfigDict
    rundir: runlog.RunDir
    started: float
    resumed: bool
    trainer: Trainer
    source: str
    train_set: Dataset
    test_set: Dataset
    attack: attacks.Attack
    poisoned: attacks.PoisonedDataset
    triggered: attacks.TriggeredTestSet
    data: DeviceData  # the poisoned training set, with the selection's loss weights
    indices: jax.Array | None  # the selection (None: every example)
    selection: select_lib.Selection
    selection_info: dict
    evaluate_fn: Callable[[TrainState], dict[str, float]]
    make_schedule: Callable[[int], CosineSchedule]  # epochs -> schedule over this selection
    epoch_fn: EpochFn | None  # a training-time attack's epoch (PCB), else None
    # Filled in by the training stages:
    state: TrainState | None = None  # the trained dense model
    dense: dict | None = None  # its final test metrics
    last_row: dict | None = None  # the dense phase's last log row
    train_seconds: float = 0.0
    pruned: dict | None = None  # the pruned arm's summary object


def _prepare(config: ml_collections.ConfigDict, workdir: str) -> _Cell:
    """Validates, claims the run directory, poisons and selects: everything before the
    dense arm's training."""
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
    # Model and engine (this validates the batch sizes against the devices).
    trainer = make_trainer(config, train_set.num_classes)
    # Build the attack now so bad hyper-parameters fail before anything is written (an
    # adversarial clean-label attack is rebuilt around its trained surrogate below).
    try:
        if config.attack.name == "pcb":
            attack = _parameter_controlled_backdoor(config, trainer, train_set)
        else:
            attack = attacks.make_attack(
                config.attack, num_classes=train_set.num_classes, logits_fn=_untrained_surrogate
            )
    except ValueError as e:
        raise ConfigError(f"config.attack.{config.attack.name}: {e}") from None
    t = config.train
    if trainer.steps_per_epoch(len(train_set)) == 0:
        raise ConfigError(
            f"config.train.batch_size={t.batch_size} exceeds the {len(train_set)} training examples"
        )
    if config.select.name is not None:
        k = select_lib.num_to_select(len(train_set), config.select.fraction)
        _check(
            trainer.steps_per_epoch(k) > 0,
            "select.fraction",
            f"selects {k} of {len(train_set)} examples, fewer than one batch of "
            f"train.batch_size={t.batch_size}",
        )

    # Everything is valid: claim the run directory (new run, or resume).
    resumed = rundir.open(config.to_dict())
    rundir.log({"event": "start", "resumed": resumed, "time": time.time()})
    if config.attack.name == "adv_clean_label":
        attack = _adversarial_clean_label(config, trainer, train_set, rundir)
    epoch_fn = None
    if isinstance(attack, attacks.ParameterControlledBackdoor):
        # A training-time attack: the training set stays clean; the dense phase alternates
        # clean steps with poisoned steps drawn from a pool of triggered copies.
        poisoned = attacks.PoisonedDataset(
            dataset=train_set,
            is_poison=np.zeros(len(train_set), bool),
            original_labels=train_set.labels.copy(),
            poison_indices=np.zeros(0, np.int32),
            target=attack.target,
        )
        epoch_fn = _pcb_epoch_fn(config, trainer, train_set, attack)
    else:
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

    # Selection (SPEC §2): pretrain as the method needs, score, choose a weighted subset.
    if config.select.name is None:
        selection = select_lib.make_selection(np.arange(len(train_set)))
        selection_info = {}
    else:
        selection, selection_info = select_pipeline.run_selection(
            config,
            trainer,
            data,
            poisoned.dataset.labels,
            image_shape=train_set.image_shape,
            num_classes=train_set.num_classes,
            rundir=rundir,
        )
        # Weights become per-example loss weights with mean 1 over the subset (SPEC §2);
        # unselected examples never appear in an epoch.
        weights = np.zeros(len(train_set), np.float32)
        weights[selection.indices] = selection.weights * (
            len(selection) / float(np.sum(selection.weights))
        )
        data = trainer.put(poisoned.dataset.images, poisoned.dataset.labels, weights)
    num_selected = len(selection)
    indices = None if config.select.name is None else trainer.replicate(selection.indices)

    # Dense training on the selection (the whole poisoned set without one).
    steps_per_epoch = trainer.steps_per_epoch(num_selected)

    def make_schedule(epochs: int) -> CosineSchedule:
        return CosineSchedule.create(
            t.lr,
            epochs * steps_per_epoch,
            end=t.end_lr,
            warmup_steps=t.warmup_epochs * steps_per_epoch,
        )

    return _Cell(
        config=config,
        rundir=rundir,
        started=started,
        resumed=resumed,
        trainer=trainer,
        source=splits.source,
        train_set=train_set,
        test_set=test_set,
        attack=attack,
        poisoned=poisoned,
        triggered=triggered,
        data=data,
        indices=indices,
        selection=selection,
        selection_info=selection_info,
        evaluate_fn=evaluate_fn,
        make_schedule=make_schedule,
        epoch_fn=epoch_fn,
    )


def _train_dense(cells: Sequence[_Cell]) -> None:
    """Trains every cell's dense arm (together when there are several)."""
    c0 = cells[0]
    trainer, config = c0.trainer, c0.config
    t = config.train
    states = [
        trainer.init_state(
            rng.stream(cell.config.seed, "init"),
            cell.train_set.image_shape,
            cell.make_schedule(t.epochs),
            rng=rng.stream(cell.config.seed, "augment"),
        )
        for cell in cells
    ]
    train_started = time.perf_counter()
    states, last_rows = train_phase_group(
        "dense",
        trainer,
        states,
        [cell.data for cell in cells],
        epochs=t.epochs,
        shuffle_keys=[rng.stream(cell.config.seed, "shuffle") for cell in cells],
        rundirs=[cell.rundir for cell in cells],
        evaluate_fns=[cell.evaluate_fn for cell in cells],
        eval_every=t.eval_every_epochs,
        indices=None if c0.indices is None else [cell.indices for cell in cells],
        epoch_fn=c0.epoch_fn,
    )
    train_seconds = time.perf_counter() - train_started
    for cell, state, last_row in zip(cells, states, last_rows, strict=True):
        cell.state, cell.last_row, cell.train_seconds = state, last_row, train_seconds
        cell.dense = _final_metrics(last_row, state, cell.evaluate_fn)


def _train_pruned(cells: Sequence[_Cell]) -> None:
    """The pruned arm: IMP with rewinding on the same data, from the dense arm's
    initialization, then the final sparse network (SPEC §1.5); together when several."""
    c0 = cells[0]
    config = c0.config
    pruned_started = time.perf_counter()
    settings = imp_settings(config)
    results = prune_lib.run_imp_group(
        c0.trainer,
        [cell.data for cell in cells],
        settings,
        init_keys=[rng.stream(cell.config.seed, "init") for cell in cells],
        streams=[functools.partial(rng.stream, cell.config.seed) for cell in cells],
        make_schedule=c0.make_schedule,
        image_shape=c0.train_set.image_shape,
        rundirs=[cell.rundir for cell in cells],
        evaluate_fns=[cell.evaluate_fn for cell in cells],
        eval_every=config.train.eval_every_epochs,
        indices=None if c0.indices is None else [cell.indices for cell in cells],
        epoch_fn=c0.epoch_fn,
    )
    seconds = time.perf_counter() - pruned_started
    for cell, imp in zip(cells, results, strict=True):
        pruned = _final_metrics(imp.last_row, imp.state, cell.evaluate_fn)
        pruned.update(
            sparsity={
                "total": imp.sparsity["total"],
                "per_round": imp.round_sparsity,
                "per_layer": imp.sparsity["layers"],
            },
            num_weights_kept=imp.sparsity["prunable"] - imp.sparsity["pruned"],
            num_prunable=imp.sparsity["prunable"],
            final_train_loss=imp.last_row.get("loss"),
            final_train_accuracy=imp.last_row.get("accuracy"),
            **{f"imp_{k}": v for k, v in dataclasses.asdict(settings).items()},
            seconds_this_invocation=seconds,
        )
        cell.pruned = pruned


def _finish(cell: _Cell, trained_together: int) -> dict[str, Any]:
    """Writes and returns the cell's summary."""
    config, trainer, state = cell.config, cell.trainer, cell.state
    train_set, test_set, poisoned = cell.train_set, cell.test_set, cell.poisoned
    mesh, dtype = trainer.mesh, trainer.model.dtype
    t = config.train
    result, last_row, pruned = cell.dense, cell.last_row, cell.pruned
    report = select_lib.selection_report(
        cell.selection.indices,
        poisoned.is_poison,
        poisoned.original_labels,
        train_set.num_classes,
    )
    summary = {
        **result,
        **report,
        "selection": config.select.name or "full",
        "selection_seconds": cell.selection_info.get("selection_seconds", 0.0),
        "num_train": len(train_set),
        "num_poison": len(poisoned.poison_indices),
        "num_test": len(test_set),
        "num_test_triggered_eligible": int(np.sum(cell.triggered.eligible)),
        "attack": cell.attack.name,
        "target": cell.attack.target,
        "data_source": cell.source,
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
        "resumed": cell.resumed,
        "trained_together": trained_together,
        "train_seconds_this_invocation": cell.train_seconds,
        "wall_seconds": time.perf_counter() - cell.started,
    }
    if pruned is not None:
        summary["pruned"] = pruned
    pruned_metrics = {f"pruned_{k}": pruned[k] for k in result if pruned and k in pruned}
    cell.rundir.log({"event": "end", **result, **pruned_metrics})
    cell.rundir.write_summary(summary)
    return summary
