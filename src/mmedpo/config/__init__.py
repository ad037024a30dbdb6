"""The run configuration: validated on load, YAML in and out, command-line overrides win.

    from mmedpo.config import load_config
    config = load_config("configs/demo.yaml", ["train.beta=0.2"])

`sections` holds one section per stage, `run` the whole run (`RunConfig`) and its
loading; both are importable from here. `mmedpo config` prints every field with its help.
"""

from mmedpo.config.run import RunConfig, apply_overrides, dump_config, load_config
from mmedpo.config.sections import (
    AUTO,
    BaseModelConfig,
    CurateTextConfig,
    CurateVisualConfig,
    DataConfig,
    EvalConfig,
    ScoreConfig,
    Section,
    TrainConfig,
)

__all__ = [
    "AUTO",
    "BaseModelConfig",
    "CurateTextConfig",
    "CurateVisualConfig",
    "DataConfig",
    "EvalConfig",
    "RunConfig",
    "ScoreConfig",
    "Section",
    "TrainConfig",
    "apply_overrides",
    "dump_config",
    "load_config",
]
