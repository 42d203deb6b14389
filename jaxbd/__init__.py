"""jaxbd: backdoor data-poisoning research at accelerator speed, in JAX/Flax.

Packages, from the bottom layer up (docs/architecture.md):

- `types`, `settings`, `rng`, `files`, `metrics`: shared types and JSON values, settings
  dataclasses and the one builder of config sections, named PRNG streams, atomic writes,
  CDA/ASR/RA/retention/DER/RIR/ROC AUC and their aggregation.
- `data`: datasets as uint8 arrays (CIFAR-10 sources, synthetic data), on-device augmentation.
- `models`: the model registry and the `Classifier` (any flax module, its variables and
  normalization), which every method that examines a model takes.
- `train`: the engine: train state, jitted steps and their variants, data parallelism, the
  one training loop, multi-process runtime and preemption.
- `attacks`, `select`, `prune`, `defenses`: the methods, each package with its registry:
  attacks and recipes, coreset selection and training-set detectors, mask pytrees and IMP,
  repairs and detectors (`defenses.repair`, `defenses.detect` on any model).
- `runs`: run directories, run identity, checkpoints, resumable phases.
- `pipeline`: the stages and pipelines behind the scripts (train, defend, detect, evaluate,
  sweep and its grid, zoo) and their reports.
- `configs`, `cli`: the configuration defaults `configs/*.py` start from; what the scripts
  share (flags, logging, errors as one line).
"""

__version__ = "0.1.0"
