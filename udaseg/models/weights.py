"""Loading init weights and released checkpoints: sources, checksums, key layouts.

Two entry points:
- `load_init_weights(module, source)`: ImageNet/COCO init files (REFERENCE §1.3). Drops the
  one-token prefix (`Scale.`) that AdaptSegNet/ADVENT/BDL/FDA loaders drop, `module.` prefixes
  and wrappers such as DACS's `{'model': ...}`; skips classifier heads whose shapes do not fit
  (the init files carry a 21-class COCO/VOC head on layer4) and fully connected layers of
  ImageNet classifiers; tolerates missing `num_batches_tracked` (REFERENCE §7.11). Anything
  else that does not fit is a CheckpointError.
- `load_released_checkpoint(segmentor, source)`: an adapted model in the released layout, loaded
  strictly (except `num_batches_tracked`), with hints when it does not fit (single vs
  multi-level, number of classes, ResNet vs VGG, ProDA's head, the 2-vs-4 ASPP forward for
  known files).

Also the one reader of weights and checkpoint files (`read_checkpoint`, which
`engine.checkpoint.load_file` is) and the one strict load (`load_state_dict_strictly`, used by
released checkpoints, discriminator weights and udaseg checkpoints' modules), so that the
safety policy and the "does not fit" report are the same everywhere.

A source is a local path, an http(s) URL (downloaded once into the cache, atomically) or the
file name of an entry of `KNOWN_WEIGHTS` (downloaded from its URLs, tried in order). Files are
read with `torch.load(..., weights_only=True)`, or with safetensors for `.safetensors`: nothing
is ever unpickled beyond tensors and plain containers.

Checksums: `sha256=` is verified when given; a file named like torch hub's `name-<hex>.pth`
(e.g. `DeepLab_resnet_pretrained_init-f81d91e8.pth`) must have a sha256 starting with <hex>,
which is how torch 0.4's model_zoo checked these same files (REFERENCE §7.12).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from udaseg.errors import CheckpointError

logger = logging.getLogger(__name__)

# --- Known files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownWeights:
    """A weights file users download, with where to get it and how its keys look."""

    name: str  # file name (the cache file name too)
    urls: tuple[str, ...]  # direct download URLs, tried in order
    kind: str  # "init" (load_init_weights) or "released" (load_released_checkpoint)
    description: str
    key_format: str
    mirror_pages: tuple[str, ...] = ()  # pages to download from by hand when the URLs fail
    # Model settings the file needs (checked by load_released_checkpoint where they are known).
    model_settings: dict[str, Any] = field(default_factory=dict)


def _google_drive(file_id: str) -> str:
    # The direct form that skips the "cannot scan for viruses" page of large files.
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


KNOWN_WEIGHTS: tuple[KnownWeights, ...] = (
    KnownWeights(
        name="DeepLab_resnet_pretrained_init-f81d91e8.pth",
        urls=(
            "http://vllab.ucmerced.edu/ytsai/CVPR18/DeepLab_resnet_pretrained_init-f81d91e8.pth",
            _google_drive("1BMTTMCNkV98pjZh_rU0Pp47zeVqF3MEc"),
        ),
        kind="init",
        description="DeepLabV2-ResNet101 converted from Caffe init.caffemodel: ImageNet + MS-COCO "
        "(AdaptSegNet RESTORE_FROM; likely BDL/FDA's init too). The vllab URL was reported 404 "
        "in 2023; mirrors in layumi/AdaBoost_Seg#2.",
        key_format="one-token prefix (`Scale.`), 21-class `layer5` head on layer4",
        mirror_pages=(
            "https://drive.google.com/file/d/1BMTTMCNkV98pjZh_rU0Pp47zeVqF3MEc/view",
            "https://1drv.ms/u/s!Avx-MJllNj5b3SqR7yurCxTgIUOK?e=A1dq3m",
        ),
    ),
    KnownWeights(
        name="DeepLab_resnet_pretrained_imagenet.pth",
        urls=(
            "https://github.com/valeoai/ADVENT/releases/download/v0.1/"
            "DeepLab_resnet_pretrained_imagenet.pth",
        ),
        kind="init",
        description="ADVENT's ImageNet-only DeepLabV2-ResNet101 init.",
        key_format="one-token prefix, `layer5` head skipped on load",
    ),
    KnownWeights(
        name="resnet101COCO-41f33a49.pth",
        urls=("http://vllab1.ucmerced.edu/~whung/adv-semi-seg/resnet101COCO-41f33a49.pth",),
        kind="init",
        description="COCO-pretrained DeepLabV2-ResNet101 (AdvSemiSeg), DACS's `pretrained: coco`.",
        key_format="bare Caffe-layout names (loaded by name and shape in DACS)",
        # Third-party re-upload reported in voldemortX/DST-CBC#13.
        mirror_pages=("https://drive.google.com/file/d/14j4RoLqnfGeKaBN7m11u8XUnuov6PgYp/view",),
    ),
    KnownWeights(
        name="resnet101-5d3b4d8f.pth",
        urls=("https://download.pytorch.org/models/resnet101-5d3b4d8f.pth",),
        kind="init",
        description="torchvision ImageNet ResNet-101 (ProDA's init; its weights were trained with "
        "the stride on the 3x3 conv but load by name into the Caffe layout, as ProDA does).",
        key_format="torchvision names; `fc.*` skipped",
    ),
    KnownWeights(
        name="r101_1x_sk0.pth",
        urls=(_google_drive("1IHT-n-ko2DRWXNaW8OvvYktn_5VQYd2C"),),
        kind="init",
        description="SimCLRv2 ResNet-101 (1x, no selective kernels), self-supervised on ImageNet: "
        "the init of ProDA's stage-2/3 students (microsoft/ProDA README, pretrained/simclr/). "
        "Trained on RGB in 0..1 without mean or std: use model.input_normalization=unit.",
        key_format="`state_dict` of torchvision ResNet names (ProDA reads ['state_dict']); the "
        "SimCLRv2-Pytorch converter's `resnet` layout (net.0.0, net.N.blocks.M.net.K) is renamed",
        mirror_pages=("https://drive.google.com/file/d/1IHT-n-ko2DRWXNaW8OvvYktn_5VQYd2C/view",),
    ),
    KnownWeights(
        name="tllib_deeplabv2_resnet101.pth",
        urls=("https://cloud.tsinghua.edu.cn/f/2d9a7fc43ce34f76803a/?dl=1",),
        kind="init",
        description="Transfer-Learning-Library's DeepLabV2-ResNet101 ('pre-trained on ImageNet').",
        key_format="`backbone.*` and `classifier.conv2d_list.*`",
    ),
    KnownWeights(
        name="GTA2Cityscapes_multi-ed35151c.pth",
        urls=("http://vllab.ucmerced.edu/ytsai/CVPR18/GTA2Cityscapes_multi-ed35151c.pth",),
        kind="released",
        description="AdaptSegNet multi-level GTA5->Cityscapes (2-branch ASPP forward).",
        key_format="bare, layer5 = aux head on layer3, layer6 = main head",
        model_settings={
            "name": "deeplabv2",
            "multi_level": True,
            "aspp_branches": 2,
            "num_classes": 19,
        },
    ),
    KnownWeights(
        name="GTA2Cityscapes_vgg-ac4ac9f6.pth",
        urls=("http://vllab.ucmerced.edu/ytsai/CVPR18/GTA2Cityscapes_vgg-ac4ac9f6.pth",),
        kind="released",
        description="AdaptSegNet DeeplabVGG GTA5->Cityscapes (2-branch ASPP forward).",
        key_format="bare, features.* and classifier.*",
        model_settings={"name": "deeplabv2_vgg16", "aspp_branches": 2, "num_classes": 19},
    ),
    KnownWeights(
        name="cityscapes_oracle-b7b9934.pth",
        urls=("http://vllab1.ucmerced.edu/~whung/adaptSeg/cityscapes_oracle-b7b9934.pth",),
        kind="released",
        description="AdaptSegNet Cityscapes oracle (single-level Res_Deeplab, 2-branch ASPP).",
        key_format="bare, layer5 = head on layer4",
        model_settings={
            "name": "deeplabv2",
            "multi_level": False,
            "aspp_branches": 2,
            "num_classes": 19,
        },
    ),
    KnownWeights(
        name="gta2cityscapes_advent.pth",
        urls=(
            "https://github.com/valeoai/ADVENT/releases/download/v0.1/gta2cityscapes_advent.pth",
        ),
        kind="released",
        description="ADVENT GTA5->Cityscapes (all four ASPP branches).",
        key_format="bare, layer6 = main head (layer5 = aux head when multi-level)",
        model_settings={"name": "deeplabv2", "aspp_branches": 4, "num_classes": 19},
    ),
)


def find_known(name_or_url: str) -> KnownWeights | None:
    """The KNOWN_WEIGHTS entry with this file name or URL, if any."""
    for entry in KNOWN_WEIGHTS:
        if name_or_url == entry.name or name_or_url in entry.urls:
            return entry
    return None


# --- Paths, URLs and checksums --------------------------------------------------------------

# torch hub's convention: `name-<sha256 prefix>.ext`. At least 6 hex digits, so that names such
# as `resnet-50.pth` are not read as carrying a checksum.
_HASH_SUFFIX = re.compile(r"-([0-9a-f]{6,64})\.[A-Za-z0-9]+$")


def default_cache_dir() -> Path:
    """Where downloaded weights go: `$UDASEG_CACHE/weights`, else `~/.cache/udaseg/weights`."""
    root = os.environ.get("UDASEG_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "udaseg"
    return base / "weights"


def is_url(source: str | Path) -> bool:
    """Whether a source is an http(s) URL (anything else is a path or a known file name)."""
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def cache_path_for_url(url: str, cache_dir: str | Path | None = None) -> Path:
    """The cache file of a URL: the known file name, else the URL's last path component, else
    a name derived from the URL's hash (for URLs such as `.../f/<id>/?dl=1`)."""
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    known = find_known(url)
    if known is not None:
        return directory / known.name
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name or "." not in name:
        name = f"download-{hashlib.sha256(url.encode()).hexdigest()[:16]}.pth"
    return directory / name


