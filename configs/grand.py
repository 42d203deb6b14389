"""GraNd 50% subset, then the Full recipe on the subset.

GraNd: Paul, Ganguli, Dziugaite 2021, "Deep learning on a data diet: finding important examples
early in training"; definition in docs/methods.md, "GraNd".

Like configs/el2n.py, but each example's score is the norm of its loss gradient over all
parameters (per-example `vmap(grad)` in chunks, norms reduced inside the jitted function),
taken after epoch 10 of the 20-epoch pretraining schedule and averaged over 4 models; each
class keeps its hardest half.

Run:
    python scripts/train.py --config configs/grand.py --workdir runs/grand \
        --config.data.path=/path/to/cifar10

Runtime: as configs/el2n.py plus 4 GraNd passes over the training set (each about three
inference passes).

Every config trains a dense and a pruned arm: the pruned arm (IMP, `config.prune`: 3 rounds
of 30% on 10-epoch rounds rewound to epoch 1, then the 65.7%-sparse network for the full
schedule) adds 28 + 50 epochs on the same data; `--config.prune.rounds=0` skips it.
"""

from jaxbd.configs import base_config


def get_config():
    c = base_config()
    c.select.name = "grand"
    return c
