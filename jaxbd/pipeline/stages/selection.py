"""The selection stage of an experiment: pretrain as the method needs, score, select.

`run_selection` is what `jaxbd.pipeline.experiment.run` calls when `config.select.name` is
set. It dispatches by the method's declaration (`jaxbd.select.method.Method`, registered in
`jaxbd.select.registry`), never by its name:

1. Pretrain on the whole poisoned set, if the method needs it: member 0 is the "pretrain"
   phase (`select.pretrain_epochs` epochs, the experiment's optimizer settings); an
   ensemble adds members 1..M−1 ("pretrain_1", ...) with their own streams, each trained up
   to its last scoring epoch. After each epoch a hook records, on the device and
   checkpointed with the model, what the method declares: EL2N and correctness of the
   un-augmented set at the scoring epochs, gradient norms, per-presentation correctness.
2. Hand the method its `Inputs` (the records, or member 0's final logits and features) and
   save what it returns (`selection.npz`): a resumed run reuses it and never pretrains again.

A method without pretraining (random) uses only the labels and its own PRNG stream
("select"), never the poisoning stream. The methods' definitions: docs/methods.md.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxbd import rng
from jaxbd.pipeline.stages.experiment_settings import ExperimentSettings
from jaxbd.runs import RunDir, fingerprint, identity, train_phase, write_json_atomic
from jaxbd.select import forgetting as forgetting_lib
from jaxbd.select.base import Selection, make_selection
from jaxbd.select.method import Inputs, Method, PretrainRecord
from jaxbd.select.registry import method as selection_method
from jaxbd.select.scores import el2n_scores, grand_scores, make_grand_fn
from jaxbd.train import DeviceData, Trainer, distributed

SELECTION_FILE = "selection.npz"

PRETRAIN_IDENTITY = (
    "data",
    "attack",
    "model",
    "train",
    "seed",
    "select.pretrain_epochs",
    "select.pretrain_warmup_epochs",
)
"""What a selection's pretraining run depends on: runs whose identity agrees on these
share it (`select.pretrain_dir`)."""


def run_selection(
    settings: ExperimentSettings,
    trainer: Trainer,
    data: DeviceData,
    labels: np.ndarray,
    *,
    image_shape: tuple[int, int, int],
    num_classes: int,
    rundir: RunDir,
) -> tuple[Selection, dict[str, Any]]:
    """Runs (or reloads) the selection stage of an experiment.

    Args:
        settings: the experiment (`settings.select` names the method).
        trainer: the experiment's engine (pretraining reuses its compiled steps).
        data: the poisoned training set on the device.
        labels: int32[N] observed (poisoned) labels on the host.
        image_shape: (H, W, 3).
        num_classes: C.
        rundir: the run directory (checkpoints, logs and `selection.npz`).

    Returns:
        (selection, info) where info holds `selection_seconds` (pretraining and scoring
        included, summed over invocations when resumed) and the effective settings.
    """
    path = os.path.join(rundir.path, SELECTION_FILE)
    if os.path.exists(path):
        return load_selection(path)
    select = settings.select
    method = selection_method(select.name)
    started = time.perf_counter()
    key = rng.stream(settings.seed, "select")
    effective = select.effective()
    records, logits, features = (), None, None
    if method.pretrain:
        records, final_state = _pretrain(
            settings, method, trainer, data, image_shape, rundir, effective
        )
        if method.outputs:
            logits, features = trainer.predict(final_state, data.images)
    selection, scores = method.run(
        Inputs(
            labels=labels,
            fraction=select.fraction,
            key=key,
            num_classes=num_classes,
            settings=None if method.section is None else getattr(select, method.section),
            effective=effective,
            records=records,
            logits=logits,
            features=features,
        )
    )
    seconds = time.perf_counter() - started
    info = {"selection_seconds": seconds, "selection_settings": effective}
    save_selection(path, selection, scores, info)
    rundir.log(
        {
            "event": "selection",
            "method": select.name,
            "num_selected": len(selection),
            "seconds": seconds,
        }
    )
    logging.info("selection %s: %d examples in %.1f s", select.name, len(selection), seconds)
    return selection, info


def _pretrain(
    experiment: ExperimentSettings, method: Method, trainer, data, image_shape, rundir, settings
):
    """Trains the pretraining member(s) `method` needs; returns their records and member 0's
    final state."""
    select, t, seed = experiment.select, experiment.train, experiment.seed
    n = len(data)
    steps_per_epoch = trainer.steps_per_epoch(n)
    members = settings.get("ensemble_size", 1)
    score_epochs = set(settings.get("score_epochs", ()))
    per_epoch_check = settings.get("per_epoch", False)
    grand_fn = None
    if method.gradient_norms:
        grand_fn = make_grand_fn(trainer.model, mean=experiment.data.mean, std=experiment.data.std)

    def init_member(member):
        prefix = _member_prefix(member)
        # A schedule per member: its arrays are donated with the member's train state.
        schedule = t.schedule(
            select.pretrain_epochs, steps_per_epoch, warmup_epochs=select.pretrain_warmup_epochs
        )
        state = trainer.init_state(
            rng.stream(seed, f"{prefix}/init"),
            image_shape,
            schedule,
            rng=rng.stream(seed, f"{prefix}/augment"),
        )
        record = PretrainRecord(
            el2n=jnp.zeros((select.pretrain_epochs, n), jnp.float32),
            correct=jnp.zeros((select.pretrain_epochs, n), bool),
            grand=jnp.zeros((n,), jnp.float32),
            forgetting=forgetting_lib.init(n),
        )
        return state, record

    # A pretraining run shared between methods (select.pretrain_dir): member 0 always runs
    # the whole schedule and records everything every method that shares it reads from it.
    shared_root = _shared_pretrain_root(experiment) if method.shares_pretraining else None
    record_everything = shared_root is not None

    def update_record(epoch, state, presentations, record):
        forgetting = record.forgetting
        if presentations is not None:
            forgetting = forgetting_lib.update(
                forgetting, presentations.indices, presentations.correct
            )
        el2n, correct, grand = record.el2n, record.correct, record.grand
        if epoch in score_epochs or per_epoch_check or record_everything:
            logits, _ = trainer.predict(state, data.images)
            el2n = el2n.at[epoch - 1].set(el2n_scores(logits, data.labels))
            correct = correct.at[epoch - 1].set(jnp.argmax(logits, -1) == data.labels)
        if grand_fn is not None and epoch in score_epochs:
            grand = grand + jnp.asarray(
                grand_scores(
                    grand_fn,
                    state.params,
                    state.batch_stats,
                    data.images,
                    data.labels,
                    chunk_size=select.score.chunk_size,
                )
            )
        return PretrainRecord(el2n=el2n, correct=correct, grand=grand, forgetting=forgetting)

    if method.ensemble and members > 1 and _parallel(select) == "vmap":
        return _pretrain_ensemble(
            seed, trainer, data, rundir, members, init_member, update_record, score_epochs
        )

    records, final_state = [], None
    for member in range(members):
        # An ensemble uses nothing after its last scoring epoch (unless the run is shared).
        shared = member == 0 and record_everything
        epochs = max(score_epochs) if method.ensemble and not shared else select.pretrain_epochs
        prefix = _member_prefix(member)
        state, record = init_member(member)

        def hook(epoch, state, presentations, record):
            return trainer.replicate(update_record(epoch, state, presentations, record))

        state, _, record = train_phase(
            prefix,
            trainer,
            state,
            data,
            epochs=epochs,
            shuffle_key=rng.stream(seed, f"{prefix}/shuffle"),
            rundir=rundir,
            evaluate_fn=None,
            eval_every=0,
            aux=trainer.replicate(record),
            epoch_hook=hook,
            record_presentations=method.presentations or shared,
            checkpoint_root=shared_root if shared else None,
        )
        records.append(record)
        if member == 0:
            final_state = state
    return records, final_state


def _shared_pretrain_root(experiment: ExperimentSettings) -> str | None:
    """Where the shared pretraining run of this experiment lives, or None.

    With `select.pretrain_dir` set, member 0's pretraining is stored under
    `<pretrain_dir>/<fingerprint>/pretrain`, where the fingerprint is that of the run's
    identity restricted to `PRETRAIN_IDENTITY` (`jaxbd.runs.identity`: data, attack, model,
    training settings, seed, pretraining length); the el2n, forgetting, craig, grad_align,
    spectral and activation_clustering runs of one seed then train it once and reuse it (a
    sweep's runs are sequential; two runs must not train the same one concurrently). GraNd
    needs gradients of the epoch-10 model, so it keeps its own run.
    """
    root = experiment.select.pretrain_dir
    if root is None:
        return None
    shared = identity(experiment.config, only=PRETRAIN_IDENTITY)
    directory = os.path.join(root, fingerprint(shared))
    if distributed.is_writer():
        os.makedirs(directory, exist_ok=True)
        write_json_atomic(os.path.join(directory, "identity.json"), shared)
    return directory


def _member_prefix(member: int) -> str:
    """Phase and stream name of pretraining member m: "pretrain", "pretrain_1", ..."""
    return "pretrain" if member == 0 else f"pretrain_{member}"


def _parallel(select) -> str:
    """How an ensemble trains: "vmap" (all members in one batched step) or "sequential";
    "auto" is sequential on the CPU, where batching members gains nothing (the cores are
    already busy with one model), and vmap on accelerators."""
    if select.score.parallel == "auto":
        return "sequential" if jax.default_backend() == "cpu" else "vmap"
    return select.score.parallel


def _pretrain_ensemble(
    seed, trainer, data, rundir, members, init_member, update_record, score_epochs
):
    """All EL2N/GraNd members in one phase ("pretrain_ensemble"), trained together with
    `Trainer.train_epoch_ensemble`; member m uses the same streams as sequential member m."""
    pairs = [init_member(m) for m in range(members)]
    states = trainer.stack([state for state, _ in pairs])
    records = trainer.stack([record for _, record in pairs])
    shuffle_keys = jnp.stack(
        [rng.stream(seed, f"{_member_prefix(m)}/shuffle") for m in range(members)]
    )

    def epoch_fn(
        states,
        data,
        keys,
        *,
        indices=None,
        desc="",
        record_presentations=False,
        resume=None,
        preemptible=False,
    ):
        states, stats, _ = trainer.train_epoch_ensemble(
            states, data, keys, desc=desc, resume=resume, preemptible=preemptible
        )
        return states, _MeanStats(stats), None

    epoch_fn.resumable = True  # stops mid-epoch at a preemption request, each member's part

    def hook(epoch, states, presentations, records):
        updated = [
            update_record(epoch, trainer.unstack(states, m), None, trainer.unstack(records, m))
            for m in range(members)
        ]
        return trainer.stack(updated)

    states, _, records = train_phase(
        "pretrain_ensemble",
        trainer,
        states,
        data,
        epochs=max(score_epochs),
        shuffle_key=shuffle_keys,
        rundir=rundir,
        evaluate_fn=None,
        eval_every=0,
        aux=records,
        epoch_hook=hook,
        epoch_fn=epoch_fn,
    )
    return [trainer.unstack(records, m) for m in range(members)], trainer.unstack(states, 0)


class _MeanStats:
    """An ensemble epoch's statistics for the log: loss and accuracy averaged over members,
    per-member values in `extra`."""

    def __init__(self, stats):
        self.loss = float(np.mean([s.loss for s in stats]))
        self.accuracy = float(np.mean([s.accuracy for s in stats]))
        self.lr, self.steps = stats[0].lr, stats[0].steps
        self.seconds, self.images_per_second = stats[0].seconds, stats[0].images_per_second
        self.extra = {"member_loss": [s.loss for s in stats]}
        # A stopped epoch's done part, one per member (what the phase checkpoints).
        self.progress = None if stats[0].progress is None else [s.progress for s in stats]


def save_selection(path: str, selection: Selection, scores, info: dict) -> None:
    """Writes the selection atomically (a reader never sees a partial file); with several
    processes only process 0 writes (every process computed the same selection)."""
    if not distributed.is_writer():
        return
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    os.close(fd)
    try:
        arrays = {
            "indices": selection.indices,
            "weights": selection.weights,
            "selection_seconds": np.float64(info["selection_seconds"]),
        }
        if scores is not None:
            arrays["scores"] = np.asarray(scores, np.float64)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_selection(path: str) -> tuple[Selection, dict[str, Any]]:
    """Reads a selection written by `save_selection`."""
    with np.load(path) as f:
        selection = make_selection(f["indices"], f["weights"])
        seconds = float(f["selection_seconds"])
    return selection, {"selection_seconds": seconds}
