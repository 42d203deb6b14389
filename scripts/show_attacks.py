"""Draws every registered attack on real CIFAR-10 images: one PNG grid.

Each row is one attack; the columns are the clean image, its training-time poison, the
test-time triggered image and the amplified difference |poisoned − clean| × `--amplify`
(clipped), so faint triggers (blends, warps, DCT bands, PGD noise) become visible. Clean-label
attacks are shown on a target-class image (the only kind they poison). `build` gives each
attack what its recipe needs; `main` says how the figure is a function of the flags.

    python scripts/show_attacks.py --data /path/to/cifar10 --out docs/attacks.png

Without `--out` the grid goes to runs/show_attacks/attacks.png, never over the committed
docs/attacks.png. Without `--data` the images come from the decoded cache,
tensorflow-datasets if installed, or the official archive, downloaded once (see
`jaxbd.data.cifar10`). A quick check of the script on synthetic images, with no download:

    python scripts/show_attacks.py --synthetic 512 --model tiny_cnn --surrogate_epochs 1 \
        --out /tmp/attacks.png
"""

from __future__ import annotations

import argparse
import functools
import os

import jax
import numpy as np
from PIL import Image, ImageDraw

from jaxbd import attacks, models, rng
from jaxbd.data import CIFAR10_MEAN, CIFAR10_STD, DataSettings, load_dataset
from jaxbd.train import CosineSchedule, Trainer, init_variables, make_mesh

COLUMNS = ("clean", "train poison", "test trigger", "difference")
DEFAULT_OUT = os.path.join("runs", "show_attacks", "attacks.png")


def train_surrogate(train, model, epochs: int, seed: int):
    """`model` trained briefly on `train`: the surrogate of attacks whose recipe needs one."""
    trainer = Trainer(
        model, make_mesh(1), batch_size=128, mean=CIFAR10_MEAN, std=CIFAR10_STD, progress=False
    )
    steps = trainer.steps_per_epoch(len(train)) * epochs
    state = trainer.init_state(
        rng.stream(seed, "surrogate_init"),
        train.image_shape,
        CosineSchedule.create(0.05, steps),
        rng=rng.stream(seed, "surrogate_dropout"),
    )
    data = trainer.put(train.images, train.labels)
    for epoch in range(epochs):
        epoch_key = jax.random.fold_in(rng.stream(seed, "surrogate_epochs"), epoch)
        state, stats, _ = trainer.train_epoch(state, data, epoch_key)
        print(f"surrogate epoch {epoch + 1}: train accuracy {stats.accuracy:.3f}")
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return attacks.surrogate_logits_fn(model, variables, CIFAR10_MEAN, CIFAR10_STD)


def build(name: str, target: int, num_classes: int, surrogate, victim_params, seed: int = 0):
    """The attack `name` with its default hyper-parameters and what its recipe asks for.

    What an attack needs beyond its hyper-parameters comes from its recipe
    (`jaxbd.attacks.recipe`): an attack that perturbs against a surrogate gets one trained
    here for `--surrogate_epochs` epochs on a class-stratified subset; an attack that controls
    the victim's parameters gets the parameter shapes of a `--model` network and a key of its
    own (PCB: its poisons are its BadNets trigger, its parameter mask has no pictorial form).

    `surrogate()` trains (once) and returns the surrogate's logits function;
    `victim_params()` returns the victim's parameter shapes.
    """
    needs = attacks.recipe(name)
    return attacks.make_attack(
        attacks.AttackSettings(name=name, target=target),
        num_classes=num_classes,
        logits_fn=surrogate() if needs.surrogate else None,
        params=victim_params() if needs.victim else None,
        key=rng.stream(seed, f"show_attacks/{name}/victim") if needs.victim else None,
    )


