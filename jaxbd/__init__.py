"""jaxbd: backdoor data-poisoning research at accelerator speed, in JAX/Flax.

Modules: `data` (datasets, augmentation), `attacks` (pure, jittable poisoning transforms),
`models` (CIFAR ResNet-18), `train` (the data-parallel training engine), `metrics` (clean
accuracy, ASR, robust accuracy, retention, DER), `experiment` (the pipeline behind
`scripts/train.py`).
"""

__version__ = "0.1.0"
