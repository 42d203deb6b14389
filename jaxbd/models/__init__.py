"""Models: the `Classifier` every method takes, and jaxbd's flax modules.

`Classifier` (`jaxbd.models.classifier`) wraps any flax module with its variables and input
normalization; jaxbd's own modules return `(logits, features)` and sow their stage outputs
into "intermediates" (a no-op unless the caller makes it mutable).

`MODELS` maps a config name to a factory `(num_classes, width, dtype) -> nn.Module`:

- "resnet18": the CIFAR ResNet-18 (`jaxbd.models.resnet`), the research model;
- "preact_resnet18": BackdoorBench's pre-activation ResNet-18 (`jaxbd.models.preact_resnet`),
  for numbers comparable to its leaderboard;
- "tiny_cnn": a two-conv network (`jaxbd.models.tiny`) so that pipeline tests compile in a
  fraction of a second; not for research.
"""

from jaxbd.models.classifier import (
    CAPABILITIES,
    Classifier,
    EngineModel,
    MissingCapabilityError,
)
from jaxbd.models.preact_resnet import PreActResNet, preact_resnet18
from jaxbd.models.resnet import ResNet, resnet18
from jaxbd.models.tiny import TinyCNN, tiny_cnn

MODELS = {"resnet18": resnet18, "preact_resnet18": preact_resnet18, "tiny_cnn": tiny_cnn}

__all__ = [
    "CAPABILITIES",
    "MODELS",
    "Classifier",
    "EngineModel",
    "MissingCapabilityError",
    "PreActResNet",
    "ResNet",
    "TinyCNN",
    "preact_resnet18",
    "resnet18",
    "tiny_cnn",
]
