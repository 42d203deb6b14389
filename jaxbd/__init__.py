"""jaxbd: backdoor data-poisoning research at accelerator speed, in JAX/Flax.

Packages and modules, from the bottom layer up (docs/architecture.md):

- `settings`: config sections into frozen, self-validating settings dataclasses.
- `rng`: named PRNG streams, one per random choice of an experiment.
- `types`: shared types and conversions (`PyTree`, JSON-able values).
- `files`: atomic file writes.
- `metrics`: clean accuracy, ASR, robust accuracy, poison retention, DER, RIR, ROC AUC,
  aggregation over seeds.
- `data`: datasets as uint8 arrays (CIFAR-10 sources, synthetic data), on-device augmentation.
- `models`: the model registry (CIFAR ResNet-18, PreAct ResNet-18, a tiny CNN) and the
  `Classifier` (any flax module with its variables and normalization).
- `train`: the engine: train state, optimizer, schedule, jitted steps, data parallelism,
  the epoch loop, multi-process runtime and preemption.
- `attacks`: the attack registry and recipes; pure, jittable poisoning transforms.
- `select`: coreset selection (random, EL2N, GraNd, forgetting, CRAIG, grad_align) and the
  training-set detectors (Spectral Signatures, Activation Clustering).
- `prune`: mask pytrees, magnitude pruning, IMP with rewinding, channel pruning.
- `defenses`: the repairs, the detectors, the defender's data and the trade-off curve.
- `runs`: run directories, run identity, checkpoints, resumable phases.
- `pipeline`: the stages and the pipelines behind the scripts (train, defend, detect,
  evaluate, sweep, grid, zoo) and their reports.
- `configs`: the shared configuration defaults `configs/*.py` start from.
- `cli`: what the command-line scripts share: flag parsing, logging, errors as one line.
"""

__version__ = "0.1.0"