def tile(image: np.ndarray, scale: int) -> Image.Image:
    return Image.fromarray(np.asarray(image, np.uint8)).resize(
        (image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST
    )


def main(argv=None) -> None:
    """Draws the grid.

    The figure is a function of the flags: every random choice (the surrogate's
    initialization, data order and augmentation, each row's trigger key, PGD's random start)
    comes from `--seed` through named streams (`jaxbd.rng.stream`), a row's key from its
    attack's name, so two runs with the same flags draw the same grid. `--attacks` draws only
    the named rows (e.g. `--attacks adv_clean_label` to check the adversarial row).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default=None,
        help="a local CIFAR-10 copy (default: the cache, tfds, or the official download)",
    )
    parser.add_argument(
        "--synthetic",
        type=int,
        default=None,
        metavar="N",
        help="draw on N synthetic training images (and N // 2 test images) instead of CIFAR-10",
    )
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"the PNG to write (default {DEFAULT_OUT}; the committed figure is "
        "docs/attacks.png, written only when asked for)",
    )
    parser.add_argument(
        "--attacks",
        default=",".join(attacks.ATTACKS),
        help="comma-separated rows to draw (default: every registered attack)",
    )
    parser.add_argument("--target", type=int, default=0)
    parser.add_argument("--scale", type=int, default=4, help="pixels per image pixel")
    parser.add_argument("--amplify", type=float, default=5.0)
    parser.add_argument(
        "--model", default="resnet18", choices=sorted(models.MODELS), help="surrogate/victim"
    )
    parser.add_argument("--width", type=int, default=16, help="the model's width")
    parser.add_argument("--surrogate_epochs", type=int, default=2)
    parser.add_argument("--surrogate_examples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = [n for n in args.attacks.split(",") if n]
    unknown = sorted(set(names) - set(attacks.ATTACKS))
    if unknown:
        parser.error(f"--attacks: unknown {unknown}; choose from {sorted(attacks.ATTACKS)}")

    if args.synthetic is not None:
        settings = DataSettings(
            name="synthetic",
            num_train=args.synthetic,
            num_test=max(args.synthetic // 2, 64),
            train_limit=min(args.surrogate_examples, args.synthetic),
        )
    else:
        settings = DataSettings(path=args.data, train_limit=args.surrogate_examples)
    # train: the surrogate's class-stratified subset; test: every test image.
    splits = load_dataset(settings)
    train, test = splits.train, splits.test
    model = models.MODELS[args.model](num_classes=train.num_classes, width=args.width)

    @functools.cache
    def surrogate():
        return train_surrogate(train, model, args.surrogate_epochs, args.seed)

    @functools.cache
    def victim_params():  # shapes only: nothing is initialized
        def init(key):
            return init_variables(model, key, train.image_shape)[0]

        return jax.eval_shape(init, jax.random.key(0))

    # A fixed, recognisable test image per row: the first non-target image (a target-class
    # one for clean-label attacks).
    other = int(np.flatnonzero(test.labels != args.target)[3])
    same = int(np.flatnonzero(test.labels == args.target)[3])
    label_width, size = 150, 32 * args.scale
    rows = len(names)
    grid = Image.new("RGB", (label_width + 4 * (size + 4), 20 + rows * (size + 4)), "white")
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(COLUMNS):
        draw.text((label_width + c * (size + 4) + 4, 4), title, fill="black")
    for row, name in enumerate(names):
        y = 20 + row * (size + 4)
        try:
            attack = build(
                name, args.target, train.num_classes, surrogate, victim_params, args.seed
            )
        except ValueError as error:  # e.g. all_to_all has no single target class
            draw.text((4, y + size // 2 - 12), f"{name}\nskipped (see log)", fill="black")
            print(f"{name}: skipped ({error})")
            continue
        index = same if attack.clean_label else other
        clean = test.images[index : index + 1]
        label = test.labels[index : index + 1]
        # By name, not row: a row's figure does not change when attacks are added or left out.
        key = rng.stream(args.seed, f"show_attacks/{name}")
        poisoned, poison_label = jax.device_get(attack(key, clean, label))
        triggered, test_label = jax.device_get(attack.apply_test(key, clean, label))
        difference = np.clip(
            np.abs(poisoned[0].astype(np.float32) - clean[0]) * args.amplify, 0, 255
        )
        draw.text(
            (4, y + size // 2 - 12),
            f"{name}\ny: {label[0]} -> {poison_label[0]} (train)\n   -> {test_label[0]} (test)",
            fill="black",
        )
        for c, image in enumerate((clean[0], poisoned[0], triggered[0], difference)):
            grid.paste(tile(image, args.scale), (label_width + c * (size + 4), y))
        print(f"{name}: max |difference| {np.abs(poisoned[0].astype(int) - clean[0]).max()}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