def hash_prefix_from_name(name: str) -> str | None:
    """The sha256 prefix a torch-hub-style file name carries (`x-f81d91e8.pth` -> `f81d91e8`)."""
    match = _HASH_SUFFIX.search(Path(name).name)
    return match.group(1) if match else None


def sha256_of_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(
    path: str | Path, sha256: str | None = None, name: str | None = None
) -> str | None:
    """Check a file against an expected sha256 and/or the prefix its name carries.

    Args:
        path: the file to hash.
        sha256: the full expected digest, or None.
        name: the file name whose `-<hex>` suffix is checked (default: the path's name; a
            downloaded file is checked under its final name before it is moved there).

    Returns:
        The file's sha256 when it was computed, else None (nothing to check).

    Raises:
        CheckpointError: a checksum does not match.
    """
    name = name or Path(path).name
    prefix = hash_prefix_from_name(name)
    if sha256 is None and prefix is None:
        return None
    digest = sha256_of_file(path)
    if sha256 is not None and digest != sha256.lower():
        raise CheckpointError(
            f"{name}: sha256 mismatch: expected {sha256.lower()}, the file has {digest} "
            f"(corrupt or a different file)"
        )
    if prefix is not None and not digest.startswith(prefix):
        raise CheckpointError(
            f"{name}: sha256 mismatch: the name says it starts with {prefix}, the file has "
            f"{digest} (corrupt, truncated or a different file under this name)"
        )
    return digest


