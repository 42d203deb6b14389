"""The defense pipeline: repair a finished training run's model with the defender's data.

`run(config, workdir)` is what `scripts/defend.py` calls (`configs/defend.py`):

1. the source run (a finished `scripts/train.py` directory, only read) rebuilds the same
   poisoned training set and triggered test set from its streams; its dense (or pruned)
   checkpoint is restored;
2. the defender's data: a small clean subset of the training images ("defender" stream),
   split into tuning and held-out validation parts;
3. the repair plans (`repair.plan`), then tunes through the shared loop
   (`jaxbd.defenses.tune`): a curve row every `defense.eval_every` steps (`curve.jsonl`), the
   Δ budget on validation accuracy, checkpoints so an interrupted defense resumes;
4. `summary.json`: the undefended (`before`) and returned (`after`) models' test metrics,
   DER and RIR, the method's decisions, `oracle_asr_at_delta` (chosen on the test set, hence
   the name), `curve.png`, and for a method that chose among discrete alternatives every
   alternative's test metrics (`candidates.jsonl`, `oracle_candidate_at_delta`).

Library users call `jaxbd.defenses.repair` on any model; this adds the run directory.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging

from jaxbd import defenses, metrics, rng, runs
from jaxbd.defenses import curve, tuning
from jaxbd.defenses.base import RepairContext
from jaxbd.defenses.registry import make_repair
from jaxbd.files import write_jsonl
from jaxbd.metrics import robust_improvement_rate  # noqa: F401 (its old home)
from jaxbd.pipeline.stages import engine
from jaxbd.pipeline.stages import source as source_lib
from jaxbd.pipeline.stages.experiment_settings import ExperimentSettings
from jaxbd.runs.checkpoint import Checkpointer
from jaxbd.settings import ConfigError, from_config
from jaxbd.types import jsonable

ARMS, DEFENDED = source_lib.ARMS, source_lib.DEFENDED

CURVE_FILE = "curve.jsonl"
CANDIDATES_FILE = "candidates.jsonl"
CURVE_PLOT = "curve.png"


@dataclasses.dataclass(frozen=True)
class DefendSettings:
    """A defense run's settings (validated; see `jaxbd.pipeline.defaults.defend_config`)."""

    source: str
    source_arm: str
    seed: int
    defender: defenses.DefenderDataSettings
    trigger_knowledge: bool
    name: str
    repair: Any
    eval_every: int
    delta: float
    patience: int
    experiment: ExperimentSettings  # the source run's, with this run's runtime settings
    checkpoint: str  # the source model's checkpoint folder (only read)


def validate(config: ml_collections.ConfigDict) -> DefendSettings:
    """Checks the defense config and the source run before anything is written.

    Raises:
        ConfigError: for a missing, unfinished or foreign source run, an unknown defense or
            arm, bad hyper-parameters or defender settings.
    """
    src = source_lib.open_source(
        config.get("source"),
        arm=config.source_arm,
        runtime=config.runtime,
        allow_defended=False,
    )
    d = config.defense
    if d.name not in defenses.REPAIRS:
        raise ConfigError(
            f"config.defense.name: must be one of {sorted(defenses.REPAIRS)}, got {d.name!r}"
        )
    if d.steps is not None and (not isinstance(d.steps, int) or d.steps < 0):
        raise ConfigError(f"config.defense.steps: must be None or >= 0, got {d.steps!r}")
    if not isinstance(d.eval_every, int) or d.eval_every < 1:
        raise ConfigError(f"config.defense.eval_every: must be >= 1, got {d.eval_every!r}")
    if not 0 <= d.delta <= 1:
        raise ConfigError(f"config.defense.delta: must be in [0, 1], got {d.delta!r}")
    if not isinstance(d.patience, int) or d.patience < 1:
        raise ConfigError(f"config.defense.patience: must be >= 1, got {d.patience!r}")
    try:
        repair = make_repair(defenses.REPAIRS, d.name, d.get(d.name), steps=d.steps)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config.defense.{d.name}: {e}") from None
    knowledge = config.defender.get("trigger_knowledge", False)
    if getattr(repair, "needs_trigger", False) and not knowledge:
        raise ConfigError(
            f"config.defender.trigger_knowledge: {d.name} assumes the defender knows the "
            "trigger; set it to True to grant that knowledge"
        )
    defender_section = {
        k: v for k, v in config.defender.to_dict().items() if k != "trigger_knowledge"
    }
    return DefendSettings(
        source=src.path,
        source_arm=src.model,
        seed=config.seed,
        defender=from_config(defenses.DefenderDataSettings, defender_section, "config.defender"),
        trigger_knowledge=bool(knowledge),
        name=d.name,
        repair=repair,
        eval_every=d.eval_every,
        delta=float(d.delta),
        patience=d.patience,
        experiment=src.experiment,
        checkpoint=src.checkpoint,
    )


