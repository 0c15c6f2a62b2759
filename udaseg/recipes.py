"""Multi-stage recipes: a paper's whole pipeline as one resumable command.

A recipe is a YAML file with a list of named stages, run in order into one recipe directory:

    dir: runs/recipes/toy_self_training      # default; `udaseg recipe ... --dir` replaces it
    stages:
      - name: source_only
        train: toy/source_only.yaml          # a config, as for `udaseg train`
      - name: labels
        pseudo_label:                        # as `udaseg pseudo-label`
          checkpoints: ["${stages.source_only.checkpoint}"]
          policy: class_percentile
          options: {percentile: 50, cap: 0.9}
      - name: self_training
        train: toy/self_training.yaml
        set:                                 # dotted overrides of that config
          init.segmentor: ${stages.source_only.checkpoint}
          data.target.pseudo_labels: ${stages.labels.dir}

      - name: translated                     # as `udaseg translate` (docs/translate.md)
        translate:
          config: toy/source_only.yaml       # whose data.source is translated
          mode: generator                    # or fda (with beta, window, seed)
          generator: ${stages.translation.checkpoint}

References `${stages.<name>.<output>}` name an earlier stage's outputs: a `train` stage gives
`checkpoint` (its final `last.pt`) and `run_dir`; a `pseudo_label` or `translate` stage gives
`dir` (a translated source set: `data.source.root: ${stages.translated.dir}`). `${dir}`
is the recipe directory. A reference to a stage that does not exist, or comes later, or to an
output the stage does not have, is refused when the recipe is read, before anything runs.

Each stage writes into `<dir>/<name>`; a train stage's `run_dir` is set there whatever its config
says. `key=value` overrides given to the command apply to every stage's config (`seed=1`,
`data.target.root=...`) and win over a stage's `set:`, except for the `set:` entries that hold a
`${stages...}` reference: those wire the stages together, so `data.source.root=/data/GTA5` on
the command line reaches the stages that read GTA5 but not those that train on its translation.
When a stage ends, `<dir>/stages/<name>.json` records its outputs and resolved settings: a
finished stage is skipped when the recipe runs again. A stage interrupted anywhere (even by
SIGKILL) is resumed: training from its last checkpoint (exact resume), pseudo labelling and
translation from the images already written. So running the same command again after a kill gives
the same checkpoints and labels as an uninterrupted run. `--from STAGE` redoes that stage and
every later one; their earlier outputs are moved aside (`<name>.previous-N`), never deleted.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from udaseg.config import apply_overrides, load_raw, resolve_config_path
from udaseg.engine import faults
from udaseg.errors import ConfigError
from udaseg.evaluation.report import write_json

STAGE_KINDS = ("train", "pseudo_label", "translate")
STAGE_OUTPUTS = {
    "train": ("checkpoint", "run_dir"),
    "pseudo_label": ("dir",),
    "translate": ("dir",),
}
PSEUDO_LABEL_KEYS = (
    "config",
    "checkpoints",
    "policy",
    "options",
    "save_soft",
    "set",
    "spatial_prior",
)
# `udaseg translate`'s options (udaseg/commands/translate.py), `set` its config's overrides.
TRANSLATE_KEYS = (
    "config",
    "mode",
    "beta",
    "window",
    "target_folder",
    "seed",
    "generator",
    "direction",
    "input_size",
    "labels",
    "set",
)
_REFERENCE = re.compile(r"\$\{([^}]*)\}")


@dataclass
class Stage:
    """One stage of a recipe, as read from the file (references not yet substituted)."""

    name: str
    kind: str  # "train", "pseudo_label" or "translate"
    spec: Any  # train: the config path; pseudo_label, translate: its mapping
    overrides: dict[str, Any] = field(default_factory=dict)  # `set:` of a train stage


@dataclass
class Recipe:
    path: Path
    directory: Path
    stages: list[Stage]


def load_recipe(path: str | Path, directory: str | Path | None = None) -> Recipe:
    """Read and check a recipe file; every reference must name an earlier stage's output.

    Args:
        path: the recipe YAML (as given, or under the packaged configs like `udaseg train`).
        directory: the recipe directory; None takes the file's `dir:`.
    Raises:
        ConfigError: one line naming the file, the stage and what is wrong.
    """
    resolved = resolve_config_path(path)
    try:
        data = yaml.safe_load(resolved.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{resolved}: not valid YAML ({_one_line(error)})") from None
    except OSError as error:
        raise ConfigError(f"{resolved}: cannot read recipe ({error.strerror})") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise ConfigError(f"{resolved}: a recipe is a mapping with a list of `stages`")
    unknown = [key for key in data if key not in ("dir", "stages")]
    if unknown:
        raise ConfigError(f"{resolved}: unknown key {unknown[0]!r}; valid keys: dir, stages")
    if directory is None:
        directory = data.get("dir")
        if not isinstance(directory, str) or not directory:
            raise ConfigError(f"{resolved}: no `dir:` for the recipe directory; pass --dir")
    stages: list[Stage] = []
    for index, entry in enumerate(data["stages"]):
        stage = _read_stage(resolved, index, entry)
        if any(stage.name == earlier.name for earlier in stages):
            raise ConfigError(f"{resolved}: two stages are named {stage.name!r}")
        _check_references(resolved, stage, stages)
        stages.append(stage)
    if not stages:
        raise ConfigError(f"{resolved}: the recipe has no stages")
    return Recipe(path=resolved, directory=Path(directory), stages=stages)


def _read_stage(path: Path, index: int, entry: Any) -> Stage:
    where = f"{path}: stage {index + 1}"
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ConfigError(f"{where}: expected a mapping with a `name`")
    name = entry["name"]
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
        raise ConfigError(f"{where}: name {name!r} must be letters, digits, '_', '-' or '.'")
    where = f"{path}: stage {name!r}"
    kinds = [kind for kind in STAGE_KINDS if kind in entry]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give exactly one of {', '.join(STAGE_KINDS)}")
    kind = kinds[0]
    allowed = {"name", kind} | ({"set"} if kind == "train" else set())
    unknown = [key for key in entry if key not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(allowed)}")
    overrides = entry.get("set") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: `set` must map dotted keys to values")
    spec = entry[kind]
    if kind == "train" and not isinstance(spec, str):
        raise ConfigError(f"{where}: `train` takes a config path")
    if kind == "pseudo_label":
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: `pseudo_label` takes a mapping")
        unknown = [key for key in spec if key not in PSEUDO_LABEL_KEYS]
        if unknown:
            raise ConfigError(
                f"{where}: pseudo_label.{unknown[0]}: unknown key; valid keys: "
                f"{', '.join(PSEUDO_LABEL_KEYS)}"
            )
        for key in ("checkpoints", "policy"):
            if key not in spec:
                raise ConfigError(f"{where}: pseudo_label.{key} is required")
        if not isinstance(spec["checkpoints"], list) or not spec["checkpoints"]:
            raise ConfigError(f"{where}: pseudo_label.checkpoints must be a non-empty list")
    if kind == "translate":
        _check_translate_spec(where, spec)
    return Stage(name=name, kind=kind, spec=spec, overrides=overrides)


def _check_translate_spec(where: str, spec: Any) -> None:
    from udaseg.commands.translate import MODES

    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: `translate` takes a mapping")
    unknown = [key for key in spec if key not in TRANSLATE_KEYS]
    if unknown:
        raise ConfigError(
            f"{where}: translate.{unknown[0]}: unknown key; valid keys: {', '.join(TRANSLATE_KEYS)}"
        )
    if spec.get("mode") not in MODES:
        raise ConfigError(f"{where}: translate.mode must be one of {', '.join(MODES)}")
    required = {"fda": ("config", "beta"), "generator": ("generator",)}[spec["mode"]]
    for key in required:
        if key not in spec:
            raise ConfigError(f"{where}: translate.{key} is required with mode {spec['mode']}")
    if not isinstance(spec.get("set") or {}, dict):
        raise ConfigError(f"{where}: translate.set must map dotted keys to values")


def _references(value: Any) -> list[str]:
    if isinstance(value, str):
        return _REFERENCE.findall(value)
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in _references(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in _references(item)]
    return []


def _check_references(path: Path, stage: Stage, earlier: list[Stage]) -> None:
    kinds = {previous.name: previous.kind for previous in earlier}
    for reference in _references([stage.spec, stage.overrides]):
        if reference == "dir":
            continue
        parts = reference.split(".")
        if len(parts) != 3 or parts[0] != "stages":
            raise ConfigError(
                f"{path}: stage {stage.name!r}: ${{{reference}}} is not a reference; write "
                "${stages.<stage>.<output>} or ${dir}"
            )
        _, name, output = parts
        if name not in kinds:
            before = ", ".join(kinds) or "none"
            raise ConfigError(
                f"{path}: stage {stage.name!r}: ${{{reference}}} refers to no earlier stage "
                f"(stages before it: {before})"
            )
        if output not in STAGE_OUTPUTS[kinds[name]]:
            raise ConfigError(
                f"{path}: stage {stage.name!r}: ${{{reference}}}: a {kinds[name]} stage has "
                f"outputs {', '.join(STAGE_OUTPUTS[kinds[name]])}"
            )


def _substitute(value: Any, outputs: dict[str, dict[str, str]], directory: Path) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match) -> str:
            reference = match.group(1)
            if reference == "dir":
                return str(directory)
            _, name, output = reference.split(".")
            return outputs[name][output]

        return _REFERENCE.sub(replace, value)
    if isinstance(value, dict):
        return {key: _substitute(item, outputs, directory) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, outputs, directory) for item in value]
    return value


# --- Running ------------------------------------------------------------------------------------


@dataclass
class StageResult:
    name: str
    kind: str
    outputs: dict[str, str]
    miou: dict[str, float] | None  # target val mIoU of a train stage (a diagnostic)
    skipped: bool  # finished in an earlier run


def run_recipe(
    recipe: Recipe,
    overrides: list[str] | None = None,
    start_from: str | None = None,
    device: str = "auto",
) -> list[StageResult]:
    """Run every unfinished stage of `recipe` in order; returns one result per stage."""
    from udaseg.engine.distributed import barrier, init_distributed

    context = init_distributed(device)
    overrides = list(overrides or [])
    names = [stage.name for stage in recipe.stages]
    if start_from is not None and start_from not in names:
        raise ConfigError(f"--from {start_from}: no such stage; stages: {', '.join(names)}")
    directory = recipe.directory
    markers = directory / "stages"
    if start_from is not None and context.is_main:
        for stage in recipe.stages[names.index(start_from) :]:
            _move_aside(directory / stage.name, markers / f"{stage.name}.json")
    barrier(context)

    outputs: dict[str, dict[str, str]] = {}
    results = []
    for stage in recipe.stages:
        stage_dir = directory / stage.name
        marker = markers / f"{stage.name}.json"
        settings = _stage_settings(stage, outputs, directory, overrides)
        if marker.is_file():
            record = json.loads(marker.read_text(encoding="utf-8"))
            if record.get("settings") != settings:
                raise ConfigError(
                    f"{marker}: stage {stage.name!r} finished with other settings; rerun with "
                    f"--from {stage.name} to redo it (its outputs are kept aside), or use "
                    "another --dir"
                )
            outputs[stage.name] = record["outputs"]
            results.append(
                StageResult(stage.name, stage.kind, record["outputs"], record.get("miou"), True)
            )
            continue
        _announce(f"stage {stage.name} ({stage.kind})", context.is_main)
        started = time.time()
        if stage.kind == "train":
            stage_outputs, miou = _run_train(settings, stage_dir, device)
        elif stage.kind == "translate":
            stage_outputs, miou = _run_translate(settings, stage_dir, device), None
        else:
            stage_outputs, miou = _run_pseudo_label(settings, stage_dir, device), None
        outputs[stage.name] = stage_outputs
        if context.is_main:
            record = {"stage": stage.name, "kind": stage.kind, "settings": settings}
            # Seconds of this run of the stage (a resumed stage counts its last part only).
            seconds = round(time.time() - started, 1)
            record.update({"outputs": stage_outputs, "miou": miou, "seconds": seconds})
            write_json(marker, record)
        barrier(context)
        results.append(StageResult(stage.name, stage.kind, stage_outputs, miou, False))
        faults.maybe_kill("recipe.stage")
    return results


def _stage_settings(
    stage: Stage, outputs: dict[str, dict[str, str]], directory: Path, overrides: list[str]
) -> dict[str, Any]:
    """What a stage runs with, references substituted: compared with a finished stage's."""
    spec = _substitute(stage.spec, outputs, directory)
    if stage.kind == "train":
        run_dir = str(directory / stage.name)
        ordered = _ordered_overrides(stage.overrides, outputs, directory, overrides)
        return {"config": spec, "overrides": [*ordered, f"run_dir={run_dir}"]}
    if stage.kind == "translate":
        settings = {key: spec.get(key) for key in TRANSLATE_KEYS if key != "set"}
        settings["overrides"] = _ordered_overrides(
            stage.spec.get("set") or {}, outputs, directory, overrides
        )
        return settings
    stage_overrides = [
        f"{key}={_yaml_value(value)}" for key, value in (spec.get("set") or {}).items()
    ]
    settings = {
        "config": spec.get("config"),
        "checkpoints": [str(item) for item in spec["checkpoints"]],
        "policy": spec["policy"],
        "options": spec.get("options") or {},
        "save_soft": bool(spec.get("save_soft", False)),
        "overrides": [*stage_overrides, *overrides],
    }
    if spec.get("spatial_prior") is not None:
        # Only when given: finished stages recorded without the key still match.
        settings["spatial_prior"] = str(spec["spatial_prior"])
    return settings


