"""The stages the pipelines are built from, in the order the experiment pipeline runs them.

- `experiment_settings`: the configuration as validated settings, section by section;
- `engine`: the compiled `Trainer` for the model, mesh and optimizer (reused in-process);
- `source`: a finished run read back (its settings, its model), for the pipelines that start
  from one;
- `setup`: data → attack (training a surrogate if it needs one) → poisoned training set →
  triggered test set;
- `test_metrics`: clean accuracy, ASR and robust accuracy of a model on the test sets;
- `selection`: pretraining, scoring and the coreset;
- `arms`: the dense arm and the pruned arm (IMP with rewinding);
- `summary`: `summary.json`.
"""
