"""Smoke test of scripts/bench_defenses.py (every registered repair, Neural Cleanse's two
programs) and of scripts/torch_neural_cleanse.py at the tiniest size."""

import importlib.util
import json
import os
import sys

import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(SCRIPTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_registered_repair_takes_the_benchmark_sizes():
    from jaxbd.defenses import REPAIRS

    bench = _load("bench_defenses")
    args = bench.parse_args(["--steps", "3", "--batch", "16", "--n", "32"])
    assert args.repairs == list(REPAIRS)
    for name in REPAIRS:
        repair = bench.make_repair_for(name, args)
        # A repair may refuse to tune (CLP: steps must be 0) and keeps its own value then.
        assert repair.steps in (0, 3) and repair.batch_size == 16, name


def test_a_repair_that_assumes_trigger_knowledge_gets_the_trigger():
    from jaxbd.defenses import REPAIRS

    bench = _load("bench_defenses")
    args = bench.parse_args(["--model", "tiny_cnn", "--width", "2", "--image_size", "8"])
    args.n, args.val = 16, 10
    defender = bench.make_defender(args)
    for name in REPAIRS:
        repair = bench.make_repair_for(name, args)
        ctx = bench.make_context(args, bench.make_trainer(args, repair), defender, name, repair)
        assert (ctx.trigger is not None) == bool(getattr(repair, "needs_trigger", False)), name
    assert any(getattr(REPAIRS[n](), "needs_trigger", False) for n in REPAIRS)


@pytest.mark.slow  # the script end to end, about half a minute; .ci/run runs it
def test_bench_defenses_smoke(capsys):
    bench = _load("bench_defenses")
    # One repair and Neural Cleanse's two programs, on tiny_cnn so that the compilations take
    # seconds (the script's model is ResNet-18; every repair is timed by the full runs).
    argv = "--model tiny_cnn --width 2 --image_size 8 --n 32 --batch 16 --steps 2"
    records = bench.main(
        [*argv.split(), "--repairs", "finetune", "--nc_epochs", "1", "--precision", "fp32"]
    )
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines == records
    repairs = [r for r in records if r.get("measurement") == "repair"]
    assert [r["repair"] for r in repairs] == ["finetune"]
    for r in repairs:
        assert r["steps"] == 2 and r["warmup_steps"] == 1, r
        assert r["tune_s"] > 0 and r["images_per_s"] == pytest.approx(32 / r["tune_s"])
        assert r["plan_first_s"] >= 0 and r["plan_s"] >= 0
    (nc,) = [r for r in records if r.get("measurement") == "neural_cleanse reverse_engineer"]
    assert nc["steps_per_label"] == 2 and len(nc["one_at_a_time_per_label_s"]) == 10
    assert nc["loop_over_all"] == pytest.approx(nc["one_at_a_time_s"] / nc["all_labels_s"])
    # The same keys and batches either way: the masks agree up to float reassociation.
    assert nc["max_norm_difference"] < 0.5
    assert "| finetune |" in out and "one at a time / all at once" in out


def test_bench_defenses_rejects_bad_flags():
    bench = _load("bench_defenses")
    with pytest.raises(SystemExit):
        bench.parse_args(["--repairs", "nope"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--model", "tiny_cnn", "--torch"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--n", "8", "--batch", "16"])


def test_torch_neural_cleanse_loop():
    pytest.importorskip("torch")
    sys.path.insert(0, SCRIPTS)
    try:
        torch_nc = _load("torch_neural_cleanse")
    finally:
        sys.path.remove(SCRIPTS)
    r = torch_nc.benchmark(
        "cpu", width=2, n=32, image_size=8, batch=16, epochs=1, labels=3, precision="fp32"
    )
    assert r["steps_per_label"] == 2 and len(r["per_label_s"]) == 3 and len(r["norms"]) == 3
    assert all(0 < norm <= 64 for norm in r["norms"])
    assert r["images_per_s"] == pytest.approx(3 * 2 * 16 / r["seconds"])