def _ordered_overrides(
    stage_set: dict[str, Any],
    outputs: dict[str, dict[str, str]],
    directory: Path,
    overrides: list[str],
) -> list[str]:
    """A stage's `set:`, then the command's overrides (later ones win); a `set:` entry that
    references an earlier stage and whose key the command also sets comes last, so that the
    command cannot undo how the stages are wired."""
    commanded = {override.partition("=")[0].strip() for override in overrides}
    first, last = [], []
    for key, value in stage_set.items():
        text = f"{key}={_yaml_value(_substitute(value, outputs, directory))}"
        wired = any(reference != "dir" for reference in _references(value))
        (last if wired and key in commanded else first).append(text)
    return [*first, *overrides, *last]


def _yaml_value(value: Any) -> str:
    # Overrides are parsed as YAML; a path stays a string that way, a list stays a list.
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip()


def _run_train(
    settings: dict[str, Any], stage_dir: Path, device: str
) -> tuple[dict[str, str], dict[str, float] | None]:
    from udaseg.config import Config, from_dict
    from udaseg.engine.trainer import train

    raw = apply_overrides(load_raw(settings["config"]), settings["overrides"])
    config = from_dict(Config, raw)
    checkpoint_dir = stage_dir / "checkpoints"
    # A stage interrupted earlier left checkpoints: continue from the last one (exact resume).
    resume = (checkpoint_dir / "last.pt").is_file()
    result = train(config, resume=resume or None, device=device)
    miou = None
    if result.evaluation is not None:
        miou = {name: float(value) for name, value in result.evaluation.miou.items()}
    else:
        final = stage_dir / "eval" / "final.json"
        if final.is_file():
            miou = json.loads(final.read_text(encoding="utf-8")).get("miou")
    outputs = {"checkpoint": str(checkpoint_dir / "last.pt"), "run_dir": str(stage_dir)}
    return outputs, miou


