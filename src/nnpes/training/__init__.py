"""Config-driven training: ``train(config, run_dir, resume=False)`` and ``evaluate``."""

from nnpes.training.evaluate import evaluate  # noqa: F401
from nnpes.training.trainer import train  # noqa: F401
