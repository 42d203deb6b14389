"""Pipelines: configurations in, run directories out, built from reusable stages.

- `stages/`: what the pipelines share (validated settings, the engine, a source run read
  back, data and attack setup, test metrics, selection, the dense and pruned arms, the
  summary);
- the pipelines behind the scripts: `experiment` (`scripts/train.py`), `defend`
  (`scripts/defend.py`), `detect` with `detect_figures` (`scripts/detect.py`), `evaluate`
  (`scripts/evaluate.py`), `zoo` (`scripts/zoo.py`), and `defaults`, the configuration
  defaults of each;
- `grid/`: a study of many runs (`scripts/sweep.py`): its axes, each run's configuration,
  what makes two invocations the same grid, the sweep that runs it, its cost, and its
  reports and figures.

A new pipeline reuses the stages rather than copying them (docs/architecture.md).
"""
