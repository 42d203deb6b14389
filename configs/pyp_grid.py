"""Pick your Poison's CIFAR-10 study as one grid: every attack against the five repairs at the
defender budgets of its Table 3 (Lukas & Kerschbaum 2023), remaining ASR within Δ = 2%.

Attacks (`sweep.attacks`): the poison-label `badnets`, `adaptive_blend`, `adaptive_patch`,
`wanet` and the clean-label `adv_clean_label` (Turner et al.'s label-consistent attack), as
jaxbd's zoo implements them with their factories' defaults (docs/methods.md, "Attacks"),
2% of the training set poisoned (clean-label: of the target class's images), target class 0.
Check the list against the paper's before setting numbers side by side: jaxbd lacks some of
its attacks, and its triggers are generated in code, not loaded from the authors' files.
Repairs (`sweep.defenses`): `finetune`, `fine_pruning`, `nad`, `neural_cleanse`,
`pivotal_tuning` at their defaults (Pick your Poison's grid-searched CIFAR-10 values at r =
1%); defender budgets r ∈ {1%, 2.5%, 5%} of the training set, 10% of it held out for every
decision; Δ = 0.02; 3 seeds. The victim: ResNet-18 (width 64), the reference 50-epoch recipe
(`jaxbd.configs.base_config`), no selection, no pruned arm.

Run (resumable; `--config.sweep.shard=i --config.sweep.num_shards=n` for n jobs):
    python scripts/sweep.py --config configs/pyp_grid.py --workdir runs/pyp_grid \
        --config.data.path=/path/to/cifar10

Writes table_defenses.md (the paper's table: remaining ASR · clean accuracy · η_Δ per attack
× repair × r), table_backdoorbench.md, tradeoff_<attack>.png, heatmap_<r>.png and the rest
(`jaxbd.pipeline.grid.defense_report`). Detectors are a further axis
(`--config.sweep.detectors='("strip","cti")'`; not counted in the wall time below).

Expected wall time: 15 cells (5 attacks × 3 seeds) of 50 epochs over 50,000 images, plus
adv_clean_label's 10-epoch surrogate per seed (780 epochs in all), and 225 defense runs of
1,000–2,000 tuning steps of 128 images with a curve row (20,000 test images) every 50 steps.
`python scripts/project_grid.py --config configs/pyp_grid.py --images_per_s R` counts it at
a training throughput R (curve-row evaluations as forward passes at 3R): at this project's
CPU figure for ResNet-18 width 64 (R = 22.4 images/s, BENCHMARKS.md) 484 hours of training
and 1,039 of defenses (the curve rows' 820,000 test images per 2,000-step run dominate):
about 63 days, a job for an accelerator; at R = 50,000 (the H200 target of one
50,000-image epoch per second) 13 minutes of training and 28 of defenses, 41 minutes — a
lower bound that leaves out each repair's own planning (Neural Cleanse's trigger search,
NAD's teacher) and the per-step overheads. The measured figure comes from
`scripts/device_checks.sh` (step `pyp_grid`: a reduced grid on the accelerator, projected
by `scripts/project_grid.py --reduced`); none is recorded yet.
"""

from jaxbd.configs import base_config, sweep_section


def get_config():
    c = base_config()
    c.attack.fraction = 0.02
    c.attack.target = 0
    c.prune.rounds = 0  # the defenses repair the dense model
    c.sweep = sweep_section(
        attacks=("badnets", "adaptive_blend", "adaptive_patch", "wanet", "adv_clean_label"),
        methods=("full",),
        seeds=(0, 1, 2),
        defenses=("finetune", "fine_pruning", "nad", "neural_cleanse", "pivotal_tuning"),
        defender_budgets=(0.01, 0.025, 0.05),
    )
    c.sweep.defense.delta = 0.02
    return c
