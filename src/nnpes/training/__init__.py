"""Config-driven training: ``train(config, run_dir, resume=False)`` (a ``TrainResult``) and ``evaluate``; the one
training step for your own loops: ``make_train_step``, ``TrainState``, ``make_optimizer``."""

from nnpes.training.evaluate import evaluate  # noqa: F401
from nnpes.training.loss import total_loss  # noqa: F401
from nnpes.training.optim import lr_schedule, make_optimizer  # noqa: F401
from nnpes.training.result import CommitteeResult, TrainResult  # noqa: F401
from nnpes.training.step import LossOptions, StepMetrics, TrainState, compile_steps, make_train_step  # noqa: F401
from nnpes.training.trainer import train  # noqa: F401
