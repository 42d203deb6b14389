"""The reference study's grid: {full, random, el2n, forgetting, craig, grad_align}
× 5 seeds, each cell dense and pruned (IMP: 3 rounds of 30%, rewind to epoch 1, 10-epoch
rounds, layer-wise), on 2% BadNets CIFAR-10 with ResNet-18 and the 50-epoch recipe.

Run:
    python scripts/sweep.py --config configs/paper.py --workdir runs/paper \
        --config.data.path=/path/to/cifar10

Writes runs/paper/{results.csv,table.md,retention.png,accuracy.png,asr.png}. Work per seed,
in epochs over all 50,000 images: the pretraining run shared by el2n/forgetting/craig/
grad_align (20) and EL2N's three extra ensemble members (3 × 10); every cell trains 50 dense
epochs, 1 + 3 × 9 IMP epochs and 50 pruned epochs on its set (128 for the full cell, 64 for
a 50% cell): about 500 epochs per seed, 2,500 for the grid. A job for an accelerator; the
CPU-scale grid committed under results/ is `bash scripts/cpu_grid.sh` (README). Defenses
(`--config.sweep.defenses='("finetune",)'`) and attacks (`--config.sweep.attacks=...`) are
further axes of the same grid (configs/pyp_grid.py); `--config.sweep.shard=i
--config.sweep.num_shards=n` runs job i's share.
"""

from jaxbd.configs import base_config, sweep_section


def get_config():
    c = base_config()
    c.sweep = sweep_section(
        methods=("full", "random", "el2n", "forgetting", "craig", "grad_align"),
        seeds=(0, 1, 2, 3, 4),
        # Seeds of one method trained together as one vmap-batched model (execution only:
        # may change when continuing a grid). 1 (one at a time) is what measured faster;
        # batching is unmeasured on accelerators (BENCHMARKS.md, `scripts/bench.py --members`).
        seeds_together=1,
    )
    return c
