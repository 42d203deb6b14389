"""jaxbd's PyTorch baseline: the same CIFAR ResNet-18, trained the fast PyTorch way.

`scripts/bench.py --torch` runs this file in a subprocess to put a PyTorch figure beside
jaxbd's, and `scripts/pcb_reference_torch.py` imports its model and augmentation. It needs
only `torch` (no torchvision), CPU or CUDA build: `pip install -e ".[bench]"`.

The model (`ResNet18`) is layer for layer what `jaxbd.models.resnet18` builds, and training
(`benchmark`) mirrors jaxbd's `Trainer`: data on the device as uint8, augmentation on the
device, channels-last bf16 autocast, SGD with momentum and weight decay as jaxbd applies it.

    python scripts/torch_baseline.py --device cuda --width 64 --n 50000 --batch 128 --epochs 3
    python scripts/torch_baseline.py --device cpu --width 16 --n 2048 --precision fp32

Prints one JSON line: `images_per_s` (from the median timed epoch), `epoch_s`,
`first_epoch_s` and the settings. The first epoch warms up (compilation, cuDNN autotuning)
and is not timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn
from torch.nn import functional

# Per-channel CIFAR-10 training-set statistics in [0, 1] units, as jaxbd.data.augment's.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def _conv3x3(cin: int, cout: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers and an identity or (1×1 conv + BN) projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = functional.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return functional.relu(y + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18; `forward` returns float logits [B, C].

    The residual network of He et al. 2016, "Deep residual learning for image recognition"
    (CVPR), in its CIFAR form, layer for layer what `jaxbd.models.resnet18` builds: a 3×3
    stride-1 stem (conv, BatchNorm, ReLU) with no max-pool; four stages of two basic blocks
    with w, 2w, 4w and 8w channels, stride 2 at the start of stages 2–4 and a 1×1 conv +
    BatchNorm projection shortcut wherever the shape changes; global average pooling and a
    linear head. Convolutions start Kaiming-normal with fan_out, the head at PyTorch's
    nn.Linear default, BatchNorm at momentum 0.1 and eps 1e-5, as in jaxbd. Width 64 with 10
    classes has 11,173,962 parameters.

    Args:
        width: channels of the stem and the first stage (64 for the standard network).
        num_classes: size of the linear head.
    """

    def __init__(self, width: int = 64, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(_conv3x3(3, width, 1), nn.BatchNorm2d(width), nn.ReLU())
        blocks, cin = [], width
        for stage in range(4):
            cout = width * 2**stage
            for block in range(2):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and block == 0 else 1))
                cin = cout
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled penultimate activations, [B, 8·width]."""
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def augment(
    images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, padding: int = 4
) -> torch.Tensor:
    """Random crop with zero padding, random horizontal flip, normalization, on the device.

    Crop and flip are one gather from the zero-padded uint8 batch (each output pixel reads its
    shifted, possibly mirrored source), so only the final batch is converted to float.

    Args:
        images: uint8[B, H, W, C] on any device.
        mean, std: per-channel statistics in [0, 1] units, any shape with C elements.
        padding: zeros added on each side; crops shift the image by up to this many pixels.

    Returns:
        float32[B, C, H, W] in channels-last memory format, on `images`' device.
    """
    b, h, w, c = images.shape
    dev = images.device
    padded = functional.pad(images, (0, 0, padding, padding, padding, padding))  # pads W and H
    top = torch.randint(0, 2 * padding + 1, (b, 1), device=dev)
    left = torch.randint(0, 2 * padding + 1, (b, 1), device=dev)
    flip = torch.rand(b, 1, device=dev) < 0.5
    across = torch.arange(w, device=dev)
    rows = top + torch.arange(h, device=dev)  # [B, H]
    cols = left + torch.where(flip, w - 1 - across, across)  # [B, W]
    batch = torch.arange(b, device=dev)[:, None, None]
    crops = padded[batch, rows[:, :, None], cols[:, None, :]]  # uint8[B, H, W, C]
    # An NHWC tensor viewed as NCHW is channels-last in memory already.
    x = crops.permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - mean.to(dev).view(1, c, 1, 1)) / std.to(dev).view(1, c, 1, 1)
    return x.contiguous(memory_format=torch.channels_last)


def sgd(
    model: nn.Module, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4
) -> torch.optim.SGD:
    """SGD as jaxbd's `Trainer` applies it: weight decay on every parameter, no dampening."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def benchmark(
    device: str = "cpu",
    *,
    width: int = 64,
    n: int = 50_000,
    batch: int = 128,
    epochs: int = 3,
    precision: str = "bf16",
    compile: bool = False,
    seed: int = 0,
) -> dict:
    """Trains on `n` random CIFAR-shaped uint8 images and returns the throughput record.

    Training mirrors jaxbd's `Trainer`: the whole training set sits on the device as uint8,
    each epoch shuffles it on the device, random crop (zero padding 4) and horizontal flip run
    on the device on the uint8 batch as one gather, then normalization to float; activations
    use the channels-last memory format, the forward pass runs under bf16 autocast
    (`precision="bf16"`, the default) and the optimizer is SGD with momentum 0.9 and weight
    decay 5e-4 added to the gradient (PyTorch's convention, which jaxbd's optimizer
    reproduces). `compile` wraps the model and the optimizer step in `torch.compile`. The
    learning rate is constant: a schedule does not change what a step costs.
    """
    if epochs < 2:
        raise ValueError(f"epochs must be >= 2 (the first is not timed), got {epochs}")
    if n < batch:
        raise ValueError(f"n ({n}) must hold at least one batch ({batch})")
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be bf16 or fp32, got {precision!r}")
    dev = torch.device(device)
    torch.manual_seed(seed)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # Pixel values do not change the cost of a step, so random data stands in for CIFAR-10.
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, 10, (n,), device=dev)
    mean = torch.tensor(MEAN, device=dev)
    std = torch.tensor(STD, device=dev)

    model = ResNet18(width).to(dev, memory_format=torch.channels_last)
    model.train()
    opt = sgd(model)
    forward = torch.compile(model) if compile else model

    def update():
        opt.step()

    if compile:
        update = torch.compile(update)
    use_bf16 = precision == "bf16"

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = functional.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        update()
        return loss.detach()

    steps = n // batch
    times = []
    for _ in range(epochs):
        order = torch.randperm(n, device=dev)
        _sync(dev)
        start = time.perf_counter()
        for s in range(steps):
            idx = order[s * batch : (s + 1) * batch]
            loss = step(augment(images[idx], mean, std), labels[idx])
        final_loss = float(loss)  # waits for the device
        _sync(dev)
        times.append(time.perf_counter() - start)
    epoch_s = statistics.median(times[1:])
    return {
        "framework": f"torch {torch.__version__}",
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "width": width,
        "batch": batch,
        "n": n,
        "precision": precision,
        "compile": compile,
        "parameters": count_parameters(model),
        "timed_epochs": len(times) - 1,
        "first_epoch_s": times[0],
        "epoch_s": epoch_s,
        "images_per_s": steps * batch / epoch_s,
        "final_loss": final_loss,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--n", type=int, default=50_000, help="training images per epoch")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3, help="including one warm-up epoch")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--compile", action="store_true", help="torch.compile model and optimizer")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch warms up and is not timed)")
    record = benchmark(
        a.device,
        width=a.width,
        n=a.n,
        batch=a.batch,
        epochs=a.epochs,
        precision=a.precision,
        compile=a.compile,
        seed=a.seed,
    )
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
