"""Every config of nnpes: typed dataclasses validated at load by one convention (``schema.from_dict``:
unknown key → ``ConfigError`` naming the closest valid key; each dataclass may check itself in a
``validate(path)`` method that raises ``ConfigError``)."""

from nnpes.config.schema import ConfigError, doc, from_dict  # noqa: F401
from nnpes.config.model import ModelConfig, parse_model_config  # noqa: F401
from nnpes.config.training import (  # noqa: F401
    SECTIONS, Config, DataConfig, OutputConfig, TrainingConfig, WeightStage, apply_overrides, check_config,
    load_config,
)
from nnpes.config.template import template  # noqa: F401
