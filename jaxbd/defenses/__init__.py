"""Defenses: repair a backdoored model with the defender's clean data (and later detect).

`REPAIRS` maps each registry name to its repair class: a frozen dataclass of the method's
hyper-parameters (defaults: Pick your Poison's grid-searched CIFAR-10 values at r = 1%,
checked when constructed) whose `plan(ctx, variables)` does the method's own work; the
shared `tune` loop runs the plan with the trade-off curve and the Δ budget
(`jaxbd.defenses.tuning`). Everything works on any flax model returning `(logits,
features)` and runs on the engine (`jaxbd.train.Trainer`), so a user's own code can call a
repair without a run directory; `scripts/defend.py` (`jaxbd.pipeline.defend`) runs one on a
finished training run.

| name             | paper                   | what it does                                   |
| ---------------- | ----------------------- | ---------------------------------------------- |
| `finetune`       | (fine-tuning)           | SGD on the defender's clean images             |
| `fine_pruning`   | Liu et al. 2018         | prune dormant penultimate channels, fine-tune  |
| `nad`            | Li et al. 2021          | distil attention maps of a fine-tuned teacher  |
| `neural_cleanse` | Wang et al. 2019        | reverse-engineer triggers, flag, unlearn       |
| `pivotal_tuning` | Lukas & Kerschbaum 2023 | fine-tune near a frozen pivot with SLOL        |
| `anp`            | Wu & Wang 2021          | prune BN channels sensitive to noise           |
| `clp`            | Zheng et al. 2022       | data-free: prune high-Lipschitz channels       |
| `grad_prune`     | Dunnett et al. 2024     | prune filters the unlearning gradient picks    |

Training-set detectors are selection methods (`jaxbd.select`:
`--config.select.name=spectral` or `activation_clustering`), re-exported here as
`spectral_scores` and `activation_clustering`. Input detectors: `strip_scores` (STRIP, Gao
et al. 2019: mean prediction entropy over superimposed clean images, thresholded at a
false-rejection rate on held-out clean images);
model-level detectors: Neural Cleanse's anomaly index (`neural_cleanse_score`) and Calibrated
Trigger Inversion (`calibrated_trigger_inversion`, Lukas & Kerschbaum 2023). `scripts/detect.py`
(`jaxbd.pipeline.detect`) runs a registered detector on a finished run; `scripts/zoo.py`
measures model-level detectors' ROC AUC over a zoo of clean and backdoored models.

The defender's data (`defender_data`) is a small clean subset of the training images with a
held-out validation part; every decision reads validation data only, and any number chosen
on the test set is reported as `oracle_*`.
"""

from jaxbd.defenses.anp import ANP
from jaxbd.defenses.base import Candidates, Repair, RepairContext, TuningPlan, Variables
from jaxbd.defenses.clp import CLP
from jaxbd.defenses.cti import (
    calibrated_trigger_inversion,
    cti_scores,
    invert_triggers,
    neural_cleanse_score,
)
from jaxbd.defenses.curve import (
    oracle_asr_at_delta,
    oracle_candidate_at_delta,
    plot_curves,
    within_budget,
)
from jaxbd.defenses.defender_data import DefenderData, DefenderDataSettings, defender_data
from jaxbd.defenses.fine_pruning import (
    FinePruning,
    channel_activations,
    prune_channels_mask,
)
from jaxbd.defenses.finetune import FineTune
from jaxbd.defenses.grad_prune import GradPrune
from jaxbd.defenses.nad import NAD, attention_map
from jaxbd.defenses.neural_cleanse import (
    NeuralCleanse,
    ReversedTriggers,
    anomaly_index,
    reverse_engineer,
)
from jaxbd.defenses.pivotal_tuning import PivotalTuning, slol_loss
from jaxbd.defenses.strip import entropy_bits, frr_threshold, strip_scores
from jaxbd.defenses.tuning import TuneProgress, TuneResult, tune
from jaxbd.select import activation_clustering, spectral_scores  # training-set detectors

REPAIRS = {
    "anp": ANP,
    "clp": CLP,
    "finetune": FineTune,
    "fine_pruning": FinePruning,
    "grad_prune": GradPrune,
    "nad": NAD,
    "neural_cleanse": NeuralCleanse,
    "pivotal_tuning": PivotalTuning,
}

__all__ = [
    "ANP",
    "CLP",
    "NAD",
    "REPAIRS",
    "Candidates",
    "DefenderData",
    "DefenderDataSettings",
    "FinePruning",
    "FineTune",
    "GradPrune",
    "NeuralCleanse",
    "PivotalTuning",
    "Repair",
    "RepairContext",
    "ReversedTriggers",
    "TuneProgress",
    "TuneResult",
    "TuningPlan",
    "Variables",
    "activation_clustering",
    "anomaly_index",
    "attention_map",
    "calibrated_trigger_inversion",
    "channel_activations",
    "cti_scores",
    "defender_data",
    "entropy_bits",
    "frr_threshold",
    "invert_triggers",
    "neural_cleanse_score",
    "oracle_asr_at_delta",
    "oracle_candidate_at_delta",
    "plot_curves",
    "prune_channels_mask",
    "reverse_engineer",
    "slol_loss",
    "spectral_scores",
    "strip_scores",
    "tune",
    "within_budget",
]
