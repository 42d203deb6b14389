"""The training engine: state, optimizer, schedule, jitted steps, data parallelism, the one
loop every epoch runs on (`loop`), ensembles, inference, and the multi-process runtime
(`distributed`) and preemption requests (`preemption`) the loop honours."""

from jaxbd.train import distributed, ensemble, loop, preemption
from jaxbd.train.device_data import DeviceData
from jaxbd.train.optimizer import sgd_direction
from jaxbd.train.schedule import CosineSchedule
from jaxbd.train.sharding import batch_sharded, check_batch_size, make_mesh, put, replicated
from jaxbd.train.state import TrainState, create_train_state, dense_mask, init_variables
from jaxbd.train.stats import EpochFn, EpochProgress, EpochStats, Presentations
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
from jaxbd.train.trainer import Trainer

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
    "ensemble",
    "gather_rows",
    "init_variables",
    "loop",
    "make_mesh",
    "make_predict_step",
    "make_train_step",
    "preemption",
    "put",
    "replicated",
    "sgd_direction",
]
