"""ONNX export of the evaluated network, and a torch-free runtime wrapper for it.

`export_checkpoint` turns a udaseg checkpoint into an ONNX model of the method's `predict` (the
segmentor's main logits) with the input normalisation inside: the graph takes float RGB 0..255
images [B, 3, H, W], exactly as udaseg's segmentors do, and returns either

- `output="logits"`: float32 logits [B, C, h, w] at the network's output stride (stride 8 for
  DeepLabV2, not upsampled), or
- `output="argmax"`: the class index per pixel [B, H, W] after bilinear upsampling of the
  logits to the input size (with the config's `eval.align_corners`): uint8 when the label space
  has at most 256 classes, else int64.

`dynamic=True` makes the batch and the spatial size dynamic; otherwise the graph is fixed to the
example size. `half=True` stores fp16 weights and computes in fp16 (input and output stay
float32), see docs/export.md for its tolerance.

The model's `metadata_props` (all strings) describe it: `udaseg_version`, `label_space`,
`num_classes`, `output`, `precision`, `dynamic`, `input_size` (the example size, "HxW"),
`input_normalization`, `method`, `model` (the checkpoint's `model:` section as JSON),
`eval_input_size`, `align_corners`, `checkpoint` (file name) and `checkpoint_step`.

`OnnxSegmentor(path)` runs such a file with onnxruntime: numpy in, numpy out (or torch in,
torch out), no torch needed for numpy inputs.

The exporter is torch's TorchScript-based one (`torch.onnx.export(..., dynamo=False)`): the
dynamo exporter needs the extra `onnxscript` package and gains nothing for this convolutional
graph.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from udaseg.errors import CheckpointError, ConfigError, UdasegError

OUTPUTS: tuple[str, ...] = ("logits", "argmax")
DEFAULT_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = {"logits": "logits", "argmax": "labels"}
# Example spatial size traced when none is given: the papers' 1024x512 target input.
DEFAULT_EXAMPLE_SIZE = (512, 1024)
# Largest side traced for a dynamic fp16 export (see export_network).
HALF_TRACE_SIZE = 64


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as error:  # pragma: no cover - the extra is installed in tests
        raise ConfigError(
            f"ONNX export needs the onnx extra ({error.name} is missing): "
            "pip install 'udaseg[onnx]'"
        ) from None
    return onnx, onnxruntime


def _label_dtype_name(num_classes: int) -> str:
    return "uint8" if num_classes <= 256 else "int64"


def _build_wrapper(predict, modules, num_classes: int, output: str, half: bool, align_corners):
    """An nn.Module: float32 images 0..255 -> logits (float32) or labels (uint8/int64)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ExportedNetwork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # Registered so that `.half()` and `.eval()` reach every module predict uses.
            self.held = nn.ModuleList(modules)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            inputs = images.half() if half else images
            logits = predict(inputs)
            if isinstance(logits, Mapping):
                logits = logits["logits"]
            logits = logits.float()
            if output == "logits":
                return logits
            # Traced with the input's (symbolic) size, so a dynamic graph upsamples to any size.
            upsampled = F.interpolate(
                logits, size=images.shape[-2:], mode="bilinear", align_corners=align_corners
            )
            labels = upsampled.argmax(1)
            return labels.to(torch.uint8) if num_classes <= 256 else labels

    network = ExportedNetwork()
    network.train(False)
    if half:
        network.half()
    return network


@dataclass
class ExportResult:
    path: Path
    seconds: float  # export time (trace, serialisation and metadata), not the loading
    metadata: dict[str, str]
    size_bytes: int


