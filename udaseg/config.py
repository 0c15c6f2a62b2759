"""Configs: YAML with one `extends:` parent, dotted overrides, validated against dataclasses.

Loading goes in three steps, each of which can fail with a one-line `ConfigError`:

1. read the YAML file and, recursively, the file its `extends:` key names (relative to it);
   the child is deep-merged over the parent, except that a section whose `name`/`kind` changes
   replaces the parent's section whole (switching `method.name` drops the old method's keys);
2. apply `key.sub=value` overrides from the command line (values parsed as YAML);
3. validate into typed dataclasses: an unknown key fails with the list of valid keys, a value
   of the wrong type names the key. Sections whose fields depend on a choice (`method` by
   `name`, `model` by `name`, datasets by `kind`) take their dataclass from the registered
   class's `Config` attribute.

Configs shipped with udaseg live in `udaseg/configs/` (the repository's `configs/` links there);
a path that does not exist is also looked up there, so `udaseg train toy/source_only.yaml`
works from any directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from udaseg.errors import ConfigError

PACKAGED_CONFIGS = Path(__file__).parent / "configs"

# Keys whose value selects which dataclass validates the rest of a section.
_DISCRIMINATORS = ("name", "kind")


# --- Polymorphic sections ------------------------------------------------------------------


def polymorphic(registry: str, key: str, default: str | None) -> Any:
    """A dataclass field whose config class is chosen by `key` among a registry's entries.

    Args:
        registry: "methods", "models" or "datasets" (attribute of udaseg.registry, upper case).
        key: the discriminator key in the section, "name" or "kind".
        default: the entry used when the section is absent; None makes the section optional.
    """
    metadata = {"registry": registry, "key": key, "default": default}
    if default is None:
        return field(default=None, metadata=metadata)
    return field(
        default_factory=lambda: build_section(registry, key, {key: default}, ""), metadata=metadata
    )


def _registry(name: str):
    from udaseg import registry

    return getattr(registry, name.upper())


def build_section(registry: str, key: str, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config key {path or registry}: expected a mapping, got {data!r}")
    if key not in data:
        raise ConfigError(
            f"config key {_join(path, key)}: missing (choose one of {', '.join(_registry(registry).names())})"
        )
    choice = data[key]
    try:
        entry = _registry(registry).get(choice)
    except ConfigError as error:
        raise ConfigError(f"config key {_join(path, key)}: {error}") from None
    config_class = getattr(entry, "Config", None)
    if config_class is None:
        raise ConfigError(f"config key {_join(path, key)}: {choice!r} has no Config dataclass")
    return from_dict(config_class, data, path, label=f"{path or registry} ({choice})")


# --- Ranges ---------------------------------------------------------------------------------


def check_range(
    section: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> None:
    """ConfigError `<name>: must be <range>, got <value>` unless the field is in range.

    None passes (optional fields say "not set" with it); a tuple or list is checked value by
    value. `minimum`/`maximum` are inclusive bounds, `above`/`below` exclusive ones. `from_dict`
    turns the message into `config key <dotted.key>: must be ...`.
    """
    value = getattr(section, name)
    if value is None:
        return
    values = list(value) if isinstance(value, tuple | list) else [value]
    good = all(
        (minimum is None or item >= minimum)
        and (maximum is None or item <= maximum)
        and (above is None or item > above)
        and (below is None or item < below)
        for item in values
    )
    if good:
        return
    low = minimum if minimum is not None else above
    high = maximum if maximum is not None else below
    if low is not None and high is not None:
        opening = "[" if minimum is not None else "("
        closing = "]" if maximum is not None else ")"
        rule = f"in {opening}{low}, {high}{closing}"
    elif low is not None:
        rule = f"{'>=' if minimum is not None else '>'} {low}"
    else:
        rule = f"{'<=' if maximum is not None else '<'} {high}"
    if isinstance(value, tuple | list):
        rule += " (each value)"
        value = list(value)
    raise ConfigError(f"{name}: must be {rule}, got {value!r}")


# --- Top-level schema ----------------------------------------------------------------------


@dataclass
class DataConfig:
    """Which datasets feed training and evaluation."""

    source: Any = polymorphic("datasets", "kind", None)  # labelled source training set
    target: Any = polymorphic("datasets", "kind", None)  # target training set, read WITHOUT labels
    val: Any = polymorphic("datasets", "kind", None)  # labelled target validation set
    label_space: str = "cityscapes19"  # what the model predicts (udaseg.data.label_spaces)
    batch_size: int = 1  # images per process per domain and step
    num_workers: int = 2  # data-loading processes per domain

    def validate(self) -> None:
        check_range(self, "batch_size", minimum=1)
        check_range(self, "num_workers", minimum=0)


@dataclass
class ScheduleConfig:
    """Learning-rate schedule (`schedule`, or `optim.<name>.schedule` for one optimizer)."""

    name: Literal["poly", "constant", "step", "linear_decay"] = "poly"
    total_steps: int | None = (
        None  # poly horizon; None = train.steps (AdaptSegNet: 250k, stops at 150k)
    )
    power: float = 0.9  # poly: lr * (1 - step / total_steps) ** power
    step_size: int = 50000  # step: lr * gamma ** (step // step_size)
    gamma: float = 0.1
    # linear_decay (CycleGAN's `--niter` / `--niter_decay`): lr until this step, then linearly to
    # 0 at total_steps; None = half of total_steps (niter = niter_decay, as BDL's F)
    decay_start: int | None = None
    warmup_steps: int = 0  # linear warm-up from warmup_ratio * lr
    warmup_ratio: float = 1e-6

    def validate(self) -> None:
        check_range(self, "total_steps", minimum=1)
        check_range(self, "power", minimum=0)
        check_range(self, "step_size", minimum=1)
        check_range(self, "gamma", above=0)
        check_range(self, "decay_start", minimum=0)
        if None not in (self.decay_start, self.total_steps) and (
            self.decay_start >= self.total_steps
        ):
            raise ConfigError(
                f"decay_start: must be below total_steps ({self.total_steps}), "
                f"got {self.decay_start}"
            )
        check_range(self, "warmup_steps", minimum=0)
        check_range(self, "warmup_ratio", minimum=0, maximum=1)


@dataclass
class OptimizerConfig:
    """One optimizer, for one trainable module (`optim.<module name>`)."""

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 2.5e-4
    momentum: float = 0.9  # SGD only
    betas: tuple[float, float] = (0.9, 0.99)  # Adam/AdamW only
    weight_decay: float = 5e-4
    head_lr_multiplier: float = 10.0  # lr x this for the parameters the module marks as head
    nesterov: bool = False
    # weight_decay x this per parameter group the module names ("backbone", "head", ...); a
    # group not listed keeps 1.0 (DAFormer gives norms and position embeddings 0).
    weight_decay_multipliers: dict[str, float] = field(default_factory=dict)
    # This optimizer's own schedule; None follows the top-level `schedule` (the papers decay
    # the discriminators' Adam with the segmentor's poly; BDL's translation GANs do not).
    schedule: ScheduleConfig | None = None
    # The released AdaptSegNet and ADVENT code lists each backbone tensor once per module that
    # contains it (optim_parameters walks modules() and then their recursive parameters()), and
    # SGD applies every listed copy: stem 1x, block convs 3x, downsample convs 4x per step. True
    # reproduces that (SGD only; see docs/methods/adaptsegnet.md); False updates each once.
    repeated_backbone_updates: bool = False

    def validate(self) -> None:
        if self.repeated_backbone_updates and self.name != "sgd":
            raise ConfigError(
                f"repeated_backbone_updates: the released code's quirk is an SGD one; "
                f"optimizer {self.name!r} does not have it"
            )
        # lr 0 is allowed: it freezes the module's weights while BN statistics still move.
        check_range(self, "lr", minimum=0)
        check_range(self, "momentum", minimum=0, below=1)
        check_range(self, "betas", minimum=0, below=1)
        check_range(self, "weight_decay", minimum=0)
        check_range(self, "head_lr_multiplier", minimum=0)
        negative = [key for key, value in self.weight_decay_multipliers.items() if value < 0]
        if negative:
            raise ConfigError(
                f"weight_decay_multipliers.{negative[0]}: must be >= 0, "
                f"got {self.weight_decay_multipliers[negative[0]]}"
            )
        if self.name == "sgd" and self.nesterov and self.momentum <= 0:
            raise ConfigError("nesterov: needs momentum > 0 (torch.optim.SGD refuses it)")


def _default_optimizers() -> dict[str, OptimizerConfig]:
    # The segmentor's: SGD as the DeepLabV2 papers. A method's other modules (discriminators...)
    # take the method's `default_optimizers` unless the config sets `optim.<name>`.
    return {"segmentor": OptimizerConfig()}


@dataclass
class TrainConfig:
    """The loop."""

    steps: int = 1000  # optimizer steps to run (the papers' early-stop iteration)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    # torch.compile of the segmentor and the method's other modules, in place (state_dict keys
    # unchanged). Off by default: compiling costs minutes, which a short run never wins back.
    compile: bool = False
    # torch.optim's kernels: "default" is its choice (foreach on CUDA, a per-tensor loop on CPU),
    # "foreach" batches the update over tensors, "fused" is one kernel (same update, other
    # floating-point order).
    optimizer_implementation: Literal["default", "foreach", "fused"] = "default"
    deterministic: bool = False  # deterministic kernels; needed for bit-exact resume on CPU
    accumulation_steps: int = 1  # micro-batches per optimizer step (the papers' iter_size)
    grad_clip_norm: float | None = None
    checkpoint_every: int = 1000  # also writes one at the end
    keep_checkpoints: int = 2  # periodic checkpoints kept besides `last.pt`; 0 keeps all
    log_every: int = 10
    eval_every: int = 0  # periodic target-val evaluation; 0 = only at the end
    eval_at_end: bool = True
    progress_bar: bool = True
    tensorboard: bool = True  # used when the tensorboard package is installed
    visual_every: int = 0  # images the method returns go to TensorBoard every N steps; 0 = never

    def validate(self) -> None:
        check_range(self, "steps", minimum=1)
        check_range(self, "accumulation_steps", minimum=1)
        check_range(self, "grad_clip_norm", above=0)
        check_range(self, "checkpoint_every", minimum=1)
        check_range(self, "keep_checkpoints", minimum=0)
        check_range(self, "log_every", minimum=1)
        check_range(self, "eval_every", minimum=0)
        check_range(self, "visual_every", minimum=0)


@dataclass
class EvalConfig:
    """How target predictions are made and scored (REFERENCE §5)."""

    input_size: tuple[int, int] | None = (
        None  # (height, width) the image is resized to; None = as loaded
    )
    mode: Literal["whole", "slide"] = "whole"
    window: tuple[int, int] = (512, 512)  # slide: (height, width)
    stride: tuple[int, int] = (341, 341)  # slide
    flip: bool = False  # average with the horizontally flipped image
    align_corners: bool = True  # bilinear upsampling of logits as AdaptSegNet/ADVENT/BDL do it
    # How `predict` and pseudo-labelling reach input_size: "pil" = PIL bicubic on uint8 images,
    # as the AdaptSegNet/ADVENT/BDL/FDA loaders (and udaseg's val datasets) do; "torch" = torch
    # bicubic, antialiased, on the device: faster on a GPU, slightly different pixels.
    resize: Literal["pil", "torch"] = "pil"
    batch_size: int = 1
    # The network's forward under autocast ("bf16", "fp16"); logits are upsampled and compared in
    # float32 either way. Recorded with every score: it can flip near-tie pixels.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False  # images in channels_last memory format (same numbers, faster)
    subsets: list[str] | None = None  # mIoU subsets reported; None = all of the label space's
    max_images: int | None = None  # evaluate only the first N (quick checks; not for reporting)

    def validate(self) -> None:
        check_range(self, "input_size", minimum=1)
        check_range(self, "window", minimum=1)
        check_range(self, "stride", minimum=1)
        check_range(self, "batch_size", minimum=1)
        check_range(self, "max_images", minimum=1)


@dataclass
class Config:
    """A whole experiment."""

    seed: int = 0
    run_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = polymorphic("models", "name", "deeplabv2")
    method: Any = polymorphic("methods", "name", "source_only")
    optim: dict[str, OptimizerConfig] = field(default_factory=_default_optimizers)
    # Fresh-start weights per module, from a udaseg checkpoint (`runs/a/checkpoints/last.pt`,
    # the module of the same name; `path#segmentor` picks one) or a released file (a
    # segmentor's state_dict in the original key layout). A resumed run ignores it.
    init: dict[str, str] = field(default_factory=dict)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        # numpy's SeedSequence, which seeds every step, takes non-negative integers only.
        check_range(self, "seed", minimum=0)


# --- Validation -----------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def from_dict(cls: type, data: Any, path: str = "", label: str | None = None) -> Any:
    """Build dataclass `cls` from a plain dict, checking keys and types.

    Args:
        cls: a dataclass type.
        data: a mapping of its field names to plain values (as YAML gives them).
        path: the dotted key of this section, for error messages.
        label: how the section is named in the unknown-key message.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key {path or '<root>'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in data if key not in fields]
    if unknown:
        where = label or path or "the top level"
        raise ConfigError(
            f"config key {_join(path, str(unknown[0]))}: unknown key under {where}; "
            f"valid keys: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        spec = fields[name]
        key_path = _join(path, name)
        if "registry" in spec.metadata:
            meta = spec.metadata
            if isinstance(value, dict) and meta["key"] not in value and meta["default"] is not None:
                # `model.width=8` alone refines the default model rather than naming none.
                value = {meta["key"]: meta["default"], **value}
            values[name] = (
                None
                if value is None
                else build_section(meta["registry"], meta["key"], value, key_path)
            )
        else:
            values[name] = _convert(hints[name], value, key_path)
    try:
        instance = cls(**values)
    except TypeError as error:
        raise ConfigError(f"config section {path or '<root>'}: {error}") from None
    validate = getattr(instance, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as error:
            text = str(error)
            field_name = _LEADING_FIELD.match(text)
            if field_name and field_name.group(1) in fields:
                # `steps: must be >= 1` names a field of this section: give its dotted key.
                raise ConfigError(f"config key {_join(path, text)}") from None
            raise ConfigError(f"config section {path or '<root>'}: {text}") from None
    return instance


# A validate() message that starts with a field name (`steps:`, `weight_decay_multipliers.x:`).
_LEADING_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:[.\[][^:\s]*)?:")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _convert(annotation: Any, value: Any, path: str) -> Any:
    """Check (and gently coerce) one value against a type annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(option, value, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"config key {path}: {value!r} is not a valid {_type_name(annotation)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"config key {path}: {value!r} is not one of {', '.join(map(repr, args))}"
            )
        return value
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, path)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {path}: expected a list, got {value!r}")
        if origin is list:
            return [_convert(args[0], item, f"{path}[{i}]") for i, item in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item, f"{path}[{i}]") for i, item in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"config key {path}: expected {len(args)} values, got {len(value)}")
        return tuple(
            _convert(arg, item, f"{path}[{i}]")
            for i, (arg, item) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {path}: expected a mapping, got {value!r}")
        # A null entry removes what a parent config set (`optim.discriminator: null` in a config
        # that extends one whose method had a discriminator) instead of filling in defaults.
        return {
            str(key): _convert(args[1], item, _join(path, str(key)))
            for key, item in value.items()
            if item is not None
        }
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {path}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key {path}: expected an integer, got {value!r}")
        if isinstance(value, str):
            value = _parse_number(value, path, "an integer")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise ConfigError(f"config key {path}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key {path}: expected a number, got {value!r}")
        if isinstance(value, str):
            # PyYAML reads `1e-4` (no dot) as a string: accept it as the number it means.
            value = _parse_number(value, path, "a number")
        if not isinstance(value, int | float):
            raise ConfigError(f"config key {path}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"config key {path}: unsupported annotation {annotation!r}")


def _parse_number(text: str, path: str, expected: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"config key {path}: expected {expected}, got {text!r}") from None


def to_dict(config: Any) -> Any:
    """A validated config as plain YAML-able values (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {
            f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init
        }
    if isinstance(config, dict):
        return {key: to_dict(value) for key, value in config.items()}
    if isinstance(config, list | tuple):
        return [to_dict(value) for value in config]
    return config


# --- Files and overrides -------------------------------------------------------------------


def resolve_config_path(path: str | Path) -> Path:
    """A config path as given, or else relative to the configs shipped with udaseg."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    packaged = PACKAGED_CONFIGS / candidate
    if packaged.is_file():
        return packaged
    raise ConfigError(f"{path}: config file not found (also looked in {PACKAGED_CONFIGS})")


def _read_yaml(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where} {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping at the top level")
    return data


def merge(parent: dict, child: dict) -> dict:
    """Deep-merge `child` over `parent`; lists and scalars are replaced, not merged.

    A section whose discriminator (`name`/`kind`) differs between the two is replaced whole.
    """
    merged = dict(parent)
    for key, value in child.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and not _switches(old, value):
            merged[key] = merge(old, value)
        else:
            merged[key] = value
    return merged


def _switches(old: dict, new: dict) -> bool:
    return any(key in old and key in new and old[key] != new[key] for key in _DISCRIMINATORS)


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file with its `extends:` chain merged, before validation."""
    resolved = resolve_config_path(path).resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise ConfigError(f"{resolved}: `extends:` forms a cycle ({chain})")
    data = _read_yaml(resolved)
    parent_name = data.pop("extends", None)
    if parent_name is None:
        return data
    if not isinstance(parent_name, str):
        raise ConfigError(f"{resolved}: `extends:` takes one file path, got {parent_name!r}")
    parent_path = resolved.parent / parent_name
    if not parent_path.is_file():
        raise ConfigError(f"{resolved}: `extends: {parent_name}` names no file ({parent_path})")
    return merge(load_raw(parent_path, (*_seen, resolved)), data)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings (values parsed as YAML) to a raw config dict.

    An override that switches a registry section's choice (`data.val.kind=gta5`,
    `method.name=advent`) also drops the section's keys that only the old choice has, so a
    checkpoint's saved Cityscapes val block can be pointed at GTA5 without its `label_type`
    failing validation as if the user had set it; keys shared by both kinds that still hold the
    old kind's default go too, so the new kind's default applies. Keys set by any override of
    the same list are kept (if the new kind lacks them, that is the user's error to see). One
    line on stderr names what was dropped.
    """
    result = dict(data)
    user_keys = [override.partition("=")[0] for override in overrides]
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {override!r}: expected key.subkey=value")
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError:
            raise ConfigError(f"override {override!r}: the value is not valid YAML") from None
        parts = key.split(".")
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"override {override!r}: {'.'.join(parts[: depth + 1])} is not a section"
                )
            node[part] = dict(child)
            node = node[part]
        if (
            isinstance(node.get(parts[-1]), dict)
            and isinstance(value, dict)
            and not _switches(node[parts[-1]], value)
        ):
            node[parts[-1]] = merge(node[parts[-1]], value)
        else:
            _drop_keys_of_old_choice(node, parts, value, user_keys)
            node[parts[-1]] = value
    return result


def _polymorphic_metadata(section_parts: list[str]) -> dict | None:
    """The `polymorphic` metadata of the section at this path of `Config`, if it is one."""
    cls: Any = Config
    metadata = None
    for part in section_parts:
        if not dataclasses.is_dataclass(cls):
            return None
        spec = {f.name: f for f in dataclasses.fields(cls)}.get(part)
        if spec is None:
            return None
        metadata = spec.metadata if "registry" in spec.metadata else None
        cls = typing.get_type_hints(cls).get(part)
    return metadata


def _field_defaults(config_class: type) -> dict[str, Any]:
    """Field name -> default value (dataclasses.MISSING when the field has none)."""
    defaults = {}
    for spec in dataclasses.fields(config_class):
        if spec.default is not dataclasses.MISSING:
            defaults[spec.name] = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            defaults[spec.name] = spec.default_factory()
        else:
            defaults[spec.name] = dataclasses.MISSING
    return defaults


def _drop_keys_of_old_choice(
    section: dict, parts: list[str], new_choice: Any, user_keys: list[str]
) -> None:
    """Before `section[parts[-1]] = new_choice`: drop the keys the old choice alone explains.

    Does nothing unless `parts` names the discriminator of a registry section (`data.val.kind`,
    `method.name`) and the value changes. Unknown choices are left to validation to report.
    """
    key = parts[-1]
    section_path = ".".join(parts[:-1])
    metadata = _polymorphic_metadata(parts[:-1])
    if metadata is None or metadata["key"] != key:
        return
    old_choice = section.get(key, metadata["default"])
    if old_choice is None or old_choice == new_choice or not isinstance(new_choice, str):
        return
    try:
        old_fields = _field_defaults(_registry(metadata["registry"]).get(old_choice).Config)
        new_fields = _field_defaults(_registry(metadata["registry"]).get(new_choice).Config)
    except (ConfigError, AttributeError, TypeError):
        return

    def set_by_user(name: str) -> bool:
        path = f"{section_path}.{name}"
        return any(user == path or user.startswith(path + ".") for user in user_keys)

    dropped, reset = [], []
    for name in list(section):
        if name == key or set_by_user(name):
            continue
        if name not in new_fields:
            dropped.append(name)
        elif (
            name in old_fields
            and section[name] == to_dict(old_fields[name])
            and to_dict(old_fields[name]) != to_dict(new_fields[name])
        ):
            # The old kind's default (a checkpoint saves every default) is not a choice the
            # user made: let the new kind's default apply.
            reset.append(name)
    for name in dropped + reset:
        del section[name]
    if not dropped and not reset:
        return
    message = f"[udaseg] {section_path}.{key} changed to {new_choice}:"
    if dropped:
        names = ", ".join(f"{section_path}.{name}" for name in dropped)
        owner = f"a {old_choice} key" if len(dropped) == 1 else f"{old_choice} keys"
        message += f" dropped {names} ({owner})"
    if reset:
        names = ", ".join(f"{section_path}.{name}" for name in reset)
        message += f"{';' if dropped else ''} {names} back to the {new_choice} default"
    _notice(message)


def _notice(message: str) -> None:
    # Configs are read before torch.distributed starts: under torchrun only rank 0 speaks.
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read, merge, override and validate a config. `path=None` starts from the defaults."""
    data = load_raw(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(Config, data)


def config_from_dict(data: dict) -> Config:
    """Validate a resolved config dict (as saved in a run directory or checkpoint)."""
    return from_dict(Config, data)


def dump_yaml(config: Config) -> str:
    # Block style throughout: one YAML style for `print-config` and run directories alike.
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=False)
