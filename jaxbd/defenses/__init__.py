"""Defenses: repair a backdoored model with the defender's clean data, or detect one.

On any model (`jaxbd.models.Classifier`): `repair(classifier, defender, method, key=...)`
returns the repaired classifier, its trade-off curve and its decisions; `detect(classifier,
defender, method, key=..., inputs=...)` runs a detector (`jaxbd.defenses.api`). `REPAIRS`
and `DETECTORS` are the registries (`repairs`, `detectors`); each method declares what it
reads inside the model (`model_needs`) and what it assumes (`data_free`, `needs_trigger`).
Each repair's `plan` does the method's own work and the shared `tune` loop runs it with the
trade-off curve and the Δ budget on the defender's held-out images. The methods, their
papers and the reference codes' quirks: docs/defenses.md and docs/detection.md.

Training-set detectors are selection methods (`jaxbd.select`: spectral, activation
clustering), re-exported here. Every decision reads the defender's held-out images; a
number chosen on the test set is reported as `oracle_*`.
"""

from jaxbd.defenses.anp import ANP
from jaxbd.defenses.api import RepairResult, detect, engine, repair
from jaxbd.defenses.base import Candidates, Repair, RepairContext, TuningPlan, Variables
from jaxbd.defenses.clp import CLP, clp_scores, clp_select
from jaxbd.defenses.cti import (
    CTISettings,
    NeuralCleanseDetectSettings,
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
from jaxbd.defenses.defender_data import (
    DefenderData,
    DefenderDataSettings,
    defender_data,
    own_defender,
)
from jaxbd.defenses.detectors import DETECTORS, Detection, Detector, DetectorContext
from jaxbd.defenses.fine_pruning import (
    FinePruning,
    channel_activations,
    dormant_order,
    prune_channels_mask,
)
from jaxbd.defenses.finetune import FineTune
from jaxbd.defenses.grad_prune import GradPrune
from jaxbd.defenses.nad import NAD, attention_map
from jaxbd.defenses.neural_cleanse import (
    NeuralCleanse,
    ReversedTriggers,
    anomaly_index,
    flag_labels,
    reverse_engineer,
    stamp_uint8,
)
from jaxbd.defenses.pivotal_tuning import PivotalTuning, slol_loss
from jaxbd.defenses.repairs import REPAIRS
from jaxbd.defenses.strip import StripSettings, entropy_bits, frr_threshold, strip_scores
from jaxbd.defenses.tuning import TuneProgress, TuneResult, tune, validator
from jaxbd.select import activation_clustering, spectral_scores  # training-set detectors

__all__ = [
    "ANP",
    "CLP",
    "DETECTORS",
    "NAD",
    "REPAIRS",
    "CTISettings",
    "Candidates",
    "DefenderData",
    "DefenderDataSettings",
    "Detection",
    "Detector",
    "DetectorContext",
    "FinePruning",
    "FineTune",
    "GradPrune",
    "NeuralCleanse",
    "NeuralCleanseDetectSettings",
    "PivotalTuning",
    "Repair",
    "RepairContext",
    "RepairResult",
    "ReversedTriggers",
    "StripSettings",
    "TuneProgress",
    "TuneResult",
    "TuningPlan",
    "Variables",
    "activation_clustering",
    "anomaly_index",
    "attention_map",
    "calibrated_trigger_inversion",
    "channel_activations",
    "clp_scores",
    "clp_select",
    "cti_scores",
    "defender_data",
    "detect",
    "dormant_order",
    "engine",
    "entropy_bits",
    "flag_labels",
    "frr_threshold",
    "invert_triggers",
    "neural_cleanse_score",
    "oracle_asr_at_delta",
    "oracle_candidate_at_delta",
    "own_defender",
    "plot_curves",
    "prune_channels_mask",
    "repair",
    "reverse_engineer",
    "slol_loss",
    "spectral_scores",
    "stamp_uint8",
    "strip_scores",
    "tune",
    "validator",
    "within_budget",
]
