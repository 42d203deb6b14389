"""scripts/torch_baseline.py: the PyTorch CIFAR ResNet-18 that the benchmarks compare against.

Skipped where torch is not installed (CI installs only `.[test]`; torch comes with `.[bench]`).
"""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxbd.models import resnet18  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_baseline():
    path = os.path.join(REPO, "scripts", "torch_baseline.py")
    spec = importlib.util.spec_from_file_location("torch_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tb = _load_baseline()


def _jax_parameter_count(width: int, num_classes: int) -> int:
    model = resnet18(num_classes=num_classes, width=width)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"]))


def test_parameter_count_of_the_standard_resnet18():
    assert tb.count_parameters(tb.ResNet18(64, num_classes=10)) == 11_173_962


@pytest.mark.parametrize(("width", "num_classes"), [(4, 10), (8, 100)])
def test_parameter_count_matches_jaxbd(width, num_classes):
    model = tb.ResNet18(width, num_classes=num_classes)
    assert tb.count_parameters(model) == _jax_parameter_count(width, num_classes)


def test_forward_backward_step_on_cpu():
    torch.manual_seed(0)
    model = tb.ResNet18(4).to(memory_format=torch.channels_last)
    opt = tb.sgd(model)
    images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    labels = torch.randint(0, 10, (8,))
    x = tb.augment(images, torch.tensor(tb.MEAN), torch.tensor(tb.STD))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert model.features(x).shape == (8, 32)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, labels)
    assert logits.shape == (8, 10)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_augment_is_a_shifted_or_mirrored_crop():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (16, 8, 8, 3), dtype=torch.uint8)
    unit = torch.zeros(3), torch.ones(3)
    plain = images.permute(0, 3, 1, 2).float() / 255
    same = tb.augment(images, *unit, padding=0)
    for i in range(16):
        assert torch.equal(same[i], plain[i]) or torch.equal(same[i], plain[i].flip(2))
    shifted = tb.augment(images, *unit, padding=2)
    # The centre 4×4 of every crop is a window of the image or its mirror, shifted ≤ 2 each way.
    for i in range(16):
        kept = shifted[i][:, 2:6, 2:6]
        candidates = [plain[i], plain[i].flip(2)]
        assert any(
            torch.equal(kept, c[:, 2 + dr : 6 + dr, 2 + dc : 6 + dc])
            for c in candidates
            for dr in range(-2, 3)
            for dc in range(-2, 3)
        )


def test_benchmark_record(capsys):
    tb.main(["--device", "cpu", "--width", "2", "--n", "16", "--batch", "8", "--epochs", "2"])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["timed_epochs"] == 1 and record["images_per_s"] > 0
    assert record["precision"] == "bf16" and record["compile"] is False
    assert record["parameters"] == tb.count_parameters(tb.ResNet18(2))
