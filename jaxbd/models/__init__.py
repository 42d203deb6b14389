"""Models: flax.linen modules returning `(logits, features)`.

`MODELS` maps a config name to a factory `(num_classes, width, dtype) -> nn.Module`:

- "resnet18": the CIFAR ResNet-18 (`jaxbd.models.resnet`), the research model;
- "preact_resnet18": BackdoorBench's pre-activation ResNet-18 (`jaxbd.models.preact_resnet`),
  for numbers comparable to its leaderboard;
- "tiny_cnn": a two-conv network (`jaxbd.models.tiny`) so that pipeline tests compile in a
  fraction of a second; not for research.

Every model sows its stage outputs into the "intermediates" collection (a no-op unless the
caller makes it mutable; see each module's docstring).
"""

from jaxbd.models.preact_resnet import PreActResNet, preact_resnet18
from jaxbd.models.resnet import ResNet, resnet18
from jaxbd.models.tiny import TinyCNN, tiny_cnn

MODELS = {"resnet18": resnet18, "preact_resnet18": preact_resnet18, "tiny_cnn": tiny_cnn}

__all__ = [
    "MODELS",
    "PreActResNet",
    "ResNet",
    "TinyCNN",
    "preact_resnet18",
    "resnet18",
    "tiny_cnn",
]
