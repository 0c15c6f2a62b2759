"""Config loading: extends, overrides, validation, and every shipped config."""

from __future__ import annotations

from pathlib import Path

import pytest

from udaseg.config import (
    PACKAGED_CONFIGS,
    Config,
    apply_overrides,
    config_from_dict,
    dump_yaml,
    load_config,
    merge,
    to_dict,
)
from udaseg.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_validate() -> None:
    config = load_config(None)
    assert isinstance(config, Config)
    assert config.method.name == "source_only"
    assert config.optim["segmentor"].name == "sgd"


def test_unknown_key_lists_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "train:\n  stepz: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "train.stepz" in message
    assert "valid keys" in message and "steps" in message and "precision" in message
    assert "\n" not in message


def test_unknown_method_key_names_the_method(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "method:\n  name: source_only\n  lambda_adv: 0.1\n")
    with pytest.raises(ConfigError, match=r"method.lambda_adv.*source_only.*lambda_seg_aux"):
        load_config(path)


def test_unknown_method_name_lists_known(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"method.name.*unknown method 'nope'.*source_only"):
        load_config(None, ["method.name=nope"])


def test_wrong_types_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"train.steps: expected an integer"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(ConfigError, match=r"train.precision: 'fp8' is not one of"):
        load_config(None, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match=r"optim.segmentor.betas: expected 2 values"):
        load_config(None, ["optim.segmentor.betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"train.deterministic: expected true or false"):
        load_config(None, ["train.deterministic=1"])


def test_yaml_exponent_without_dot_is_a_number(tmp_path: Path) -> None:
    # PyYAML parses 1e-4 (no dot) as a string; the config reads it as the number it means.
    path = write(tmp_path / "a.yaml", "optim:\n  segmentor:\n    lr: 1e-4\n")
    assert load_config(path).optim["segmentor"].lr == pytest.approx(1e-4)
    assert load_config(None, ["train.steps=1e3"]).train.steps == 1000


def test_extends_merges_and_child_wins(tmp_path: Path) -> None:
    write(tmp_path / "base" / "parent.yaml", "seed: 3\ntrain:\n  steps: 10\n  log_every: 5\n")
    child = write(tmp_path / "child.yaml", "extends: base/parent.yaml\ntrain:\n  steps: 20\n")
    config = load_config(child)
    assert config.seed == 3
    assert config.train.steps == 20
    assert config.train.log_every == 5


def test_null_entry_removes_a_named_section_entry(tmp_path: Path) -> None:
    optim = "optim:\n  segmentor: {lr: 0.01}\n  discriminator: {name: adam, lr: 0.001}\n"
    parent = optim + "init:\n  teacher: a.pt\n"
    write(tmp_path / "parent.yaml", parent)
    child = write(tmp_path / "child.yaml", "extends: parent.yaml\noptim:\n  discriminator: null\n")
    config = load_config(child)
    assert "discriminator" not in config.optim and "segmentor" in config.optim
    assert config.init == {"teacher": "a.pt"}
    assert load_config(tmp_path / "parent.yaml", ["init.teacher=null"]).init == {}
    assert load_config(tmp_path / "parent.yaml").optim["discriminator"].lr == 0.001


def test_extends_chain_and_cycle(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "seed: 1\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\ntrain: {steps: 7}\n")
    c = write(tmp_path / "c.yaml", "extends: b.yaml\nrun_dir: x\n")
    config = load_config(c)
    assert (config.seed, config.train.steps, config.run_dir) == (1, 7, "x")
    write(tmp_path / "loop1.yaml", "extends: loop2.yaml\n")
    loop = write(tmp_path / "loop2.yaml", "extends: loop1.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(loop)


def test_extends_missing_parent(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"a.yaml: `extends: nowhere.yaml` names no file"):
        load_config(path)


def test_switching_discriminator_replaces_section() -> None:
    parent = {"method": {"name": "a", "alpha": 1}, "train": {"steps": 1, "log_every": 2}}
    child = {"method": {"name": "b"}, "train": {"steps": 5}}
    merged = merge(parent, child)
    assert merged["method"] == {"name": "b"}
    assert merged["train"] == {"steps": 5, "log_every": 2}


def test_overrides_create_nested_and_parse_yaml() -> None:
    data = apply_overrides(
        {"train": {"steps": 1}}, ["train.steps=5", "eval.input_size=[64, 128]", "run_dir=out/x"]
    )
    assert data == {"train": {"steps": 5}, "eval": {"input_size": [64, 128]}, "run_dir": "out/x"}
    config = config_from_dict(data)
    assert config.eval.input_size == (64, 128)


@pytest.mark.parametrize("override", ["no_equals", "=3", "a..b=1"])
def test_malformed_override(override: str) -> None:
    with pytest.raises(ConfigError, match="override"):
        apply_overrides({}, [override])


def test_override_into_scalar_is_an_error() -> None:
    with pytest.raises(ConfigError, match="seed is not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_round_trip_through_dict_and_yaml() -> None:
    import yaml

    config = load_config(None, ["train.steps=12", "eval.input_size=[32, 64]"])
    again = config_from_dict(yaml.safe_load(dump_yaml(config)))
    assert to_dict(again) == to_dict(config)


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "train:\n  steps: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+"):
        load_config(path)


def test_packaged_config_found_by_relative_name() -> None:
    assert SHIPPED, "udaseg ships configs"
    relative = SHIPPED[0].relative_to(PACKAGED_CONFIGS)
    load_config(str(relative))  # resolved under udaseg/configs from any working directory


RECIPES = PACKAGED_CONFIGS / "recipes"
SHIPPED = sorted(path for path in PACKAGED_CONFIGS.rglob("*.yaml") if RECIPES not in path.parents)
SHIPPED_RECIPES = sorted(RECIPES.glob("*.yaml"))


@pytest.mark.parametrize(
    "path", SHIPPED, ids=[str(p.relative_to(PACKAGED_CONFIGS)) for p in SHIPPED]
)
def test_every_shipped_config_validates(path: Path) -> None:
    config = load_config(path)
    assert config.data.label_space
    assert config.train.steps > 0
    check_optimizers_fit_the_method(config)


def check_optimizers_fit_the_method(config) -> None:
    """Build the method on a tiny member of the config's model and resolve its optimizers as
    the trainer does: an `optim.<name>` inherited from a parent config for a module this method
    lacks would otherwise only fail at the start of a (long) run."""
    import dataclasses

    from udaseg.data.label_spaces import get_label_space
    from udaseg.engine.trainer import _optimizer_configs
    from udaseg.models import build_segmentor
    from udaseg.registry import METHODS

    fields = {field.name for field in dataclasses.fields(config.model)}
    tiny = {"init": None, "released": None}
    if "blocks" in fields:
        tiny.update(blocks=(1, 1, 1, 1), width=4)
    label_space = get_label_space(config.data.label_space)
    segmentor = build_segmentor(dataclasses.replace(config.model, **tiny), label_space.num_classes)
    method_class = METHODS.get(config.method.name)
    method = method_class(config.method, segmentor, label_space)
    chosen = _optimizer_configs(config, method_class, method.trainable_modules())
    assert set(chosen) == set(method.trainable_modules())


@pytest.mark.parametrize(
    "path", SHIPPED_RECIPES, ids=[str(p.relative_to(PACKAGED_CONFIGS)) for p in SHIPPED_RECIPES]
)
def test_every_shipped_recipe_is_consistent(path: Path) -> None:
    """Its references resolve and each train stage's config, with the stage's `set`, validates."""
    from udaseg.config import apply_overrides, config_from_dict, load_raw
    from udaseg.recipes import load_recipe

    recipe = load_recipe(path)
    for stage in recipe.stages:
        if stage.kind != "train":
            continue
        # References become placeholder paths: only the keys and types are checked here.
        overrides = [
            f"{key}={value if '${' not in str(value) else 'placeholder'}"
            for key, value in stage.overrides.items()
        ]
        config = config_from_dict(apply_overrides(load_raw(stage.spec), overrides))
        assert config.train.steps > 0
        check_optimizers_fit_the_method(config)