def _run_pseudo_label(settings: dict[str, Any], stage_dir: Path, device: str) -> dict[str, str]:
    from udaseg.commands.pseudo_label import run_pseudo_labelling

    run_pseudo_labelling(
        config_path=settings["config"],
        overrides=settings["overrides"],
        checkpoints=settings["checkpoints"],
        policy=settings["policy"],
        options=settings["options"],
        out=stage_dir,
        save_soft=settings["save_soft"],
        overwrite=False,
        device=device,
        spatial_prior=settings.get("spatial_prior"),
    )
    return {"dir": str(stage_dir)}


def _run_translate(settings: dict[str, Any], stage_dir: Path, device: str) -> dict[str, str]:
    from udaseg.commands.translate import run_translation

    input_size = settings.get("input_size")
    run_translation(
        config_path=settings.get("config"),
        overrides=settings["overrides"],
        out=stage_dir,
        mode=settings["mode"],
        beta=settings.get("beta"),
        window=settings.get("window") or "corners",
        target_folder=settings.get("target_folder"),
        seed=int(settings.get("seed") or 0),
        generator=settings.get("generator"),
        direction=settings.get("direction") or "source_to_target",
        input_size=tuple(input_size) if input_size else None,
        labels=settings.get("labels") or "link",
        device=device,
    )
    return {"dir": str(stage_dir)}


