"""Shared experiment defaults; `configs/*.py` start from `base_config()` and change fields.

They live in the package (not in `configs/`) because `scripts/`, not the repository root,
is on the import path when a config file is loaded. Every field is documented here once.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from jaxbd import attacks
from jaxbd.data.augment import CIFAR10_MEAN, CIFAR10_STD


def base_config() -> ml_collections.ConfigDict:
    """The reference study's settings: CIFAR-10, 2% BadNets, ResNet-18, 50 epochs.

    Each section becomes a validated settings object (`jaxbd.pipeline.config`); the
    methods are defined in docs/methods.md.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0  # Every random stream (poison, init, shuffle, augment) derives from it.

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"  # "cifar10" | "synthetic"
    c.data.path = config_dict.placeholder(str)  # local copy; None: cache, tfds, download
    c.data.source = "auto"  # "auto" | "path" | "download" | "tfds"
    c.data.cache_dir = config_dict.placeholder(str)  # None: $JAXBD_CACHE or ~/.cache/jaxbd
    # Keep only the first n examples (canonical order) of each split; None: all of them.
    c.data.train_limit = config_dict.placeholder(int)
    c.data.test_limit = config_dict.placeholder(int)
    c.data.mean = CIFAR10_MEAN  # per-channel normalization, in [0, 1] pixel units
    c.data.std = CIFAR10_STD
    # Synthetic data only:
    c.data.num_train = 2048
    c.data.num_test = 512
    c.data.num_classes = 10
    c.data.image_size = 32
    c.data.seed = 0
    c.data.noise = 0.25

    c.attack = ml_collections.ConfigDict()
    c.attack.name = "badnets"  # a key of jaxbd.attacks.ATTACKS
    c.attack.fraction = 0.02  # poisoned fraction of the training set
    c.attack.target = 0  # target class
    c.attack.exclude_target = False  # True: never poison target-class images
    # adv_clean_label: epochs of the surrogate trained on the clean set (train.* settings).
    c.attack.surrogate_epochs = 10
    # One sub-dict per attack with its factory's defaults, e.g. attack.badnets.size = 7
    # (7×7 covers rows/cols 25–31 of a 32×32 image), attack.wanet.grid_size = 4; see each
    # factory's docstring in jaxbd/attacks/<name>.py for what they mean.
    for name in attacks.ATTACKS:
        c.attack[name] = attacks.hparams_config(name)

    # Coreset selection before training (docs/methods.md); name None trains on the full set.
    c.select = ml_collections.ConfigDict()
    c.select.name = config_dict.placeholder(str)  # a key of jaxbd.select.SELECTORS
    c.select.fraction = 0.5  # subset size: round(fraction · N), split over classes
    c.select.variant = "standard"  # "study": the earlier study's EL2N/forgetting
    c.select.pretrain_epochs = 20  # pretraining run on the full poisoned set (train.* settings)
    c.select.pretrain_warmup_epochs = 0  # linear warm-up of the pretraining run
    # Share the pretraining run between methods of the same seed (a directory, e.g. a
    # sweep's); None: each run pretrains in its own workdir.
    c.select.pretrain_dir = config_dict.placeholder(str)
    c.select.score = ml_collections.ConfigDict()  # el2n and grand
    c.select.score.ensemble_size = 4  # models averaged (the paper used 10)
    c.select.score.score_epochs = (10,)  # scores taken after these epochs, averaged
    c.select.score.keep = "hard"  # "hard" (highest scores) | "easy"
    c.select.score.offset = 0.0  # fraction of each class's ranking skipped first
    c.select.score.chunk_size = 128  # GraNd: examples per vmap(grad) call
    # Ensemble training: "vmap" (members in one batched step), "sequential", or "auto"
    # (sequential on the CPU, vmap on accelerators).
    c.select.score.parallel = "auto"
    c.select.forgetting = ml_collections.ConfigDict()
    c.select.forgetting.keep = "hard"  # "hard" (most forgotten; never learned first) | "easy"
    c.select.forgetting.offset = 0.0
    c.select.craig = ml_collections.ConfigDict()
    c.select.craig.proxy = "error"  # "error" (p - onehot) | "concat" | "outer" (last layer)
    c.select.craig.greedy = "lazy"  # "exact" | "lazy" (same result, faster) | "stochastic"
    c.select.craig.epsilon = 0.1  # stochastic greedy's ε
    # Spectral Signatures keeps all but ⌈1.5·ε·n_c⌉ per class (select.fraction ignored).
    c.select.spectral = ml_collections.ConfigDict()
    c.select.spectral.poison_rate = 0.05  # ε, the expected poison rate: set to the study's
    # Activation Clustering keeps what it does not flag (select.fraction ignored).
    c.select.activation_clustering = ml_collections.ConfigDict()
    c.select.activation_clustering.dims = 10  # features reduced to this many dimensions
    c.select.activation_clustering.reduction = "ica"  # "ica" (FastICA) | "pca"
    c.select.activation_clustering.min_cluster = 0.35  # flag the smaller cluster below this

    # The pruned arm (docs/methods.md): IMP with rewinding on the same data (the selection),
    # from the dense arm's initialization, then the final sparse network trained with its
    # mask. rounds = 0 turns the arm off. See jaxbd/prune/imp.py for the exact procedure.
    c.prune = ml_collections.ConfigDict()
    c.prune.rounds = 3  # prune-and-retrain rounds; sparsity ≈ 1 − (1 − rate)^rounds
    c.prune.rate = 0.3  # fraction of the remaining prunable weights pruned per round
    c.prune.scope = "layerwise"  # "layerwise" (every conv/dense kernel) | "global"
    c.prune.rewind_epoch = 1  # survivors rewind to their values after this epoch (0: init)
    c.prune.round_epochs = 10  # each round trains to this epoch of a schedule this long
    c.prune.final_epochs = config_dict.placeholder(int)  # final sparse run; None: train.epochs
    c.prune.control = "none"  # lottery controls: "none" | "reinit" | "random_mask"

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet18"  # a key of jaxbd.models.MODELS
    c.model.width = 64  # 64: the standard ResNet-18 (11.17M parameters)
    c.model.dtype = "auto"  # compute dtype: "float32" | "bfloat16" | "auto" (bf16 off CPU)

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 50
    c.train.batch_size = 128  # global; must be a multiple of the device count
    c.train.lr = 0.1
    c.train.end_lr = 1e-5  # cosine decay per step down to this floor
    c.train.warmup_epochs = 0  # linear warm-up from 0 (0: none)
    c.train.momentum = 0.9
    c.train.weight_decay = 5e-4  # added to the gradient, as PyTorch's SGD does
    c.train.crop_padding = 4  # random crop with this zero padding (0: no crop)
    c.train.flip = True  # random horizontal flips
    c.train.eval_every_epochs = 10  # test accuracy/ASR logged every this many epochs (0: end)

    # How the run executes, not what it computes: may change when resuming.
    c.runtime = ml_collections.ConfigDict()
    c.runtime.num_devices = config_dict.placeholder(int)  # None: every available device
    # Train steps per jitted call (lax.scan length); None: 1 on CPU, 32 on accelerators.
    c.runtime.steps_per_call = config_dict.placeholder(int)
    c.runtime.eval_batch_size = 512  # must be a multiple of the device count
    c.runtime.progress = True  # progress bar per epoch (process 0 only)
    # Several processes (docs/scaling.md): "auto" starts jax.distributed when the cluster
    # (Cloud TPU pod slice, SLURM, ...) or the three fields below say this is one process of
    # several; "on" always, "off" never. None: $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES,
    # $JAX_PROCESS_ID, or what the cluster says.
    c.runtime.distributed = "auto"
    c.runtime.coordinator_address = config_dict.placeholder(str)  # "host:port" of process 0
    c.runtime.num_processes = config_dict.placeholder(int)
    c.runtime.process_id = config_dict.placeholder(int)
    return c