def default_workdir(config: ml_collections.ConfigDict) -> str:
    """`<source>/defenses/<defense>` (`_pruned` appended for the pruned arm)."""
    suffix = "" if config.source_arm == "dense" else f"_{config.source_arm}"
    return os.path.join(config.source, "defenses", f"{config.defense.name}{suffix}")


def run(
    config: ml_collections.ConfigDict,
    workdir: str | None = None,
    *,
    rebuilt: source_lib.Rebuilt | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) one defense of a finished run and returns its summary.

    Args:
        config: a defense configuration (see `jaxbd.pipeline.defaults.defend_config`).
        workdir: where the defense writes (default `default_workdir(config)`); created if
            missing, resumed if it holds an unfinished defense of the same configuration,
            refused if finished or different.
        rebuilt: the source's data and model, already rebuilt (`source.rebuild`) by a caller
            that defends one model several times (a grid): the defenses then share its data
            on the devices instead of each loading, poisoning and restoring again. Must be
            of `config.source` and `config.source_arm`.

    Returns:
        The summary also written to `workdir/summary.json`.
    """
    started = time.perf_counter()
    s = validate(config)
    workdir = workdir or default_workdir(config)
    rundir = runs.RunDir(workdir)
    rundir.check_not_finished()
    if rebuilt is not None and (
        rebuilt.source.path != s.source or rebuilt.source.model != s.source_arm
    ):
        raise ValueError(
            f"rebuilt holds {rebuilt.source.path} ({rebuilt.source.model}), but the config "
            f"defends {s.source} ({s.source_arm})"
        )
    claimed: list[bool] = []

    def claim() -> runs.RunDir:
        if not claimed:
            resumed = rundir.open(config.to_dict())
            rundir.log({"event": "start", "resumed": resumed, "time": time.time()})
            claimed.append(resumed)
        return rundir

    # The source run's data, rebuilt from its streams. Only an attack that needs a trained
    # surrogate writes (its phase, into this run's directory), so otherwise everything,
    # the defender's draw included, is checked before the directory is claimed.
    if rebuilt is None:
        rebuilt = source_lib.rebuild(
            source_lib.Source(s.source, s.source, s.source_arm, s.checkpoint, s.experiment),
            rundir=claim,
        )
    exp, splits, stage = s.experiment, rebuilt.splits, rebuilt.stage
    repair = s.repair
    repair_trainer = engine.make_trainer(
        dataclasses.replace(
            exp,
            train=dataclasses.replace(
                exp.train,
                batch_size=repair.batch_size,
                momentum=repair.momentum,
                weight_decay=repair.weight_decay,
            ),
        ),
        splits.train.num_classes,
    )

    try:
        defender = defenses.defender_data(
            rng.stream(s.seed, "defender"), splits.train, stage.poisoned.is_poison, s.defender
        )
    except ValueError as e:
        raise ConfigError(f"config.defender: {e}") from None
    data_free = getattr(repair, "data_free", False)
    if defender.empty and not data_free:
        raise ConfigError(
            f"config.defender.fraction=0: {s.name} needs the defender's images (only a "
            "data-free repair, e.g. clp, runs without)"
        )
    if not defender.empty and len(defender.tune) < repair.batch_size and not data_free:
        raise ConfigError(
            f"config.defense.{s.name}.batch_size={repair.batch_size} exceeds the defender's "
            f"{len(defender.tune)} tuning images: lower it, or raise config.defender.fraction"
        )
    warning = curve.budget_warning(s.delta, len(defender.val), "config.defense.delta")
    if warning and not data_free:
        logging.warning(warning)
    claim()
    resumed = claimed[0]
    undefended = rebuilt.model_copy()
    logging.info(
        "defender: %d tuning + %d validation clean images", len(defender.tune), len(defender.val)
    )
    ctx = RepairContext(
        trainer=repair_trainer,
        defender=defender,
        tune_data=None
        if defender.empty
        else repair_trainer.put(defender.tune.images, defender.tune.labels),
        key=rng.stream(s.seed, f"defense/{s.name}"),
        validate=None if defender.empty else tuning.validator(repair_trainer, defender.val),
        num_classes=splits.train.num_classes,
        trigger=stage.attack.test_fn
        if s.trigger_knowledge and getattr(repair, "needs_trigger", False)
        else None,
    )
    evaluate_fn = rebuilt.evaluate_fn(repair_trainer)

    plan = repair.plan(ctx, undefended)
    checkpointer = Checkpointer(os.path.join(rundir.path, "checkpoints", "defense"))
    try:
        resume = _resume(checkpointer, ctx, plan, rundir)

        last = [time.perf_counter()]

        def on_eval(progress: tuning.TuneProgress) -> None:
            # The seconds since the previous row (its steps and this row's evaluation; the
            # first chunk of a process also compiles): what grid_cost projects a run from.
            now = time.perf_counter()
            rundir.log({"event": "tune", "step": progress.step, "seconds": now - last[0]})
            last[0] = now
            _write_curve(rundir, progress.rows)
            checkpointer.save(
                progress.step,
                {"state": progress.state, "best": progress.best[1]},
                {
                    "step": progress.step,
                    "best_step": progress.best[0],
                    "rows": progress.rows,
                    "base_val_accuracy": progress.base_val_accuracy,
                    "stopped": progress.stopped,
                },
            )
            logging.info("defense %s: %s", s.name, _row_text(progress.rows[-1]))

        result = tuning.tune(
            ctx,
            plan,
            eval_every=s.eval_every,
            delta=s.delta,
            patience=s.patience,
            evaluate_fn=evaluate_fn,
            base=undefended,
            on_eval=on_eval,
            resume=resume,
            desc=s.name,
        )
    finally:
        checkpointer.close()
    # The returned model on its own, for `scripts/evaluate.py` and later pipelines.
    with Checkpointer(os.path.join(rundir.path, "checkpoints", DEFENDED)) as saved:
        if saved.latest_step() is None:
            saved.save(0, {"model": result.variables}, {"returned_step": result.returned_step})
    summary = _summary(s, plan, result, evaluate_fn, undefended, defender, started, resumed)
    if plan.candidates is not None:
        summary.update(_evaluate_candidates(rundir, plan.candidates, evaluate_fn, summary, s))
        summary["oracle_asr_at_delta"] = _lowest(
            summary["oracle_asr_at_delta"], summary["oracle_candidate_at_delta"]
        )
    _plot(rundir, s.name, result.rows)
    end = {f"after_{k}": v for k, v in summary["after"].items()}
    rundir.log_once({"event": "end", **end}, key=("event",))
    rundir.write_summary(summary)
    rundir.close()
    return summary


def _evaluate_candidates(rundir, candidates, evaluate_fn, summary, s) -> dict:
    """Every alternative the method chose among, on the test set (`candidates.jsonl`), and
    the one a test-set choice would keep (`oracle_candidate_at_delta`: the lowest test ASR
    within Δ of the undefended test accuracy — how the reference implementations pick ANP's
    threshold). Evaluation only: the returned model was chosen before, without these."""
    rows = []
    for i, label in enumerate(candidates.labels):
        measured = evaluate_fn(candidates.build(i))
        rows.append({**label, **{f"test_{k}": v for k, v in measured.items()}})
    write_jsonl(rundir.file(CANDIDATES_FILE), rows)
    oracle = defenses.oracle_candidate_at_delta(rows, summary["before"]["clean_accuracy"], s.delta)
    return {"candidates": len(rows), "oracle_candidate_at_delta": jsonable(oracle)}


def _lowest(curve_oracle: float | None, candidate: Mapping[str, Any] | None) -> float | None:
    """η_Δ over everything the method could have returned: the lower of the curve's oracle
    ASR and the oracle candidate's (a method choosing among candidates, e.g. CLP's u grid,
    may have a one-row curve, whose η would be the undefended ASR); None if neither has one."""
    found = [curve_oracle, candidate and candidate["test_attack_success_rate"]]
    found = [v for v in found if v is not None]
    return min(found) if found else None


def _resume(checkpointer, ctx, plan, rundir) -> tuning.TuneProgress | None:
    """The saved progress of an interrupted defense, or None."""
    latest = checkpointer.latest_step()
    if latest is None:
        return None
    template = {"state": tuning.start_state(ctx, plan), "best": plan.variables}
    restored, meta = checkpointer.restore(latest, template)
    rundir.log({"event": "resume", "phase": "defense", "step": int(meta["step"])})
    logging.info("defense: resuming after step %d", meta["step"])
    return tuning.TuneProgress(
        step=int(meta["step"]),
        state=restored["state"],
        best=(int(meta["best_step"]), restored["best"]),
        rows=list(meta["rows"]),
        base_val_accuracy=float(meta["base_val_accuracy"]),
        stopped=bool(meta["stopped"]),
    )


def _write_curve(rundir, rows) -> None:
    """`curve.jsonl`, rewritten atomically (a reader never sees a torn file)."""
    write_jsonl(rundir.file(CURVE_FILE), rows)


def _row_text(row) -> str:
    parts = [f"step {row['step']}"]
    if row["val_accuracy"] is not None:
        parts.append(f"val acc {row['val_accuracy']:.4f}")
    if "test_clean_accuracy" in row:
        parts.append(f"test acc {row['test_clean_accuracy']:.4f}")
        parts.append(f"ASR {row['test_attack_success_rate']:.4f}")
    return ", ".join(parts)


def _summary(s, plan, result, evaluate_fn, undefended, defender, started, resumed) -> dict:
    # The curve already evaluated these models: its step-0 row is the undefended one, and a
    # later row is the model tuned to that step. At step 0 the returned model may be the
    # plan's start instead (e.g. Fine-Pruning's pruned network), so it is evaluated afresh.
    before = _test_metrics(result.rows[0]) or evaluate_fn(undefended)
    returned = [r for r in result.rows if r["step"] == result.returned_step > 0]
    after = (_test_metrics(returned[-1]) if returned else None) or evaluate_fn(result.variables)
    return {
        "defense": s.name,
        "hparams": jsonable(dataclasses.asdict(s.repair)),
        "source": s.source,
        "source_arm": s.source_arm,
        "attack": s.experiment.attack.name,
        "before": before,
        "after": after,
        "before_val_accuracy": result.rows[0]["val_accuracy"],
        "der": float(
            metrics.defense_effectiveness_rating(
                before["clean_accuracy"],
                after["clean_accuracy"],
                before["attack_success_rate"],
                after["attack_success_rate"],
            )
        ),
        "rir": metrics.robust_improvement_rate(
            before["clean_accuracy"],
            after["clean_accuracy"],
            before["robust_accuracy"],
            after["robust_accuracy"],
        ),
        "repaired": after["attack_success_rate"] <= 0.05,
        "oracle_asr_at_delta": defenses.oracle_asr_at_delta(result.rows, s.delta),
        "delta": s.delta,
        "patience": s.patience,
        "defender_examples": len(defender),
        "defender_tune": len(defender.tune),
        "defender_val": len(defender.val),
        "steps": result.steps,
        "step_budget": plan.steps,
        "returned_step": result.returned_step,
        "stopped_early": result.stopped_early,
        "details": jsonable(dict(plan.details)),
        "resumed": resumed,
        "tune_seconds_this_invocation": result.seconds,
        "wall_seconds": time.perf_counter() - started,
    }


def _test_metrics(row) -> dict:
    """A curve row's test metrics without their `test_` prefix (empty if it has none)."""
    return {k.removeprefix("test_"): v for k, v in row.items() if k.startswith("test_")}


def _plot(rundir, name, rows) -> None:
    try:
        defenses.plot_curves({name: rows}, rundir.file(CURVE_PLOT))
    except ImportError:  # matplotlib is the `plot` extra
        logging.warning("matplotlib is not installed: no %s", CURVE_PLOT)
