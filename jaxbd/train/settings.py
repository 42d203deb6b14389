"""The `config.train` and `config.runtime` sections as settings: what training computes, and
how it executes."""

from __future__ import annotations

import dataclasses

from jaxbd.settings import require, require_finite
from jaxbd.train.distributed import MODES, initialize
from jaxbd.train.schedule import CosineSchedule


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """Optimizer, schedule, augmentation and length of a training run.

    Attributes:
        epochs: training epochs.
        batch_size: global batch size (a multiple of the device count).
        lr: peak learning rate.
        end_lr: the cosine schedule's floor, in [0, lr].
        warmup_epochs: linear warm-up from 0, in [0, epochs).
        momentum: SGD momentum, in [0, 1).
        weight_decay: L2 coefficient added to the gradient (PyTorch's convention).
        crop_padding: random-crop zero padding (0: no crop).
        flip: random horizontal flips.
        eval_every_epochs: test metrics logged every this many epochs (0: only at the end).
    """

    epochs: int = 50
    batch_size: int = 128
    lr: float = 0.1
    end_lr: float = 1e-5
    warmup_epochs: int = 0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    crop_padding: int = 4
    flip: bool = True
    eval_every_epochs: int = 10

    def __post_init__(self):
        for field in ("lr", "end_lr", "momentum", "weight_decay"):
            require_finite(getattr(self, field), field)
        require(self.epochs >= 1, "epochs", "must be >= 1", self.epochs)
        require(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)
        require(self.lr > 0, "lr", "must be > 0", self.lr)
        require(0 <= self.end_lr <= self.lr, "end_lr", f"must be in [0, lr={self.lr}]", self.end_lr)
        require(
            0 <= self.warmup_epochs < self.epochs,
            "warmup_epochs",
            f"must be in [0, epochs={self.epochs})",
            self.warmup_epochs,
        )
        require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)", self.momentum)
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0", self.weight_decay)
        require(self.crop_padding >= 0, "crop_padding", "must be >= 0", self.crop_padding)
        require(
            self.eval_every_epochs >= 0, "eval_every_epochs", "must be >= 0", self.eval_every_epochs
        )

    def schedule(
        self, epochs: int, steps_per_epoch: int, warmup_epochs: int | None = None
    ) -> CosineSchedule:
        """The learning-rate schedule of a run of `epochs` epochs of `steps_per_epoch` steps
        (warm-up: this section's unless given)."""
        warmup = self.warmup_epochs if warmup_epochs is None else warmup_epochs
        return CosineSchedule.create(
            self.lr,
            epochs * steps_per_epoch,
            end=self.end_lr,
            warmup_steps=warmup * steps_per_epoch,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeSettings:
    """How a run executes, not what it computes (may change when resuming).

    Attributes:
        num_devices: devices of the data-parallel mesh (None: every available one; with
            several processes, every device of every process).
        steps_per_call: train steps per jitted call (None: 1 on the CPU, 32 elsewhere).
        eval_batch_size: global inference batch size (a multiple of the device count).
        progress: show a progress bar per epoch (process 0 only).
        distributed: "auto" (start `jax.distributed` when the environment or the three
            fields below say this is one process of several), "on" (always) or "off"
            (never); see `jaxbd.train.distributed.initialize`.
        coordinator_address: "host:port" of process 0's coordinator (None: from
            $JAX_COORDINATOR_ADDRESS or the cluster's environment).
        num_processes: processes in all (None: from $JAX_NUM_PROCESSES or the cluster).
        process_id: this process's index (None: from $JAX_PROCESS_ID or the cluster).
    """

    num_devices: int | None = None
    steps_per_call: int | None = None
    eval_batch_size: int = 512
    progress: bool = True
    distributed: str = "auto"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def __post_init__(self):
        require(
            self.num_devices is None or self.num_devices >= 1,
            "num_devices",
            "must be None (every device) or >= 1",
            self.num_devices,
        )
        require(
            self.steps_per_call is None or self.steps_per_call >= 1,
            "steps_per_call",
            "must be None (auto) or >= 1",
            self.steps_per_call,
        )
        require(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1", self.eval_batch_size)
        require(
            self.distributed in MODES,
            "distributed",
            f"must be one of {list(MODES)}",
            self.distributed,
        )
        require(
            self.coordinator_address is None
            or (isinstance(self.coordinator_address, str) and ":" in self.coordinator_address),
            "coordinator_address",
            'must be None or "host:port"',
            self.coordinator_address,
        )
        require(
            self.num_processes is None or self.num_processes >= 1,
            "num_processes",
            "must be None or >= 1",
            self.num_processes,
        )
        if self.num_processes is None:
            require(
                self.process_id is None or self.process_id >= 0,
                "process_id",
                "must be None or >= 0",
                self.process_id,
            )
        else:
            require(
                self.process_id is None or 0 <= self.process_id < self.num_processes,
                "process_id",
                f"must be None or in [0, num_processes={self.num_processes})",
                self.process_id,
            )
        require(
            self.distributed != "off"
            or (self.coordinator_address, self.num_processes, self.process_id) == (None,) * 3,
            "distributed",
            "is 'off' but coordinator_address, num_processes or process_id is set",
            self.distributed,
        )

    def start_distributed(self) -> bool:
        """Starts `jax.distributed` as these settings say (`distributed.initialize`)."""
        return initialize(
            self.distributed,
            coordinator_address=self.coordinator_address,
            num_processes=self.num_processes,
            process_id=self.process_id,
        )