def download(url: str, destination: Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download `url` to `destination` atomically (a temporary file in the same directory,
    checked, then renamed), so that an interrupted download never leaves a partial file under
    the final name and concurrent processes never see one.

    Raises:
        CheckpointError: the request fails, returns an HTML page instead of a file, or the
            checksum does not match.
    """
    return _download(url, destination, sha256, timeout)[0]


def _download(
    url: str, destination: Path, sha256: str | None, timeout: float = 60.0
) -> tuple[Path, str | None]:
    destination.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".part", dir=destination.parent
    )
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "udaseg"})
        logger.info("downloading %s to %s", url, destination)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            content_type = response.headers.get("Content-Type", "")
            if content_type.startswith("text/html"):
                # Dead links and file hosts' confirmation pages answer with HTML, not weights.
                raise CheckpointError(f"{url}: the server sent a web page, not a weights file")
            with os.fdopen(descriptor, "wb") as handle:
                descriptor = -1
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    handle.write(chunk)
        digest = verify_checksum(temporary, sha256, name=destination.name)
        os.replace(temporary, destination)
        temporary = None
    except OSError as error:  # URLError and HTTPError are OSErrors
        raise CheckpointError(f"{url}: download failed ({error})") from None
    finally:
        if descriptor != -1:
            os.close(descriptor)
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)
    return destination, digest


def resolve_source(
    source: str | Path, sha256: str | None = None, cache_dir: str | Path | None = None
) -> Path:
    """A local, checksum-verified file for a path, a URL or a known file name.

    A URL is downloaded once into `cache_dir` (default `default_cache_dir()`); a known file name
    that is neither an existing path nor in the cache is downloaded from its URLs in order.

    Raises:
        CheckpointError: not found, not downloadable or a checksum mismatch.
    """
    return _resolve(source, sha256, cache_dir)[0]


def _resolve(
    source: str | Path, sha256: str | None, cache_dir: str | Path | None
) -> tuple[Path, str | None]:
    """`resolve_source`, also returning the file's sha256 when a checksum was verified."""
    if is_url(source):
        cached = cache_path_for_url(str(source), cache_dir)
        if not cached.is_file():
            return _download(str(source), cached, sha256)  # verified before it is moved there
        return cached, verify_checksum(cached, sha256)
    path = Path(source).expanduser()
    if path.is_file():
        return path, verify_checksum(path, sha256)
    known = find_known(str(source))
    if known is None:
        raise CheckpointError(f"{source}: weights file not found")
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cached = directory / known.name
    if cached.is_file():
        return cached, verify_checksum(cached, sha256)
    failures = []
    for url in known.urls:
        try:
            return _download(url, cached, sha256)
        except CheckpointError as error:
            failures.append(str(error))
    by_hand = (
        f"; download it by hand from {' or '.join(known.mirror_pages)}"
        if known.mirror_pages
        else ""
    )
    raise CheckpointError(
        f"{known.name}: not found here and no URL worked ({' | '.join(failures) or 'none known'})"
        f"{by_hand} and pass its path"
    )


# --- Reading files --------------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> Any:
    """The object stored in a weights or checkpoint file, read without unpickling arbitrary
    objects. The one reader of udaseg: init weights, released checkpoints, discriminator
    weights and udaseg's own training checkpoints (`engine.checkpoint.load_file`) all go
    through it.

    `.safetensors` files go through the safetensors package; everything else through
    `torch.load(map_location="cpu", weights_only=True)`.

    Raises:
        CheckpointError: absent, unreadable, or holding objects weights_only refuses to build;
            always one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(
                f"{path}: reading .safetensors files needs the safetensors package "
                f"(pip install safetensors)"
            ) from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({_first_line(error)})"
            ) from None
    _check_torch_file_header(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:
            raise CheckpointError(
                f"{path}: torch.load(weights_only=True) refused it: it holds a pickled "
                f"{refused.group(1)} object, which udaseg refuses to unpickle (that could run "
                f"code); if you trust the file, re-save just its state_dict "
                f"(torch.save(state_dict, ...))"
            ) from None
        operand = re.search(r"WeightsUnpickler error: \s*([^\n]+)", text)
        reason = operand.group(1).strip() if operand else "unpickling refused"
        raise CheckpointError(
            f"{path}: not a PyTorch weights file that weights_only=True can read ({reason})"
        ) from None
    except Exception as error:  # noqa: BLE001 - torch raises many types; the user needs one line
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({_first_line(error)})"
        ) from None


# torch.save writes a zip archive (since 1.6) or, with the legacy format, a pickle stream whose
# first byte is the PROTO opcode; anything else is not a file torch.load can read.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_OPCODE = b"\x80"


def _check_torch_file_header(path: Path) -> None:
    """CheckpointError unless the file starts like a zip or pickle file.

    torch.load on a text file fails with messages such as `101` (a KeyError on the byte 'e'),
    which say nothing about the actual problem: the file is not a checkpoint at all.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror})") from None
    if head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTOCOL_OPCODE):
        return
    if not head:
        raise CheckpointError(f"{path}: empty file, not a udaseg checkpoint or weights file")
    raise CheckpointError(
        f"{path}: not a udaseg checkpoint, nor any PyTorch file (torch.save writes a zip or "
        f"pickle file; this one starts with {head[:8]!r})"
    )


