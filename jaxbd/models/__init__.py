"""Models: flax.linen modules returning `(logits, features)`.

`MODELS` maps a config name to a factory `(num_classes, width, dtype) -> nn.Module`.
"""

from jaxbd.models.resnet import ResNet, resnet18

MODELS = {"resnet18": resnet18}

__all__ = ["MODELS", "ResNet", "resnet18"]
