"""The training engine: state, optimizer, schedule, jitted steps, data parallelism, epochs."""

from jaxbd.train.optimizer import sgd_direction
from jaxbd.train.schedule import CosineSchedule
from jaxbd.train.sharding import batch_sharded, check_batch_size, make_mesh, replicated
from jaxbd.train.state import TrainState, create_train_state, dense_mask, init_variables
from jaxbd.train.step import StepOutput, make_predict_step, make_train_step
from jaxbd.train.trainer import DeviceData, EpochStats, Presentations, Trainer

__all__ = [
    "CosineSchedule",
    "DeviceData",
    "EpochStats",
    "Presentations",
    "StepOutput",
    "TrainState",
    "Trainer",
    "batch_sharded",
    "check_batch_size",
    "create_train_state",
    "dense_mask",
    "init_variables",
    "make_mesh",
    "make_predict_step",
    "make_train_step",
    "replicated",
    "sgd_direction",
]
