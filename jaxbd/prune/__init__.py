"""Pruning: masks as pytrees, magnitude pruning, IMP with rewinding (Frankle & Carbin 2019).

    from jaxbd import prune

    mask = prune.magnitude_masks(params, 0.3, scope="layerwise")  # bool pytree like params
    params = prune.apply_mask(params, mask)
    prune.sparsity(mask)["total"]                                 # 0.3 of the kernels

Filter-level masks (`jaxbd.prune.channels`): `conv_bn_pairs` maps each convolution to the
BatchNorm that normalizes its output, traced from the model's structure (right on
pre-activation networks too); `filter_mask` prunes whole filters with their own BatchNorm
channels.

Masks are boolean pytrees with exactly the parameters' structure (all-True for leaves never
pruned: biases, BatchNorm); training with one (`Trainer.new_state(..., mask=mask)`) keeps
pruned weights at exactly zero without recompiling when the mask changes.
"""

from jaxbd.prune.channels import (
    ConvBN,
    conv_bn_pairs,
    filter_keep_mask,
    filter_mask,
    module_params,
)
from jaxbd.prune.imp import (
    CONTROLS,
    IMPResult,
    IMPSettings,
    TrainPhases,
    in_memory_phases,
    rewind,
    run_imp,
    run_imp_group,
)
from jaxbd.prune.keep_pruned import KeepPrunedState, keep_pruned, replace_mask
from jaxbd.prune.magnitude import (
    SCOPES,
    magnitude_masks,
    num_to_prune,
    random_masks,
    survivor_counts,
)
from jaxbd.prune.masks import (
    apply_mask,
    check_mask,
    full_mask,
    is_kernel,
    path_name,
    prunable_leaves,
    sparsity,
    survivors,
)

__all__ = [
    "CONTROLS",
    "SCOPES",
    "ConvBN",
    "IMPResult",
    "IMPSettings",
    "KeepPrunedState",
    "TrainPhases",
    "apply_mask",
    "check_mask",
    "conv_bn_pairs",
    "filter_keep_mask",
    "filter_mask",
    "full_mask",
    "in_memory_phases",
    "is_kernel",
    "keep_pruned",
    "magnitude_masks",
    "module_params",
    "num_to_prune",
    "path_name",
    "prunable_leaves",
    "random_masks",
    "replace_mask",
    "rewind",
    "run_imp",
    "run_imp_group",
    "sparsity",
    "survivor_counts",
    "survivors",
]