def _first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) > 0
        and all(
            isinstance(key, str) and isinstance(item, torch.Tensor) for key, item in value.items()
        )
    )


# Wrapper keys, in order of preference: mmcv/lightning, common training scripts, DACS (`model`
# is the student, which DACS's evaluateUDA loads), ProDA (`ResNet101` -> `model_state`).
# SimCLRv2-Pytorch's converter saves {"resnet": ..., "head": ...}.
_WRAPPER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "ResNet101",
    "net",
    "resnet",
)


def strip_wrappers(checkpoint: Any, path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor state_dict inside a checkpoint, with `module.` (DataParallel) prefixes removed.

    Raises:
        CheckpointError: no state_dict of tensors can be found.
    """
    value = checkpoint
    for _ in range(4):
        if _is_state_dict(value):
            break
        if not isinstance(value, dict):
            value = None
            break
        key = next((k for k in _WRAPPER_KEYS if isinstance(value.get(k), dict)), None)
        if key is None:
            value = None
            break
        value = value[key]
    if not _is_state_dict(value):
        described = (
            f"a dict with keys {', '.join(map(str, list(checkpoint)[:6]))}"
            if isinstance(checkpoint, dict)
            else type(checkpoint).__name__
        )
        raise CheckpointError(f"{path}: no state_dict of tensors found in it ({described})")
    if all(key.startswith("module.") for key in value):
        value = {key[len("module.") :]: item for key, item in value.items()}
    return dict(value)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """`read_checkpoint` + `strip_wrappers`."""
    return strip_wrappers(read_checkpoint(path), path)


# --- Reports --------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What a load did, for logs and run directories."""

    path: Path
    loaded: int  # tensors copied into the model
    renaming: str  # how the file's keys were mapped onto the model's
    skipped: list[str] = field(default_factory=list)  # "key: reason", left at their init
    untracked: int = 0  # num_batches_tracked buffers absent from the file (left at 0)
    sha256: str | None = None  # the file's digest when a checksum was verified
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.path} ({self.renaming})"]
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)}: {'; '.join(self.skipped[:4])}")
            if len(self.skipped) > 4:
                parts[-1] += f"; ... ({len(self.skipped) - 4} more)"
        if self.untracked:
            parts.append(f"{self.untracked} num_batches_tracked absent (old PyTorch file)")
        parts.extend(self.notes)
        return "; ".join(parts)

    __str__ = summary


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def _list(keys: list[str], limit: int = 4) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# --- Strict loading -------------------------------------------------------------------------


