"""Pipelines: configurations in, run directories out, built from reusable stages.

The stages, in the order the experiment pipeline runs them:

- `config`: the configuration as validated settings, section by section;
- `engine`: the compiled `Trainer` for the model, mesh and optimizer (reused in-process);
- `setup`: data → attack (training a surrogate if it needs one) → poisoned training set →
  triggered test set;
- `evaluate`: clean accuracy, ASR and robust accuracy of a state;
- `selection`: pretraining, scoring and the coreset;
- `arms`: the dense arm and the pruned arm (IMP with rewinding);
- `summary`: `summary.json`.

`experiment` composes them (`scripts/train.py`); `sweep` runs a grid of experiments and
`report` tabulates it (`scripts/sweep.py`). A new pipeline (defending or evaluating a
trained run) reuses `config`, `engine`, `setup` and `evaluate` rather than copying them.
"""