def defend_config() -> ml_collections.ConfigDict:
    """Defaults of `scripts/defend.py`: which run to defend, the defender's data, the repair.

    Every field is documented here once; `configs/defend.py` starts from it.
    """
    from jaxbd import defenses
    from jaxbd.defenses.registry import hparams_config

    c = ml_collections.ConfigDict()
    c.source = config_dict.placeholder(str)  # a finished scripts/train.py run directory
    c.source_arm = "dense"  # "dense" | "pruned": which of its trained models to defend
    c.seed = 0  # the defender's own streams (its data draw, its repair's randomness)

    # The defender's clean data, drawn from the source run's unpoisoned training images.
    c.defender = ml_collections.ConfigDict()
    c.defender.fraction = 0.01  # r: images as a fraction of the training set
    c.defender.per_class = config_dict.placeholder(int)  # images per class (overrides r)
    c.defender.val_fraction = 0.1  # held out per class for every decision (>= 1 image)
    # Whether the defender knows the trigger (triggered copies of its own images, true
    # labels): only repairs that assume it (grad_prune) use it, and only when this is True.
    c.defender.trigger_knowledge = False

    c.defense = ml_collections.ConfigDict()
    c.defense.name = "pivotal_tuning"  # a key of jaxbd.defenses.REPAIRS
    c.defense.steps = config_dict.placeholder(int)  # the step budget; None: the repair's own
    c.defense.eval_every = 50  # a trade-off-curve row every this many steps (and at step 0)
    c.defense.delta = 0.02  # budget: stop when validation accuracy drops more than this
    # ... for this many curve rows in a row (the last model within the budget is returned)
    c.defense.patience = 3
    # One sub-dict per repair with its class's defaults (Pick your Poison, r = 1%).
    for name, repair_class in defenses.REPAIRS.items():
        c.defense[name] = hparams_config(repair_class)

    # How the run executes, not what it computes: may change when resuming.
    c.runtime = ml_collections.ConfigDict()
    c.runtime.num_devices = config_dict.placeholder(int)
    c.runtime.steps_per_call = config_dict.placeholder(int)
    c.runtime.eval_batch_size = 512
    c.runtime.progress = True
    return c


