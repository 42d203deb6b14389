"""The training engine: state, optimizer, schedule, jitted steps, data parallelism, epochs,
and the multi-process runtime (`distributed`) and preemption requests (`preemption`) the
epoch loop honours."""

from jaxbd.train import distributed, preemption
from jaxbd.train.optimizer import sgd_direction
from jaxbd.train.schedule import CosineSchedule
from jaxbd.train.sharding import batch_sharded, check_batch_size, make_mesh, put, replicated
from jaxbd.train.state import TrainState, create_train_state, dense_mask, init_variables
from jaxbd.train.step import (
    PLAIN,
    UPDATE_MASK_MODES,
    LossFn,
    LossOutput,
    StepOutput,
    StepVariant,
    cross_entropy_loss,
    gather_rows,
    make_predict_step,
    make_train_step,
)
from jaxbd.train.trainer import (
    DeviceData,
    EpochFn,
    EpochProgress,
    EpochStats,
    Presentations,
    Trainer,
)

__all__ = [
    "PLAIN",
    "UPDATE_MASK_MODES",
    "CosineSchedule",
    "DeviceData",
    "EpochFn",
    "EpochProgress",
    "EpochStats",
    "LossFn",
    "LossOutput",
    "Presentations",
    "StepOutput",
    "StepVariant",
    "TrainState",
    "Trainer",
    "batch_sharded",
    "check_batch_size",
    "create_train_state",
    "cross_entropy_loss",
    "dense_mask",
    "distributed",
    "gather_rows",
    "init_variables",
    "make_mesh",
    "make_predict_step",
    "make_train_step",
    "preemption",
    "put",
    "replicated",
    "sgd_direction",
]