def _move_aside(stage_dir: Path, marker: Path) -> None:
    """Keep a stage's earlier outputs as `<name>.previous-N` before it is redone."""
    if stage_dir.exists():
        number = 1
        while stage_dir.with_name(f"{stage_dir.name}.previous-{number}").exists():
            number += 1
        stage_dir.rename(stage_dir.with_name(f"{stage_dir.name}.previous-{number}"))
    marker.unlink(missing_ok=True)


def _announce(text: str, enabled: bool) -> None:
    if enabled:
        print(f"[udaseg recipe] {text}", file=sys.stderr, flush=True)


def format_results(results: list[StageResult], metric: str | None = None) -> str:
    """The table printed at the end: each stage, its outputs and its target val mIoU."""
    lines = [
        "| stage | kind | target val mIoU (diagnostic) | output | |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        if result.miou:
            name = metric if metric in result.miou else next(iter(result.miou))
            score = f"{name} {100 * result.miou[name]:.2f}"
        else:
            score = "-"
        output = result.outputs.get("checkpoint") or result.outputs.get("dir", "")
        status = "done earlier" if result.skipped else "ran"
        lines.append(f"| {result.name} | {result.kind} | {score} | {output} | {status} |")
    lines.append(
        "target val mIoU is a diagnostic: no stage, checkpoint or setting is chosen with it."
    )
    return "\n".join(lines)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