def sweep_section(**fields) -> ml_collections.ConfigDict:
    """The `sweep` section of a grid config (`scripts/sweep.py`, `jaxbd.pipeline.sweep`):
    the grid's axes, how its defenses run, and which share of it this job runs.

    A grid config is an experiment config (`base_config`) with this section. Every cell —
    one attack × selection method × seed — trains one attacked model; every defense ×
    defender budget then repairs that model through `scripts/defend.py`'s pipeline.

    Args:
        **fields: values that replace the defaults (e.g. `methods=("full", "random")`).
    """
    d = defend_config()
    s = ml_collections.ConfigDict()
    # The axes. attacks: names of jaxbd.attacks.ATTACKS; () runs config.attack.name alone, in
    # the selection grid's layout (cells/<method>/seed<k>; with attacks:
    # cells/<attack>/<method>/seed<k>).
    s.attacks = ()
    s.methods = ("full",)  # "full" (no selection) or names of jaxbd.select.SELECTORS
    s.seeds = (0,)
    # Post-training defenses of every cell's model: names of jaxbd.defenses.REPAIRS, or a
    # variant "name@field=value,field=value" (e.g. "finetune@lr=0.01") with its own
    # hyper-parameters on top of defense.<name>.
    s.defenses = ()
    # The defender's data, one column per budget: a float is r, a fraction of the training
    # set (0.01 = 1%); an int is images per class. A data-free repair (clp) runs once.
    s.defender_budgets = (0.01,)
    s.source_arm = "dense"  # the model defended: "dense" | "pruned" (needs prune.rounds > 0)
    s.defender = ml_collections.ConfigDict()
    s.defender.val_fraction = d.defender.val_fraction  # held out per class, for decisions
    s.defender.trigger_knowledge = False  # True grants it to repairs that assume it
    # What configs/defend.py's `defense` section holds, for every defense of the grid:
    # steps (None: each repair's own budget; data-free repairs keep theirs), eval_every,
    # delta, patience, and defense.<name>.* per repair.
    s.defense = d.defense
    del s.defense["name"]
    # Detectors run on every cell's model at every budget (jaxbd.pipeline.detect.DETECTORS:
    # strip, neural_cleanse, cti), with configs/detect.py's detector.<name>.* settings.
    s.detectors = ()
    s.detector = detect_config().detector
    del s.detector["name"]
    # Execution (may change between invocations of one grid): seeds of a method trained
    # together as one vmap-batched model (1: one at a time, faster on the CPU), and the
    # share of the grid this job runs: whole (attack, seed) groups g with g % num_shards ==
    # shard, so n jobs (a SLURM array, n VMs) fill one directory together.
    s.seeds_together = 1
    s.shard = 0
    s.num_shards = 1
    for key, value in fields.items():
        s[key] = value
    return s


