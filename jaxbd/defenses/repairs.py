"""The repair registry: name -> repair class (a frozen dataclass of hyper-parameters whose
`plan(ctx, variables)` does the method's own work; its `model_needs` says what it reads
inside the model, `data_free` and `needs_trigger` what else it assumes).

Adding a repair is one module with its class plus one line here; `config.defense.<name>`
appears from the class's field defaults.
"""

from __future__ import annotations

from jaxbd.defenses.anp import ANP
from jaxbd.defenses.clp import CLP
from jaxbd.defenses.fine_pruning import FinePruning
from jaxbd.defenses.finetune import FineTune
from jaxbd.defenses.grad_prune import GradPrune
from jaxbd.defenses.nad import NAD
from jaxbd.defenses.neural_cleanse import NeuralCleanse
from jaxbd.defenses.pivotal_tuning import PivotalTuning

REPAIRS: dict[str, type] = {
    "anp": ANP,
    "clp": CLP,
    "finetune": FineTune,
    "fine_pruning": FinePruning,
    "grad_prune": GradPrune,
    "nad": NAD,
    "neural_cleanse": NeuralCleanse,
    "pivotal_tuning": PivotalTuning,
}
"""Repair name -> class; `config.defense.name` picks one."""
