"""The Parameter-Controlled Backdoor as the authors' PyTorch trainer runs it, for comparison.

A cross-check of `jaxbd.attacks.pcb`: this script trains the same CIFAR ResNet-18 in PyTorch
(the benchmark baseline's model and augmentation, `scripts/torch_baseline.py`, initialized
from the same distributions as jaxbd's) on the same class-stratified CIFAR-10 subset with the
PCB procedure of the authors' `ParameterControlledBackdoorTrainer`
(github.com/Ben-Schneider-code/Universal-Backdoor-Attacks, src/trainer/pcb_trainer.py;
`main` states it step by step). Each epoch prints one JSON line; the last line has test
clean accuracy and ASR (non-target test images with the patch, classified as the target).

    pip install -e ".[bench]"   # torch; its CPU build is enough
    python scripts/pcb_reference_torch.py --train_limit 5000 --width 8 --epochs 14 \
        --param_fraction 0.1

CIFAR-10 comes from `--data PATH` (a local copy, as `config.data.path`) or, without it, from
jaxbd's usual sources: its cache, tensorflow-datasets, or the official archive, downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

# scripts/ is on sys.path when this file runs as a script, so its sibling imports directly.
import torch_baseline as ref
from ml_collections import ConfigDict
from torch.nn import functional

from jaxbd.data import load_dataset


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--data", default=None, help="CIFAR-10 path (as config.data.path); default: cache/download"
    )
    p.add_argument("--train_limit", type=int, default=5000)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--param_fraction", type=float, default=0.1)
    p.add_argument("--poison_batch_ratio", type=float, default=0.1)
    p.add_argument("--target", type=int, default=0)
    p.add_argument("--patch", type=int, default=7, help="BadNets red square, bottom right")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def stamp(x: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A red size×size patch in the bottom-right corner of normalized NCHW images."""
    red = (torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1) - mean) / std
    x = x.clone()
    x[:, :, -size:, -size:] = red
    return x


def main(argv=None) -> None:
    """Trains with the authors' PCB procedure and prints one JSON line per epoch.

    - every even step (0, 2, ...) of an epoch is poisoned: the first `int(B · ratio)`
      examples of the loader's (already augmented) batch get the BadNets patch and the target
      label;
    - on the first poisoned step each parameter tensor (BatchNorm included) gets a fixed
      random mask with `int(p · numel)` ones; every poisoned step multiplies the gradients by
      it and then calls `SGD(momentum 0.9, weight decay 5e-4).step()`, so momentum and weight
      decay still move the other parameters (jaxbd's `update_mask_mode="gradient"`);
    - odd steps are ordinary clean steps.

    The schedule is jaxbd's (per-step cosine from `--lr` to 1e-5 over the run) so the two runs
    differ only in the framework, the initial draws and the trigger/augmentation order. Each
    epoch prints one JSON line (clean-step and poisoned-step loss and accuracy, the largest
    absolute parameter); the last line has test clean accuracy and ASR (non-target test
    images with the patch, classified as the target).
    """
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    splits = load_dataset(
        ConfigDict({"name": "cifar10", "path": args.data, "train_limit": args.train_limit})
    )
    images = torch.from_numpy(splits.train.images)
    labels = torch.from_numpy(splits.train.labels.astype(np.int64))
    mean = torch.tensor(ref.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(ref.STD).view(1, 3, 1, 1)

    model = ref.ResNet18(args.width)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    steps = len(images) // args.batch
    total = steps * args.epochs
    end_lr = 1e-5
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (end_lr + 0.5 * (args.lr - end_lr) * (1 + math.cos(math.pi * s / total))) / args.lr
        ),
    )
    num_poison = int(args.batch * args.poison_batch_ratio)
    masks: dict[int, torch.Tensor] = {}

    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.from_numpy(rng.permutation(len(images)))
        sums = {"clean": [0.0, 0, 0, 0], "poison": [0.0, 0, 0, 0]}  # Σ loss, correct, n, steps
        start = time.perf_counter()
        for step in range(steps):
            idx = perm[step * args.batch : (step + 1) * args.batch]
            x, y = ref.augment(images[idx], mean, std), labels[idx].clone()
            poisoned = step % 2 == 0
            if poisoned:
                x[:num_poison] = stamp(x[:num_poison], args.patch, mean, std)
                y[:num_poison] = args.target
            logits = model(x)
            loss = functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if poisoned:
                for j, param in enumerate(model.parameters()):
                    if j not in masks:
                        flat = torch.zeros(param.numel())
                        count = int(args.param_fraction * param.numel())
                        flat[torch.from_numpy(rng.choice(param.numel(), count, replace=False))] = 1
                        masks[j] = flat.view_as(param)
                    param.grad.mul_(masks[j])
            opt.step()
            sched.step()
            kind = sums["poison" if poisoned else "clean"]
            rows = slice(0, num_poison) if poisoned else slice(None)
            kind[0] += loss.item()
            kind[1] += int((logits[rows].argmax(1) == y[rows]).sum())
            kind[2] += len(y[rows])
            kind[3] += 1
        largest = max(float(p.detach().abs().max()) for p in model.parameters())
        record = {"epoch": epoch, "seconds": round(time.perf_counter() - start, 2)}
        for kind, (loss_sum, correct, n, count) in sums.items():
            # Batch-mean loss of the steps; accuracy of the clean batches' examples and of
            # the poisoned batches' triggered examples.
            record[f"{kind}_loss"] = loss_sum / max(1, count)
            record[f"{kind}_accuracy"] = correct / max(1, n)
        record["max_abs_param"] = largest
        print(json.dumps(record), flush=True)

    model.eval()
    test_x = torch.from_numpy(splits.test.images).permute(0, 3, 1, 2).float().div(255)
    test_x = (test_x - mean) / std
    test_y = torch.from_numpy(splits.test.labels.astype(np.int64))
    with torch.no_grad():
        clean = torch.cat([model(b).argmax(1) for b in test_x.split(500)])
        keep = test_y != args.target
        triggered = stamp(test_x[keep], args.patch, mean, std)
        hits = torch.cat([model(b).argmax(1) for b in triggered.split(500)])
    print(
        json.dumps(
            {
                "clean_accuracy": float((clean == test_y).float().mean()),
                "attack_success_rate": float((hits == args.target).float().mean()),
                "param_fraction": args.param_fraction,
                "lr": args.lr,
                "width": args.width,
                "train_images": len(images),
            }
        )
    )


if __name__ == "__main__":
    main()