def evaluate_config() -> ml_collections.ConfigDict:
    """Defaults of `scripts/evaluate.py`: which model, which trigger."""
    c = ml_collections.ConfigDict()
    c.source = config_dict.placeholder(str)  # a finished training run or defense directory
    c.source_arm = "dense"  # a training run's "dense" or "pruned" model
    c.output = config_dict.placeholder(str)  # optional JSON file for the metrics
    # The trigger: None keeps the source run's attack; a name evaluates another attack's
    # trigger, with hyper-parameters from attack.<name> (factory defaults otherwise).
    c.attack = ml_collections.ConfigDict()
    c.attack.name = config_dict.placeholder(str)
    c.attack.target = config_dict.placeholder(int)  # None: the source run's target
    for name in attacks.ATTACKS:
        c.attack[name] = attacks.hparams_config(name)
    c.runtime = ml_collections.ConfigDict()
    c.runtime.num_devices = config_dict.placeholder(int)
    c.runtime.steps_per_call = config_dict.placeholder(int)
    c.runtime.eval_batch_size = 512
    c.runtime.progress = False
    return c


def detect_config() -> ml_collections.ConfigDict:
    """Defaults of `scripts/detect.py`: which model to examine, the defender's data, the
    detector (`jaxbd.pipeline.detect.DETECTORS`).

    Every field is documented here once; `configs/detect.py` starts from it. A detector's
    section, `detector.<name>`, holds its settings dataclass's defaults (STRIP:
    `jaxbd.defenses.strip.StripSettings`), so a newly registered detector needs no edit here.
    """
    from jaxbd.pipeline import detect

    c = ml_collections.ConfigDict()
    c.source = config_dict.placeholder(str)  # a finished training run or defense directory
    c.source_arm = "dense"  # a training run's "dense" | "pruned" model (a defense: its own)
    c.seed = 0  # the defender's own streams (its data draw, the detector's randomness)

    # The defender's clean data, drawn from the source run's unpoisoned training images
    # exactly as scripts/defend.py draws it (same seed, same images).
    c.defender = ml_collections.ConfigDict()
    c.defender.fraction = 0.01  # r: images as a fraction of the training set
    c.defender.per_class = config_dict.placeholder(int)  # images per class (overrides r)
    c.defender.val_fraction = 0.1  # held out per class: every threshold is set on these

    c.detector = ml_collections.ConfigDict()
    c.detector.name = "strip"  # a key of jaxbd.pipeline.detect.DETECTORS
    # STRIP: overlays (N, drawn from the defender's tuning images), blend ("sum": clip(x +
    # x_o), the paper's; "half": the 0.5/0.5 blend), frr (the target false-rejection rate on
    # held-out clean images, which sets the threshold), batch_size (superimposed images per
    # forward pass).
    for name, detector in detect.DETECTORS.items():
        c.detector[name] = detect.settings_config(detector.settings)

    # How the run executes, not what it computes: may change when resuming.
    c.runtime = ml_collections.ConfigDict()
    c.runtime.num_devices = config_dict.placeholder(int)
    c.runtime.steps_per_call = config_dict.placeholder(int)
    c.runtime.eval_batch_size = 512
    c.runtime.progress = False
    return c


