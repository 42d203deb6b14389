"""A model zoo for model-level detection quality: 8 backdoored + 8 clean smoke-scale models.

    python scripts/zoo.py --config configs/zoo.py --workdir runs/zoo

Every model is a narrow ResNet-18 (width 8) trained 8 epochs on 2,048 synthetic 32×32
images without random crops or flips; backdoored model k carries 20% poisons of attack k mod 3
(BadNets, Blended, WaNet at warp strength 1), clean models the same recipe with
`attack.fraction=0`. A backdoored model whose ASR stays below `zoo.min_asr` (0.5) did not
learn its backdoor and is listed but left out of the AUC. Neural Cleanse and Calibrated
Trigger Inversion then examine each model with the defender's 10% of its clean training
images, and `auc.json`, `models.md` and `roc.png` report each detector's ROC AUC with a
1000-draw bootstrap interval over the models. The defaults live in `jaxbd.configs.zoo_config`.
"""

from jaxbd.configs import zoo_config


def get_config():
    return zoo_config()