@dataclass
class KeyDifferences:
    """How a state_dict differs from the one a module expects."""

    missing: list[str] = field(default_factory=list)  # in the module, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the module
    mismatched: list[str] = field(default_factory=list)  # "key (AxB in the file, CxD here)"
    untracked: int = 0  # num_batches_tracked buffers absent from the file and tolerated

    @property
    def fits(self) -> bool:
        """Whether the state_dict can be loaded strictly (tolerated absences aside)."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """One line, e.g. "missing a, b; shape mismatch c (3x3 in the file, 4x3 here)"."""
        problems = []
        if self.missing:
            problems.append(f"missing {_list(self.missing, 3)}")
        if self.unexpected:
            problems.append(f"unexpected {_list(self.unexpected, 3)}")
        if self.mismatched:
            problems.append(f"shape mismatch {_list(self.mismatched, 3)}")
        return "; ".join(problems)


def compare_state_dicts(
    state_dict: Mapping[str, Any],
    expected: Mapping[str, Any],
    tolerate_untracked: bool = False,
) -> KeyDifferences:
    """The keys of `state_dict` that are missing, unexpected or of the wrong shape for
    `expected` (a module's `state_dict()`).

    Args:
        tolerate_untracked: absent `num_batches_tracked` buffers are counted, not missing
            (PyTorch 0.3/0.4 files lack them, REFERENCE §7.11; BN does not use them unless
            its momentum is None).
    """
    differences = KeyDifferences()
    for key, value in expected.items():
        if key not in state_dict:
            if tolerate_untracked and key.endswith("num_batches_tracked"):
                differences.untracked += 1
            else:
                differences.missing.append(key)
            continue
        stored = state_dict[key]
        # Only tensors have shapes; a module's `_extra_state` may be any object.
        if isinstance(stored, torch.Tensor) and isinstance(value, torch.Tensor):
            if stored.shape != value.shape:
                differences.mismatched.append(
                    f"{key} ({_shape(stored)} in the file, {_shape(value)} here)"
                )
    differences.unexpected = [key for key in state_dict if key not in expected]
    return differences


def load_state_dict_strictly(
    module: nn.Module,
    state_dict: Mapping[str, Any],
    path: str | Path,
    target: str = "the model",
    tolerate_untracked: bool = False,
    hints: Callable[[], list[str]] | None = None,
) -> KeyDifferences:
    """Load `state_dict` into `module` when every key fits, else raise a one-line report.

    The one strict load of udaseg: released checkpoints, discriminator weights and the modules
    of udaseg checkpoints all use it, so a file that does not fit reads the same everywhere:
    `<path>: does not fit <target> (missing ...; unexpected ...; shape mismatch ...): <hints>`.

    Args:
        module: the module to fill.
        state_dict: key -> tensor, already renamed to the module's layout.
        path: the file, named in the message.
        target: what the file was loaded into, in words ("the model", "the module 'x'").
        tolerate_untracked: see `compare_state_dicts`.
        hints: called only on failure; likely causes as config advice, appended to the message.

    Returns:
        The (fitting) differences, i.e. how many `num_batches_tracked` were tolerated.

    Raises:
        CheckpointError: a key is missing, unexpected or of another shape.
    """
    differences = compare_state_dicts(state_dict, module.state_dict(), tolerate_untracked)
    if not differences.fits:
        advice = hints() if hints is not None else []
        hint = f": {'; '.join(advice)}" if advice else ""
        raise CheckpointError(f"{path}: does not fit {target} ({differences.summary()}){hint}")
    try:
        # Non-strict only to let tolerated num_batches_tracked stay at 0; everything else was
        # checked above.
        module.load_state_dict(state_dict, strict=differences.untracked == 0)
    except RuntimeError as error:  # a module's own loading hook refusing the values
        raise CheckpointError(
            f"{path}: does not fit {target} ({_first_line(error)[:300]})"
        ) from None
    return differences


# --- Init weights ---------------------------------------------------------------------------

Renaming = tuple[str, Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]]


def _renamings(state_dict: dict[str, torch.Tensor], module: nn.Module) -> list[Renaming]:
    """Candidate key mappings of an init file; the one matching most model keys is used."""
    candidates: list[Renaming] = [("keys as they are", lambda sd: sd)]
    first_tokens = {key.split(".", 1)[0] for key in state_dict}
    if len(first_tokens) == 1 and all("." in key for key in state_dict):
        token = next(iter(first_tokens))
        # AdaptSegNet/ADVENT/BDL/FDA loaders drop the first dotted token (`Scale.`, §1.3).
        candidates.append(
            (
                f"dropped the prefix {token + '.'!r}",
                lambda sd: {k.split(".", 1)[1]: v for k, v in sd.items()},
            )
        )
    head_prefixes = tuple(getattr(module, "head_prefixes", ()))
    if head_prefixes and any(key.startswith("backbone.") for key in state_dict):
        main_head = head_prefixes[-1]

        def tllib(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            renamed = {}
            for key, value in sd.items():
                if key.startswith("backbone."):
                    key = key[len("backbone.") :]
                elif key.startswith("classifier."):
                    key = main_head + key[len("classifier.") :]
                renamed[key] = value
            return renamed

        candidates.append(("tllib layout (backbone./classifier.)", tllib))
    if any(_SIMCLR_BLOCK.match(key) for key in state_dict):
        candidates.append(("SimCLRv2-Pytorch layout (net.N.blocks.M)", simclr_to_torchvision))
    return candidates


# SimCLRv2-Pytorch (the converter google-research/simclr points to) names a ResNet's stem
# `net.0` (conv `net.0.0`, BN `net.0.1.0`) and stage s `net.s.blocks.b`, whose bottleneck is
# `net.{0,2,4}` (convs 1-3) with BNs `net.{1,3,5}.0`, and whose shortcut is
# `projection.shortcut` with BN `projection.bn.0`.
_SIMCLR_BLOCK = re.compile(r"^net\.([1-4])\.blocks\.(\d+)\.(.+)$")
_SIMCLR_BLOCK_PARTS = {
    "net.0.": "conv1.",
    "net.1.0.": "bn1.",
    "net.2.": "conv2.",
    "net.3.0.": "bn2.",
    "net.4.": "conv3.",
    "net.5.0.": "bn3.",
    "projection.shortcut.": "downsample.0.",
    "projection.bn.0.": "downsample.1.",
}


def simclr_to_torchvision(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SimCLRv2-Pytorch ResNet keys -> torchvision/Caffe-layout names (`fc.*` kept as is).

    Args:
        state_dict: name -> tensor, e.g. `net.1.blocks.0.net.3.0.running_mean`.
    Returns:
        name -> the same tensor, e.g. `layer1.0.bn2.running_mean`; unknown keys unchanged.
    """
    renamed = {}
    for key, value in state_dict.items():
        new_key = key
        if key.startswith("net.0.0."):
            new_key = "conv1." + key[len("net.0.0.") :]
        elif key.startswith("net.0.1.0."):
            new_key = "bn1." + key[len("net.0.1.0.") :]
        else:
            match = _SIMCLR_BLOCK.match(key)
            if match is not None:
                stage, block, rest = match.groups()
                for old, new in _SIMCLR_BLOCK_PARTS.items():
                    if rest.startswith(old):
                        new_key = f"layer{stage}.{block}.{new}{rest[len(old) :]}"
                        break
        renamed[new_key] = value
    return renamed


def _is_head(key: str, head_prefixes: tuple[str, ...]) -> bool:
    return key.startswith(head_prefixes)


# Keys of ImageNet classifiers that a segmentor never has (torchvision ResNet's `fc`).
_FOREIGN_CLASSIFIER_PREFIXES = ("fc.",)


def load_init_weights(
    module: nn.Module,
    source: str | Path,
    sha256: str | None = None,
    cache_dir: str | Path | None = None,
) -> LoadReport:
    """Initialise `module` from an init file (REFERENCE §1.3).

    Args:
        module: a segmentor, whose `init_optional_prefixes` (default `head_prefixes`) name the
            keys that are skipped when absent from the file or of another shape (the heads), or
            any module whose keys the file must cover.
        source: path, http(s) URL or a `KNOWN_WEIGHTS` file name.
        sha256: expected full sha256 of the file.
        cache_dir: download cache (default `default_cache_dir()`).

    Returns:
        A LoadReport saying what was loaded and skipped.

    Raises:
        CheckpointError: unreadable file, checksum mismatch, or backbone keys that are missing,
            unexpected or of the wrong shape (the first few are listed).
    """
    path, digest = _resolve(source, sha256, cache_dir)
    state_dict = read_state_dict(path)
    notes: list[str] = []
    adapt = getattr(module, "adapt_init_state_dict", None)
    if callable(adapt):
        state_dict, adapt_notes = adapt(state_dict)
        notes.extend(adapt_notes)
    target = module.state_dict()
    optional = tuple(
        getattr(module, "init_optional_prefixes", getattr(module, "head_prefixes", ()))
    )

    def score(candidate: dict[str, torch.Tensor]) -> int:
        return sum(1 for k, v in candidate.items() if k in target and target[k].shape == v.shape)

    scored = [
        (score(rename(state_dict)), label, rename)
        for label, rename in _renamings(state_dict, module)
    ]
    best, renaming, rename = max(scored, key=lambda item: item[0])
    if best == 0:
        raise CheckpointError(
            f"{path}: none of its {len(state_dict)} keys fit the model "
            f"(file: {_list(sorted(state_dict))}; model: {_list(list(target))})"
        )
    state_dict = rename(state_dict)

    to_load: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    missing: list[str] = []
    mismatched: list[str] = []
    untracked = 0
    for key, expected in target.items():
        if key in state_dict:
            value = state_dict[key]
            if value.shape == expected.shape:
                to_load[key] = value
            elif _is_head(key, optional):
                skipped.append(f"{key}: shape {_shape(value)} in the file, {_shape(expected)} here")
            else:
                mismatched.append(f"{key} ({_shape(value)} in the file, {_shape(expected)} here)")
        elif key.endswith("num_batches_tracked"):
            untracked += 1
        elif _is_head(key, optional):
            skipped.append(f"{key}: not in the file (kept at its random init)")
        else:
            missing.append(key)
    unexpected = []
    for key in state_dict:
        if key in target:
            continue
        if _is_head(key, optional) or key.startswith(_FOREIGN_CLASSIFIER_PREFIXES):
            skipped.append(f"{key}: in the file, not in this model")
        else:
            unexpected.append(key)
    problems = []
    if missing:
        problems.append(f"missing from the file: {_list(missing)}")
    if unexpected:
        problems.append(f"not in the model: {_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {_list(mismatched, 3)}")
    if problems:
        raise CheckpointError(
            f"{path}: init weights do not fit {type(module).__name__} after {renaming}: "
            f"{'; '.join(problems)}"
        )
    result = module.load_state_dict(to_load, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    report = LoadReport(path, len(to_load), renaming, skipped, untracked, digest, notes)
    logger.info("init weights: %s", report.summary())
    return report


# --- Released checkpoints -------------------------------------------------------------------

# Label spaces by class count, for hints (udaseg/data/label_spaces.py).
_LABEL_SPACES = {19: "cityscapes19", 16: "synthia16", 13: "synthia13"}


def _block_counts(keys: set[str] | list[str]) -> tuple[int, ...] | None:
    counts = []
    for stage in range(1, 5):
        indices = {
            int(k.split(".")[1])
            for k in keys
            if k.startswith(f"layer{stage}.") and k.split(".")[1].isdigit()
        }
        if not indices:
            return None
        counts.append(max(indices) + 1)
    return tuple(counts)


def _class_hint(head_weight: torch.Tensor | None, segmentor: nn.Module) -> list[str]:
    num_classes = getattr(segmentor, "num_classes", None)
    if head_weight is None or num_classes is None or head_weight.shape[0] == num_classes:
        return []
    classes = head_weight.shape[0]
    space = f" (data.label_space={_LABEL_SPACES[classes]})" if classes in _LABEL_SPACES else ""
    return [
        f"the checkpoint predicts {classes} classes and the model {num_classes}: use a label "
        f"space with {classes} classes{space}"
    ]


def _diagnose(state_dict: dict[str, torch.Tensor], segmentor: nn.Module) -> list[str]:
    """Likely causes of a released checkpoint not fitting, as config advice."""
    keys = set(state_dict)
    target = segmentor.state_dict()
    hints = []
    is_vgg = "classifier.conv2d_list.0.weight" in target
    if len({k.split(".", 1)[0] for k in keys}) == 1 and all("." in k for k in keys):
        token = next(iter(keys)).split(".", 1)[0]
        if token not in {k.split(".", 1)[0] for k in target}:
            return [
                f"every key starts with {token + '.'!r}, as in the init files: load it with "
                f"model.init (which drops the prefix and a non-fitting head)"
            ]
    if any("decode_head." in k or "backbone.stem." in k for k in keys):
        return [
            "this is an mmseg (DAFormer/HRDA/MIC) model, not key-compatible with the Caffe "
            "layout (REFERENCE §1.5)"
        ]
    model_is_proda = getattr(segmentor, "head_type", None) == "proda"
    file_is_proda = any(k.startswith(("layer5.bottleneck.", "layer5.head.")) for k in keys)
    file_has_bn = any(k.startswith("bn_pretrain.") for k in keys)
    model_has_bn = getattr(segmentor, "bn_pretrain", None) is not None
    if file_has_bn and not model_has_bn:
        return [
            "this is a ProDA --bn_clr model (an extra BatchNorm `bn_pretrain` after layer4): "
            "set model.layer4_output_bn=true"
        ]
    if model_has_bn and not file_has_bn and any(k.startswith("layer4.") for k in keys):
        hints.append(
            "the checkpoint has no `bn_pretrain` BatchNorm after layer4: set "
            "model.layer4_output_bn=false"
        )
    if file_is_proda and not model_is_proda:
        return [
            "this is ProDA's Classifier_Module2 head (REFERENCE §1.4): set model.head=proda "
            "(with model.multi_level=false)"
        ]
    if model_is_proda and not file_is_proda and any(k.startswith("layer") for k in keys):
        return ["the checkpoint has the summed ASPP head: set model.head=aspp_sum"]
    if not is_vgg and any(k.startswith("features.") for k in keys):
        return ["the checkpoint is a DeeplabVGG (features.*): set model.name=deeplabv2_vgg16"]
    if is_vgg and any(k.startswith("layer1.") for k in keys):
        return ["the checkpoint is a DeepLabV2-ResNet: set model.name=deeplabv2"]
    if is_vgg:
        return _class_hint(state_dict.get("classifier.conv2d_list.0.weight"), segmentor)
    multi = bool(getattr(segmentor, "multi_level", False))
    has5, has6 = (
        any(k.startswith("layer5.") for k in keys),
        any(k.startswith("layer6.") for k in keys),
    )
    if not multi and has5 and has6:
        hints.append(
            "the checkpoint is multi-level (heads layer5 and layer6): set model.multi_level=true"
        )
    if multi and not (has5 and has6):
        hints.append("the checkpoint is single-level (one head): set model.multi_level=false")
    if model_is_proda:
        hints += _class_hint(state_dict.get("layer5.head.1.weight"), segmentor)
    else:
        main = "layer6." if has6 else "layer5."
        hints += _class_hint(state_dict.get(f"{main}conv2d_list.0.weight"), segmentor)
    if "conv1.weight" in state_dict and "conv1.weight" in target:
        width, expected = state_dict["conv1.weight"].shape[0], target["conv1.weight"].shape[0]
        if width != expected:
            hints.append(f"the checkpoint's stem has {width} channels: set model.width={width}")
    found, wanted = _block_counts(keys), _block_counts(list(target))
    if found is not None and wanted is not None and found != wanted:
        depth = {
            (3, 4, 23, 3): "model.depth=101 (without model.blocks)",
            (3, 4, 6, 3): "model.depth=50 (without model.blocks)",
        }.get(found)
        hints.append(
            f"the checkpoint has {list(found)} blocks per stage: set "
            f"{depth or f'model.blocks={list(found)}'}"
        )
    return hints


def load_released_checkpoint(
    segmentor: nn.Module,
    source: str | Path,
    sha256: str | None = None,
    cache_dir: str | Path | None = None,
) -> LoadReport:
    """Load a released adapted model (e.g. AdaptSegNet's GTA2Cityscapes_multi) strictly.

    Accepts a bare state_dict in the released layout, `module.`-prefixed keys and wrappers such
    as DACS's `{'model': ...}` (the student). ADVENT's single-level models name their only head
    `layer6` (REFERENCE §1.1 table); it is loaded into the single-level `layer5`. Only
    `num_batches_tracked` may be absent (PyTorch 0.3/0.4 files, REFERENCE §7.11).

    For a file of `KNOWN_WEIGHTS` whose required settings are recorded (notably the 2-vs-4 ASPP
    forward, which the keys cannot reveal, REFERENCE §1.2), a model built otherwise is refused.

    Returns:
        A LoadReport.

    Raises:
        CheckpointError: unreadable, checksum mismatch, or not fitting, with a config hint
            where the cause can be inferred.
    """
    path, digest = _resolve(source, sha256, cache_dir)
    state_dict = read_state_dict(path)
    notes: list[str] = []
    renaming = "keys as they are"
    target = segmentor.state_dict()
    if (
        not getattr(segmentor, "multi_level", True)
        and "layer5.conv2d_list.0.weight" in target
        and not any(k.startswith("layer5.") for k in state_dict)
        and any(k.startswith("layer6.") for k in state_dict)
    ):
        state_dict = {
            ("layer5." + k[len("layer6.") :] if k.startswith("layer6.") else k): v
            for k, v in state_dict.items()
        }
        renaming = "ADVENT single-level head layer6 loaded as layer5"

    known = find_known(path.name)
    settings = known.model_settings if known is not None else {}
    head = getattr(segmentor, "head", None)
    branches = getattr(head, "branches_used", None)
    if (
        "aspp_branches" in settings
        and branches is not None
        and branches != settings["aspp_branches"]
    ):
        raise CheckpointError(
            f"{path}: this file was trained with the {settings['aspp_branches']}-branch ASPP "
            f"forward (REFERENCE §1.2) and the model sums {branches}: set "
            f"model.aspp_branches={settings['aspp_branches']}"
        )

    differences = load_state_dict_strictly(
        segmentor,
        state_dict,
        path,
        tolerate_untracked=True,
        hints=lambda: _diagnose(state_dict, segmentor),
    )
    untracked = differences.untracked
    report = LoadReport(path, len(state_dict), renaming, [], untracked, digest, notes)
    logger.info("released checkpoint: %s", report.summary())
    return report
