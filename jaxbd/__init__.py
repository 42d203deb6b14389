"""jaxbd: backdoor data-poisoning research at accelerator speed, in JAX/Flax.

Modules: `data` (datasets, augmentation), `attacks` (pure, jittable poisoning transforms),
`select` (coreset selection: random, EL2N/GraNd, forgetting, CRAIG, grad_align), `prune`
(mask pytrees, magnitude pruning, IMP with rewinding), `models` (CIFAR ResNet-18), `train`
(the data-parallel training engine), `metrics` (clean accuracy, ASR, robust accuracy,
retention, DER), `experiment` (the pipeline behind `scripts/train.py`), `sweep` and `report`
(the methods × seeds grid behind `scripts/sweep.py`, its table and plots).
"""

__version__ = "0.1.0"