def export_network(
    predict,
    modules: list,
    out: str | Path,
    *,
    num_classes: int,
    label_space: str,
    output: str = "logits",
    dynamic: bool = False,
    half: bool = False,
    example_size: tuple[int, int] = DEFAULT_EXAMPLE_SIZE,
    align_corners: bool = True,
    metadata: Mapping[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> ExportResult:
    """Export `predict` (float RGB 0..255 [B, 3, H, W] -> logits) to the ONNX file `out`.

    Args:
        predict: the forward to export (a method's `predict`, or a segmentor: a dict output's
            "logits" entry is taken).
        modules: every nn.Module `predict` uses (put in eval mode, converted with `half`).
        num_classes, label_space: stored in the metadata; num_classes picks the label dtype.
        output: "logits" or "argmax" (see the module docstring).
        dynamic: dynamic batch, height and width.
        half: fp16 weights and computation inside the graph (float32 input and logits).
        example_size: (height, width) traced (the fixed size when not dynamic).
        align_corners: of the logits' bilinear upsampling for "argmax".
        metadata: extra `metadata_props` (values converted to strings; dicts/lists as JSON).
        opset: ONNX opset.
        overwrite: replace an existing `out`.
    """
    import torch

    from udaseg import __version__
    from udaseg.files import atomic_write, check_output_file

    onnx, _ = _require_onnx()
    if output not in OUTPUTS:
        raise ConfigError(f"--output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    out = check_output_file(out, "--out", overwrite)
    height, width = (int(size) for size in example_size)
    if height < 1 or width < 1:
        raise ConfigError(f"example size must be positive, got {height}x{width}")

    started = time.perf_counter()
    network = _build_wrapper(predict, modules, num_classes, output, half, align_corners)
    trace_size = (height, width)
    if half and dynamic:
        # Tracing runs the network once, and torch's fp16 convolutions on the CPU are slow (12
        # minutes for DeepLabV2-R101 at 512x1024); a dynamic graph does not depend on the size
        # it was traced at, so a small one is traced.
        trace_size = (min(height, HALF_TRACE_SIZE), min(width, HALF_TRACE_SIZE))
    example = torch.rand(1, 3, *trace_size) * 255
    output_name = OUTPUT_NAMES[output]
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
        dynamic_axes[output_name] = (
            {0: "batch", 2: "logits_height", 3: "logits_width"}
            if output == "logits"
            else {0: "batch", 1: "height", 2: "width"}
        )
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice and the tracer's notes on shape checks
        # (constant for a [B, 3, H, W] input) are not the user's concern.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            network,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[output_name],
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    props = {
        "udaseg_version": __version__,
        "label_space": label_space,
        "num_classes": num_classes,
        "output": output,
        "output_dtype": "float32" if output == "logits" else _label_dtype_name(num_classes),
        "precision": "float16" if half else "float32",
        "dynamic": dynamic,
        "input_size": f"{height}x{width}",
        "align_corners": align_corners,
        "input": "float32 RGB 0..255 [B, 3, H, W]",
        **dict(metadata or {}),
    }
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = _metadata_text(value)
    model.producer_name = "udaseg"
    model.producer_version = __version__
    serialized = model.SerializeToString()
    atomic_write(out, lambda stream: stream.write(serialized))
    seconds = time.perf_counter() - started
    return ExportResult(
        path=out,
        seconds=seconds,
        metadata={entry.key: entry.value for entry in model.metadata_props},
        size_bytes=len(serialized),
    )


def _metadata_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return str(value)


def model_facts(model_config: Any) -> dict[str, Any]:
    """A `model:` section as plain JSON-able data."""
    if dataclasses.is_dataclass(model_config):
        facts = dataclasses.asdict(model_config)
    else:
        facts = dict(vars(model_config))
    return json.loads(json.dumps(facts, default=str))


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    output: str = "logits",
    dynamic: bool = False,
    half: bool = False,
    example_size: tuple[int, int] | None = None,
    overrides: list[str] | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> ExportResult:
    """Export the evaluated network of a udaseg checkpoint (its method's `predict`).

    `example_size` defaults to the checkpoint's `eval.input_size`, else 512x1024. The output
    file is checked before the checkpoint is read.
    """
    import torch

    from udaseg.engine.loading import load_for_inference
    from udaseg.files import check_output_file

    _require_onnx()
    if output not in OUTPUTS:
        raise ConfigError(f"--output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    check_output_file(out, "--out", overwrite)
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"{checkpoint}: no such checkpoint file")
    loaded = load_for_inference(
        str(checkpoint), None, None, list(overrides or []), torch.device("cpu")
    )
    config = loaded.config
    size = example_size or config.eval.input_size or DEFAULT_EXAMPLE_SIZE
    from udaseg.engine import checkpoint as checkpoints

    step = checkpoints.read_checkpoint(checkpoint).get("step")
    metadata = {
        "method": config.method.name,
        "model": model_facts(config.model),
        "input_normalization": getattr(config.model, "input_normalization", ""),
        "eval_input_size": list(config.eval.input_size) if config.eval.input_size else None,
        "checkpoint": Path(checkpoint).name,
        "checkpoint_step": step,
    }
    return export_network(
        loaded.method.predict,
        list(loaded.method.all_modules().values()),
        out,
        num_classes=loaded.label_space.num_classes,
        label_space=loaded.label_space.name,
        output=output,
        dynamic=dynamic,
        half=half,
        example_size=tuple(size),
        align_corners=config.eval.align_corners,
        metadata=metadata,
        opset=opset,
        overwrite=overwrite,
    )


def read_metadata(path: str | Path) -> dict[str, str]:
    """The `metadata_props` of an ONNX file (weights are not loaded)."""
    onnx, _ = _require_onnx()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - any parse failure is the file's fault
        raise CheckpointError(f"{path}: not an ONNX model ({type(error).__name__})") from None
    return {entry.key: entry.value for entry in model.metadata_props}


class OnnxSegmentor:
    """Run an exported udaseg ONNX model with onnxruntime.

    `segmentor(images)`: images float32 [B, 3, H, W] RGB 0..255, a numpy array or a torch
    tensor; returns the model's output as the same kind (a torch tensor on the input's
    device): logits [B, C, h, w] float32, or labels [B, H, W] for an "argmax" export. With
    torch tensors it is a `forward` for `evaluation.inference.predict_logits` (logits exports).

    Attributes:
        num_classes (int), label_space (the label space's name), output ("logits"/"argmax"),
        metadata (every metadata_props entry), path, session (the onnxruntime session).
    """

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        threads: int | None = None,
    ) -> None:
        _, onnxruntime = _require_onnx()
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such ONNX file")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path),
                sess_options=options,
                providers=providers or ["CPUExecutionProvider"],
            )
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own classes
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CheckpointError(
                f"{self.path}: cannot load the ONNX model: {first_line}"
            ) from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if "num_classes" not in self.metadata or "output" not in self.metadata:
            raise CheckpointError(f"{self.path}: not a udaseg ONNX export (no udaseg metadata)")
        self.num_classes = int(self.metadata["num_classes"])
        self.label_space = self.metadata.get("label_space", "")
        self.output = self.metadata["output"]
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, images):
        if isinstance(images, np.ndarray):
            return self._run(images)
        try:
            import torch
        except ImportError:  # pragma: no cover
            torch = None
        if torch is not None and isinstance(images, torch.Tensor):
            result = self._run(images.detach().float().cpu().numpy())
            return torch.from_numpy(result).to(images.device)
        raise TypeError(f"images must be a numpy array or a torch tensor, got {type(images)}")

    def _run(self, images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
        feed = np.ascontiguousarray(images, dtype=np.float32)
        try:
            (result,) = self.session.run([self.output_name], {self.input_name: feed})
        except Exception as error:  # noqa: BLE001
            if isinstance(error, UdasegError):
                raise
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ValueError(f"{self.path}: inference failed: {first_line}") from None
        return result

    def __repr__(self) -> str:
        return (
            f"OnnxSegmentor({str(self.path)!r}, label_space={self.label_space!r}, "
            f"num_classes={self.num_classes}, output={self.output!r})"
        )
