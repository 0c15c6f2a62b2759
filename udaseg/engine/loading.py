"""Build an evaluable method from a udaseg checkpoint or from released weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from udaseg.config import Config, apply_overrides, config_from_dict, load_config
from udaseg.data.label_spaces import LabelSpace, get_label_space
from udaseg.engine import checkpoint as checkpoints
from udaseg.errors import ConfigError
from udaseg.evaluation.report import result_title
from udaseg.methods.base import Method
from udaseg.models import build_segmentor
from udaseg.models.weights import load_released_checkpoint
from udaseg.registry import METHODS


@dataclass
class LoadedModel:
    config: Config
    method: Method
    label_space: LabelSpace
    description: str  # where the weights came from, for reports
    title: str  # a report's column heading: method (checkpoint or weights) [@ step]


def load_for_inference(
    checkpoint: str | None,
    config_path: str | None,
    weights: str | None,
    overrides: list[str],
    device: torch.device,
) -> LoadedModel:
    """The evaluated network, in eval mode on `device`.

    Either `checkpoint` (a udaseg checkpoint; its config is used, `overrides` applied on top),
    or `config_path` + `weights` (a released state_dict in the original repositories' key
    layout, e.g. AdaptSegNet's GTA2Cityscapes_multi; the config names the model).
    """
    if checkpoint is not None:
        payload = checkpoints.read_checkpoint(checkpoint)
        config = config_from_dict(apply_overrides(payload["config"], overrides))
        if config_path is not None:
            raise ConfigError(
                "give either --checkpoint or a config, not both (the checkpoint holds its config)"
            )
    elif config_path is not None:
        config = load_config(config_path, overrides)
        if weights is None and not getattr(config.model, "released", None):
            raise ConfigError(
                f"{config_path}: a config alone has no trained weights; add --weights FILE, set "
                "model.released, or use --checkpoint"
            )
    else:
        raise ConfigError(
            "nothing to load: give --checkpoint CKPT, or a CONFIG with --weights FILE"
        )
    label_space = get_label_space(config.data.label_space)
    # Trained weights replace any init weights, so those are not even read. A config whose
    # model names `released` weights gets them from build_segmentor.
    from_config = checkpoint is None and weights is None
    segmentor = build_segmentor(config.model, label_space.num_classes, load_weights=from_config)
    method = METHODS.get(config.method.name)(config.method, segmentor, label_space)
    if checkpoint is not None:
        checkpoints.load_module_states(payload, method.all_modules(), checkpoint)
        description = f"{checkpoint} (step {payload['step']})"
        title = result_title(config.method.name, checkpoint, int(payload["step"]))
    elif weights is not None:
        load_released_checkpoint(segmentor, weights)
        description = f"{weights} (released weights, model {config.model.name})"
        title = result_title(config.method.name, weights)
    else:
        description = f"{config.model.released} (model.released, model {config.model.name})"
        title = result_title(config.method.name, config.model.released)
    method.to(device)
    method.train(False)
    return LoadedModel(
        config=config,
        method=method,
        label_space=label_space,
        description=description,
        title=title,
    )


def default_run_checkpoint(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / checkpoints.LAST
