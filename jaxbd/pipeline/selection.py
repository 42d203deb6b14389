"""The selection stage of an experiment: pretrain as the method needs, score, select.

`run_selection` is what `jaxbd.pipeline.experiment.run` calls when `config.select.name` is
set (the methods' definitions: docs/methods.md):

1. Pretrain on the whole poisoned set: member 0 is the "pretrain" phase, a run of
   `select.pretrain_epochs` epochs with the experiment's optimizer settings; EL2N/GraNd
   ensembles add members 1..M−1 ("pretrain_1", ...), each with its own initialization,
   shuffling and augmentation streams, trained on the same schedule up to the last scoring
   epoch. After each epoch a hook records what the method needs, on the device: per-epoch
   EL2N scores and correctness of the un-augmented training set (inference mode), GraNd
   scores at the scoring epochs, and per-presentation forgetting statistics. These
   statistics are checkpointed with the model, so an interrupted pretraining resumes exactly.
2. Score and select with the library functions of `jaxbd.select` (per class, by observed
   label, budgets summing to `round(fraction · N)`). CRAIG, grad_align and the two poison
   detectors (Spectral Signatures, Activation Clustering) read the logits or penultimate
   features of member 0's final model on the poisoned training set; the detectors keep
   what they do not flag, whatever `fraction` says.
3. Save the selection (`selection.npz` in the run directory): a resumed run reuses it and
   never re-runs pretraining.

Random selection needs no pretraining and uses its own PRNG stream ("select"), never the
poisoning stream.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxbd import rng
from jaxbd.pipeline.config import ExperimentSettings
from jaxbd.runs import RunDir, fingerprint, identity, train_phase, write_json_atomic
from jaxbd.select import forgetting as forgetting_lib
from jaxbd.select.activation_clustering import activation_clustering_filter
from jaxbd.select.base import Selection, make_selection
from jaxbd.select.craig import craig, gradient_proxy
from jaxbd.select.grad_align import grad_align
from jaxbd.select.random import random_subset
from jaxbd.select.ranking import rank_within_class
from jaxbd.select.scores import el2n_scores, grand_scores, make_grand_fn
from jaxbd.select.spectral import remove_highest, spectral_scores
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


@flax.struct.dataclass
class PretrainRecord:
    """What a pretraining run records for scoring (device arrays, checkpointed).

    Attributes:
        el2n: float32[E, N], EL2N of every training example after each epoch (inference
            mode, un-augmented); rows of epochs that were not needed stay 0.
        correct: bool[E, N], whether each example was classified correctly after each epoch
            (same conditions; the study's once-per-epoch forgetting check).
        grand: float32[N], sum of GraNd scores over the scoring epochs.
        forgetting: per-presentation forgetting statistics (Toneva et al. 2019).
    """

    el2n: jax.Array
    correct: jax.Array
    grand: jax.Array
    forgetting: forgetting_lib.ForgettingState


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
    started = time.perf_counter()
    key = rng.stream(settings.seed, "select")
    effective = select.effective()
    scores = None
    if select.name == "random":
        selection = random_subset(key, labels, select.fraction, num_classes=num_classes)
    else:
        records, final_state = _pretrain(settings, trainer, data, image_shape, rundir, effective)
        if select.name in ("el2n", "grand"):
            epochs = np.asarray(effective["score_epochs"]) - 1
            if select.name == "el2n":
                per_member = [np.asarray(r.el2n)[epochs].mean(axis=0) for r in records]
            else:
                per_member = [np.asarray(r.grand) / len(epochs) for r in records]
            scores = np.mean(per_member, axis=0)
        elif select.name == "forgetting":
            scores = _forgetting_scores(records[0], effective)
        if scores is not None:
            selection = rank_within_class(
                scores,
                labels,
                select.fraction,
                keep=effective["keep"],
                offset=effective["offset"],
                key=key,
                num_classes=num_classes,
            )
        else:
            logits, features = trainer.predict(final_state, data.images)
            if select.name == "craig":
                c = select.craig
                proxy = gradient_proxy(logits, labels, features, kind=c.proxy)
                selection = craig(
                    proxy,
                    labels,
                    select.fraction,
                    greedy=c.greedy,
                    key=key,
                    epsilon=c.epsilon,
                    num_classes=num_classes,
                )
            elif select.name == "grad_align":
                selection = grad_align(
                    logits, labels, features, select.fraction, num_classes=num_classes
                )
            elif select.name == "spectral":
                # `spectral_filter` in two steps, so that the scores are saved with the
                # selection (the cut can be re-drawn without pretraining again).
                scores = spectral_scores(np.asarray(features), labels, num_classes)
                selection = remove_highest(scores, labels, poison_rate=select.spectral.poison_rate)
            else:
                a = select.activation_clustering
                selection = activation_clustering_filter(
                    np.asarray(features),
                    labels,
                    key=key,
                    dims=a.dims,
                    reduction=a.reduction,
                    min_cluster=a.min_cluster,
                    num_classes=num_classes,
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


def _pretrain(experiment: ExperimentSettings, trainer, data, image_shape, rundir, settings):
    """Trains the pretraining member(s); returns their records and member 0's final state."""
    select, t, seed = experiment.select, experiment.train, experiment.seed
    name = select.name
    n = len(data)
    steps_per_epoch = trainer.steps_per_epoch(n)
    members = settings.get("ensemble_size", 1)
    score_epochs = set(settings.get("score_epochs", ()))
    per_epoch_check = settings.get("per_epoch", False)
    grand_fn = None
    if name == "grand":
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
    # the whole schedule and records everything every method but GraNd reads from it.
    shared_root = _shared_pretrain_root(experiment) if name != "grand" else None
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

    if name in ("el2n", "grand") and members > 1 and _parallel(select) == "vmap":
        return _pretrain_ensemble(
            seed, trainer, data, rundir, members, init_member, update_record, score_epochs
        )

    records, final_state = [], None
    for member in range(members):
        # EL2N/GraNd use nothing after their last scoring epoch (unless the run is shared).
        shared = member == 0 and record_everything
        epochs = (
            max(score_epochs)
            if name in ("el2n", "grand") and not shared
            else select.pretrain_epochs
        )
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
            record_presentations=name == "forgetting" or shared,
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

    def epoch_fn(states, data, keys, *, indices=None, desc="", record_presentations=False):
        states, stats, _ = trainer.train_epoch_ensemble(states, data, keys, desc=desc)
        return states, _MeanStats(stats), None

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


def _forgetting_scores(record: PretrainRecord, settings) -> np.ndarray:
    if not settings["per_epoch"]:
        return forgetting_lib.scores(record.forgetting)
    # The study's variant: one check per epoch on the un-augmented set, in epoch order.
    correct = record.correct
    n = correct.shape[1]
    state = forgetting_lib.update(
        forgetting_lib.init(n),
        jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), correct.shape),
        correct,
    )
    return forgetting_lib.scores(state, never_learned=settings["never_learned"])


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