def zoo_config() -> ml_collections.ConfigDict:
    """Defaults of `scripts/zoo.py` (`jaxbd.pipeline.zoo`): a smoke-scale recipe, the zoo's
    models, the defender's data and the model-level detectors.

    Every model is this experiment config with `seed` = its index, `attack.name` = its
    attack (backdoored) or `attack.fraction` = 0 (clean). `zoo.detector.<name>` holds each
    detector's settings (`jaxbd.pipeline.detect.DETECTORS`), with budgets cut to the
    smoke-scale models.
    """
    from jaxbd.pipeline import detect

    c = base_config()
    # The recipe: configs/smoke.py without its pruned arm, at the settings where every one of
    # the zoo's attacks is learned on the synthetic images (tests/test_attack_learning.py):
    # 20% poisons, 8 epochs, no random crop or flip (they disguise a full-image trigger),
    # WaNet at warp strength 1 without its noise mode. With 10% poisons, 4 epochs and the
    # augmentation, 3 of 4 backdoored models ended at ASR 0-10% (a model without a backdoor
    # sends ~10% of triggered images to the target): `zoo.min_asr` guards against that.
    c.data.name = "synthetic"
    c.data.num_train = 2048
    c.data.num_test = 512
    c.attack.fraction = 0.2
    c.attack.wanet.strength = 1.0
    c.attack.wanet.noise_fraction = 0.0
    c.model.width = 8
    c.model.dtype = "float32"
    c.train.epochs = 8
    c.train.crop_padding = 0
    c.train.flip = False
    c.train.batch_size = 64
    c.train.lr = 0.05
    c.train.eval_every_epochs = 0
    c.prune.rounds = 0
    c.runtime.eval_batch_size = 256
    c.runtime.progress = False

    c.zoo = ml_collections.ConfigDict()
    c.zoo.attacks = ("badnets", "blended", "wanet")  # backdoored model k: attacks[k % len]
    c.zoo.backdoored = 8  # backdoored models, seeds 0..backdoored-1
    c.zoo.clean = 8  # clean models (attack.fraction = 0), seeds 0..clean-1
    c.zoo.detectors = ("neural_cleanse", "cti")  # keys of jaxbd.pipeline.detect.DETECTORS
    # A backdoored model counts (is examined, and a positive of the AUC) when its ASR is at
    # least this: well above the ~1/C of a model without the backdoor.
    c.zoo.min_asr = 0.5
    c.zoo.bootstrap = 1000  # resamples of the models for the AUC's interval
    c.zoo.bootstrap_seed = 0
    c.zoo.detect_seed = 0  # the defender's streams (its data draw, the detectors' keys)
    # The defender's clean images per model: 10% of the 2,048 (≈ 164 tuning, 41 held out).
    c.zoo.defender = ml_collections.ConfigDict()
    c.zoo.defender.fraction = 0.1
    c.zoo.defender.per_class = config_dict.placeholder(int)
    c.zoo.defender.val_fraction = 0.2
    c.zoo.detector = ml_collections.ConfigDict()
    for name, detector in detect.DETECTORS.items():
        c.zoo.detector[name] = detect.settings_config(detector.settings)
    c.zoo.detector.neural_cleanse.epochs = 20
    c.zoo.detector.neural_cleanse.batch_size = 64
    c.zoo.detector.cti.repair_steps = 200
    c.zoo.detector.cti.repair_batch_size = 64
    # The reference repair's Δ: 40 held-out images per model, so the default 2% would
    # tolerate no error at all (one is 2.5%) and a single one would stop the repair at step
    # 0, leaving the examined model as its own reference; 5% tolerates two.
    c.zoo.detector.cti.repair_delta = 0.05
    # The inversion's cost is steps × classes × batch × 2 models: at 64 of the ≈ 164 tuning
    # images it halves (one CTI examination took 8-13 minutes at 128 on two busy cores).
    c.zoo.detector.cti.batch_size = 64
    return c
