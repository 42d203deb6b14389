"""A model zoo for model-level detection quality: 8 backdoored + 8 clean smoke-scale models.

    python scripts/zoo.py --config configs/zoo.py --workdir runs/zoo

Every model is a narrow ResNet-18 (width 8) trained 4 epochs on 2,048 synthetic 32×32
images; backdoored model k carries 10% poisons of attack k mod 3 (BadNets, Blended, WaNet),
clean models the same recipe with `attack.fraction=0`. Neural Cleanse and Calibrated Trigger
Inversion then examine each model with the defender's 10% of its clean training images, and
`auc.json`, `models.md` and `roc.png` report each detector's ROC AUC with a 1000-draw
bootstrap interval over the 16 models. The defaults live in `jaxbd.configs.zoo_config`.
"""

from jaxbd.configs import zoo_config


def get_config():
    return zoo_config()
