"""Weight loading: init files in the released layouts (REFERENCE §1.3), released checkpoints,
checksums, the download cache and the weights_only policy. No network: downloads are faked."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
import torch

from udaseg.config import load_config
from udaseg.engine import checkpoint as checkpoint_module
from udaseg.errors import CheckpointError
from udaseg.models import build_segmentor
from udaseg.models import weights as weights_module
from udaseg.models.deeplabv2 import DeepLabV2
from udaseg.models.discriminators import FCDiscriminator, load_discriminator_weights
from udaseg.models.weights import (
    KnownWeights,
    cache_path_for_url,
    default_cache_dir,
    download,
    hash_prefix_from_name,
    load_init_weights,
    load_released_checkpoint,
    load_state_dict_strictly,
    read_checkpoint,
    resolve_source,
)


def small(num_classes: int = 19, **overrides) -> DeepLabV2:
    settings = dict(blocks=(1, 1, 1, 1), width=4, aspp_dilations=(1, 2, 3, 4))
    settings.update(overrides)
    return DeepLabV2(num_classes, **settings)


def released_init_file(path: Path, seed: int = 0, prefix: str = "Scale.") -> dict:
    """An init file as the papers' users download it: every key behind a one-token prefix, a
    21-class COCO/VOC head `layer5` on layer4, no num_batches_tracked (PyTorch 0.3 era)."""
    torch.manual_seed(seed)
    source = small(num_classes=21)
    state = {
        prefix + key: value
        for key, value in source.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    torch.save(state, path)
    return source.state_dict()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def images(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(seed)) * 255


# --- Init files ---------------------------------------------------------------------------------


def test_scale_prefixed_init_loads_backbone_and_skips_the_21_class_head(tmp_path):
    source = released_init_file(tmp_path / "init.pth")
    model = small()
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("layer5.")}
    report = load_init_weights(model, tmp_path / "init.pth")
    state = model.state_dict()
    backbone = [k for k in source if not k.startswith("layer5.") and not k.endswith("tracked")]
    assert all(torch.equal(state[k], source[k]) for k in backbone)
    assert all(torch.equal(state[k], v) for k, v in head_before.items())
    assert report.loaded == len(backbone)
    assert len(report.skipped) == 8 and all(s.startswith("layer5.") for s in report.skipped)
    assert "21x" in report.skipped[0] and "19x" in report.skipped[0]
    assert report.untracked == 17  # BN layers of the small model
    assert "'Scale.'" in report.renaming
    assert "skipped 8" in report.summary()


def test_init_into_multi_level_model_skips_both_heads(tmp_path):
    released_init_file(tmp_path / "init.pth")
    model = small(multi_level=True)
    report = load_init_weights(model, tmp_path / "init.pth")
    # The file's layer5 sits on layer4 (4 x width x 8 channels); ours is the aux head on layer3.
    assert sum(s.startswith("layer5.") and "shape" in s for s in report.skipped) == 8
    assert sum(s.startswith("layer6.") and "not in the file" in s for s in report.skipped) == 8


def test_init_with_fitting_head_loads_it(tmp_path):
    source = released_init_file(tmp_path / "init.pth")
    model = small(num_classes=21)
    report = load_init_weights(model, tmp_path / "init.pth")
    assert not report.skipped
    assert torch.equal(model.layer5.conv2d_list[3].weight, source["layer5.conv2d_list.3.weight"])


def test_wrapped_and_module_prefixed_init(tmp_path):
    torch.manual_seed(1)
    student, teacher = small(), small()
    wrapped = {
        "model": {"module." + k: v for k, v in student.state_dict().items()},
        "ema_model": teacher.state_dict(),
        "iteration": 5,
        "config": {"pretrained": "coco"},
    }
    torch.save(wrapped, tmp_path / "dacs.pth")
    model = small()
    report = load_init_weights(model, tmp_path / "dacs.pth")
    assert report.renaming == "keys as they are" and not report.skipped
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in model.state_dict().items())


def test_torchvision_fc_is_skipped(tmp_path):
    state = {k: v for k, v in small().state_dict().items() if not k.startswith("layer5.")}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 128), torch.zeros(1000)
    torch.save(state, tmp_path / "resnet.pth")
    report = load_init_weights(small(), tmp_path / "resnet.pth")
    assert any(s.startswith("fc.weight") for s in report.skipped)


def test_backbone_problems_are_errors_naming_the_file_and_keys(tmp_path):
    state = small().state_dict()
    del state["layer2.0.conv2.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing\.pth.*layer2\.0\.conv2\.weight"):
        load_init_weights(small(), tmp_path / "missing.pth")
    state = small().state_dict()
    state["layer2.0.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "unexpected.pth")
    with pytest.raises(CheckpointError, match=r"not in the model: layer2\.0\.extra\.weight"):
        load_init_weights(small(), tmp_path / "unexpected.pth")
    torch.save(small(width=8).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match="shape mismatch: conv1.weight"):
        load_init_weights(small(), tmp_path / "wide.pth")
    torch.save({"a.b": torch.zeros(1)}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="none of its 1 keys fit"):
        load_init_weights(small(), tmp_path / "foreign.pth")


def test_safetensors_init(tmp_path):
    import safetensors.torch as safetensors_torch

    source = small()
    safetensors_torch.save_file(dict(source.state_dict()), str(tmp_path / "init.safetensors"))
    model = small()
    load_init_weights(model, tmp_path / "init.safetensors")
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_build_segmentor_loads_init_from_config(tmp_path):
    released_init_file(tmp_path / "init.pth")
    config = load_config(
        None,
        [
            "model.name=deeplabv2",
            "model.blocks=[1,1,1,1]",
            "model.width=4",
            "model.aspp_dilations=[1,2,3,4]",
            f"model.init={tmp_path / 'init.pth'}",
            f"model.init_sha256={sha256(tmp_path / 'init.pth')}",
        ],
    )
    model = build_segmentor(config.model, 19)
    assert model.load_report is not None and len(model.load_report.skipped) == 8
    assert build_segmentor(config.model, 19, load_weights=False).load_report is None


# --- Released checkpoints -------------------------------------------------------------------------


def test_released_multi_level_checkpoint_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(2)
    trained = small(multi_level=True, aspp_branches=2)
    with torch.no_grad():
        for module in trained.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.01, 0.01)
    state = {k: v for k, v in trained.state_dict().items() if not k.endswith("tracked")}
    torch.save(state, tmp_path / "GTA2Cityscapes_multi.pth")
    model = small(multi_level=True, aspp_branches=2)
    report = load_released_checkpoint(model, tmp_path / "GTA2Cityscapes_multi.pth")
    assert report.untracked == 17 and report.loaded == len(state)
    trained.eval(), model.eval()
    with torch.no_grad():
        expected, actual = trained(images()), model(images())
    assert torch.equal(expected["logits"], actual["logits"])
    assert torch.equal(expected["aux_logits"], actual["aux_logits"])


def test_released_checkpoint_hints(tmp_path):
    torch.save(small(multi_level=True).state_dict(), tmp_path / "multi.pth")
    with pytest.raises(CheckpointError, match=r"multi\.pth.*set model\.multi_level=true"):
        load_released_checkpoint(small(), tmp_path / "multi.pth")
    torch.save(small().state_dict(), tmp_path / "single.pth")
    with pytest.raises(CheckpointError, match="set model.multi_level=false"):
        load_released_checkpoint(small(multi_level=True), tmp_path / "single.pth")
    torch.save(small(num_classes=16).state_dict(), tmp_path / "synthia.pth")
    with pytest.raises(CheckpointError, match="predicts 16 classes.*synthia16"):
        load_released_checkpoint(small(), tmp_path / "synthia.pth")
    torch.save(small(blocks=(1, 1, 2, 1)).state_dict(), tmp_path / "deeper.pth")
    with pytest.raises(CheckpointError, match=r"model\.blocks=\[1, 1, 2, 1\]"):
        load_released_checkpoint(small(), tmp_path / "deeper.pth")
    released_init_file(tmp_path / "init.pth")
    with pytest.raises(CheckpointError, match="model.init"):
        load_released_checkpoint(small(), tmp_path / "init.pth")


def test_advent_single_level_head_layer6_loads_as_layer5(tmp_path):
    source = small()
    state = {
        (k.replace("layer5.", "layer6.", 1) if k.startswith("layer5.") else k): v
        for k, v in source.state_dict().items()
    }
    torch.save(state, tmp_path / "advent_single.pth")
    model = small()
    report = load_released_checkpoint(model, tmp_path / "advent_single.pth")
    assert "layer6" in report.renaming
    assert torch.equal(model.layer5.conv2d_list[0].weight, source.layer5.conv2d_list[0].weight)


def test_known_released_file_refuses_the_wrong_aspp_forward(tmp_path, monkeypatch):
    torch.save(small(multi_level=True).state_dict(), tmp_path / "adaptsegnet_multi.pth")
    entry = KnownWeights(
        name="adaptsegnet_multi.pth",
        urls=(),
        kind="released",
        description="test",
        key_format="bare",
        model_settings={"aspp_branches": 2},
    )
    monkeypatch.setattr(weights_module, "KNOWN_WEIGHTS", (entry,))
    with pytest.raises(CheckpointError, match="set model.aspp_branches=2"):
        load_released_checkpoint(small(multi_level=True), tmp_path / "adaptsegnet_multi.pth")
    load_released_checkpoint(
        small(multi_level=True, aspp_branches=2), tmp_path / "adaptsegnet_multi.pth"
    )


# --- Reading policy ----------------------------------------------------------------------------------


class Payload:
    """Anything that is not a tensor or plain container."""


def test_weights_only_refusal_is_a_checkpoint_error(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1), "extra": Payload()}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match=r"weights_only=True\) refused.*Payload"):
        read_checkpoint(tmp_path / "pickled.pth")
    (tmp_path / "garbage.pth").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_init_weights(small(), tmp_path / "garbage.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="no state_dict"):
        load_init_weights(small(), tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_init_weights(small(), tmp_path / "absent.pth")


# --- Checksums ----------------------------------------------------------------------------------------


def test_hash_prefix_from_name():
    assert hash_prefix_from_name("DeepLab_resnet_pretrained_init-f81d91e8.pth") == "f81d91e8"
    assert hash_prefix_from_name("cityscapes_oracle-b7b9934.pth") == "b7b9934"
    assert hash_prefix_from_name("/x/resnet101-5d3b4d8f.pth") == "5d3b4d8f"
    assert hash_prefix_from_name("DeepLab_resnet_pretrained_imagenet.pth") is None
    assert hash_prefix_from_name("resnet-50.pth") is None
    assert hash_prefix_from_name("model-final.pth") is None


def test_checksums_by_argument_and_by_name(tmp_path):
    released_init_file(tmp_path / "init.pth")
    digest = sha256(tmp_path / "init.pth")
    assert load_init_weights(small(), tmp_path / "init.pth", sha256=digest).sha256 == digest
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_init_weights(small(), tmp_path / "init.pth", sha256="0" * 64)
    named = tmp_path / f"DeepLab_resnet_pretrained_init-{digest[:8]}.pth"
    os.link(tmp_path / "init.pth", named)
    assert load_init_weights(small(), named).sha256 == digest
    assert load_init_weights(small(), tmp_path / "init.pth").sha256 is None  # nothing to check
    wrong = (
        tmp_path
        / f"DeepLab_resnet_pretrained_init-{'0' if digest[0] != '0' else '1'}{digest[1:8]}.pth"
    )
    os.link(tmp_path / "init.pth", wrong)
    with pytest.raises(CheckpointError, match="the name says it starts with"):
        load_init_weights(small(), wrong)


# --- Cache and downloads (network faked) ----------------------------------------------------------------


def test_cache_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("UDASEG_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache" / "weights"
    monkeypatch.delenv("UDASEG_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "udaseg" / "weights"
    url = "http://vllab.ucmerced.edu/ytsai/CVPR18/DeepLab_resnet_pretrained_init-f81d91e8.pth"
    assert (
        cache_path_for_url(url, tmp_path)
        == tmp_path / "DeepLab_resnet_pretrained_init-f81d91e8.pth"
    )
    # A known file's mirror URL caches under the known name.
    tllib = "https://cloud.tsinghua.edu.cn/f/2d9a7fc43ce34f76803a/?dl=1"
    assert cache_path_for_url(tllib, tmp_path).name == "tllib_deeplabv2_resnet101.pth"
    other = cache_path_for_url("https://example.org/f/abc/?dl=1", tmp_path)
    assert (
        other.parent == tmp_path and other.name.startswith("download-") and other.suffix == ".pth"
    )
    assert cache_path_for_url("https://example.org/a/b%20c.pth?x=1", tmp_path).name == "b c.pth"


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes, content_type: str = "application/octet-stream") -> None:
        super().__init__(data)
        self.headers = {"Content-Type": content_type}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_url_source_downloads_once_into_the_cache(tmp_path, monkeypatch):
    released_init_file(tmp_path / "init.pth")
    payload = (tmp_path / "init.pth").read_bytes()
    calls = []

    def fake_urlopen(request, timeout=None):
        calls.append(request.full_url)
        return FakeResponse(payload)

    monkeypatch.setattr(weights_module.urllib.request, "urlopen", fake_urlopen)
    cache = tmp_path / "cache"
    url = "https://example.org/weights/init.pth"
    model = small()
    load_init_weights(model, url, cache_dir=cache)
    load_init_weights(small(), url, cache_dir=cache)
    assert calls == [url]
    assert sorted(p.name for p in cache.iterdir()) == ["init.pth"]


def test_failed_downloads_leave_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(
        weights_module.urllib.request, "urlopen", lambda request, timeout=None: FakeResponse(b"abc")
    )
    destination = tmp_path / "cache" / "x.pth"
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        download("https://example.org/x.pth", destination, sha256="0" * 64)
    assert list(destination.parent.iterdir()) == []
    monkeypatch.setattr(
        weights_module.urllib.request,
        "urlopen",
        lambda request, timeout=None: FakeResponse(b"<html>", "text/html; charset=utf-8"),
    )
    with pytest.raises(CheckpointError, match="web page"):
        download("https://example.org/x.pth", destination)
    assert list(destination.parent.iterdir()) == []

    def refuse(request, timeout=None):
        raise weights_module.urllib.error.URLError("no network")

    monkeypatch.setattr(weights_module.urllib.request, "urlopen", refuse)
    with pytest.raises(CheckpointError, match="download it by hand from https://drive.google.com"):
        resolve_source("DeepLab_resnet_pretrained_init-f81d91e8.pth", cache_dir=tmp_path / "cache")
    assert list(destination.parent.iterdir()) == []


def test_torchvision_keyed_vgg16_init_loads_into_deeplab_vgg(tmp_path):
    from udaseg.models.vgg import DeepLabVGG

    model = DeepLabVGG(num_classes=19)
    state = model.state_dict()
    # torchvision numbering: conv5_1..5_3 at 24/26/28 (pool4 at 23), Linear fc layers 0/3/6.
    torchvision = {}
    for index in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28):
        ours = index if index < 23 else index - 1
        for name in ("weight", "bias"):
            torchvision[f"features.{index}.{name}"] = state[f"features.{ours}.{name}"] + 1.0
    for index, (rows, columns) in zip((0, 3, 6), ((8, 6), (8, 8), (1000, 8)), strict=True):
        torchvision[f"classifier.{index}.weight"] = torch.zeros(rows, columns)
        torchvision[f"classifier.{index}.bias"] = torch.zeros(rows)
    torch.save(torchvision, tmp_path / "vgg16_caffe.pth")
    fc6_before = model.features[29].weight.clone()
    report = load_init_weights(model, tmp_path / "vgg16_caffe.pth")
    assert torch.equal(model.features[23].weight, torchvision["features.24.weight"])
    assert torch.equal(model.features[27].bias, torchvision["features.28.bias"])
    assert torch.equal(model.features[0].weight, torchvision["features.0.weight"])
    assert torch.equal(model.features[29].weight, fc6_before)
    assert report.loaded == 26
    skipped = " ".join(report.skipped)
    assert "features.29.weight" in skipped and "features.31.bias" in skipped
    assert "classifier.conv2d_list.0.weight" in skipped
    assert any("24/26/28" in note for note in report.notes)


# --- ProDA's head ---------------------------------------------------------------------------------


def test_released_checkpoint_hints_for_the_proda_head(tmp_path):
    torch.save(small(head="proda").state_dict(), tmp_path / "proda.pkl")
    with pytest.raises(CheckpointError, match=r"proda\.pkl.*Classifier_Module2.*model\.head=proda"):
        load_released_checkpoint(small(), tmp_path / "proda.pkl")
    torch.save(small().state_dict(), tmp_path / "aspp.pth")
    with pytest.raises(CheckpointError, match="set model.head=aspp_sum"):
        load_released_checkpoint(small(head="proda"), tmp_path / "aspp.pth")
    torch.save(small(num_classes=16, head="proda").state_dict(), tmp_path / "proda16.pkl")
    with pytest.raises(CheckpointError, match="predicts 16 classes.*synthia16"):
        load_released_checkpoint(small(head="proda"), tmp_path / "proda16.pkl")
    state = small(head="proda").state_dict()
    state["bn_pretrain.weight"] = torch.ones(128)
    torch.save(state, tmp_path / "bn_clr.pkl")
    with pytest.raises(CheckpointError, match="bn_clr"):
        load_released_checkpoint(small(head="proda"), tmp_path / "bn_clr.pkl")


def test_model_facts_record_the_head():
    config = {
        "model": {"name": "deeplabv2", "head": "proda", "multi_level": False},
        "data": {"label_space": "cityscapes19"},
    }
    facts = checkpoint_module._model_facts(config)
    assert facts["head"] == "proda" and facts["label_space"] == "cityscapes19"


# --- One reader, one strict load ------------------------------------------------------------------


def test_training_checkpoints_and_weights_share_one_reader(tmp_path):
    import safetensors.torch as safetensors_torch

    # The same refusal, word for word, from both entry points.
    torch.save({"format": "udaseg-checkpoint", "extra": Payload()}, tmp_path / "pickled.pt")
    messages = []
    for reader in (read_checkpoint, checkpoint_module.load_file):
        with pytest.raises(CheckpointError) as error:
            reader(tmp_path / "pickled.pt")
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    assert "refuses to unpickle" in messages[0] and "Payload" in messages[0]
    with pytest.raises(CheckpointError, match=r"absent\.pt: checkpoint not found"):
        checkpoint_module.load_file(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match=r"absent\.pt: checkpoint not found"):
        read_checkpoint(tmp_path / "absent.pt")
    # safetensors is read by both (a udaseg checkpoint is never one, so read_checkpoint of the
    # engine then refuses it as "not a udaseg checkpoint").
    tensors = {"conv1.weight": torch.arange(6.0).view(2, 3)}
    safetensors_torch.save_file(tensors, str(tmp_path / "weights.safetensors"))
    assert torch.equal(
        checkpoint_module.load_file(tmp_path / "weights.safetensors")["conv1.weight"],
        tensors["conv1.weight"],
    )
    with pytest.raises(CheckpointError, match="not a udaseg checkpoint"):
        checkpoint_module.read_checkpoint(tmp_path / "weights.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="broken.safetensors: not a readable safetensors"):
        checkpoint_module.load_file(tmp_path / "broken.safetensors")


def test_strict_load_reports_missing_unexpected_and_mismatched_in_one_line():
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    state = {k: torch.full_like(v, 2) for k, v in module.state_dict().items()}
    del state["0.bias"]
    state["0.weight"] = torch.zeros(5, 3, 1, 1)
    state["2.weight"] = torch.zeros(4)
    asked = []
    with pytest.raises(CheckpointError) as error:
        load_state_dict_strictly(
            module, state, "model.pth", hints=lambda: asked.append(1) or ["set x=1"]
        )
    message = str(error.value)
    assert "\n" not in message and asked == [1]
    assert message == (
        "model.pth: does not fit the model (missing 0.bias; unexpected 2.weight; shape "
        "mismatch 0.weight (5x3x1x1 in the file, 4x3x1x1 here)): set x=1"
    )
    # Nothing was loaded.
    assert all(torch.equal(module.state_dict()[k], v) for k, v in before.items())


def test_strict_load_tolerates_only_untracked_batch_norm_counters_when_asked():
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    state = {k: torch.full_like(v, 2) for k, v in module.state_dict().items()}
    del state["1.num_batches_tracked"]
    with pytest.raises(CheckpointError, match=r"missing 1\.num_batches_tracked"):
        load_state_dict_strictly(module, state, "old.pth")
    asked = []
    differences = load_state_dict_strictly(
        module, state, "old.pth", tolerate_untracked=True, hints=lambda: asked.append(1) or []
    )
    assert differences.fits and differences.untracked == 1 and asked == []
    assert torch.all(module[1].running_mean == 2) and torch.all(module[0].weight == 2)
    assert module[1].num_batches_tracked.item() == 0


def test_the_three_strict_loaders_report_alike(tmp_path):
    # "<file>: does not fit <target> (shape mismatch <key> (<shape> in the file, <shape> here)"
    pattern = r"^\S+: does not fit .+? \(shape mismatch \S+ \(\S+ in the file, \S+ here\)"
    torch.save(small(width=8).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match=pattern):
        load_released_checkpoint(small(), tmp_path / "wide.pth")
    torch.save(FCDiscriminator(5, base_channels=4).state_dict(), tmp_path / "d.pth")
    with pytest.raises(CheckpointError, match=pattern) as error:
        load_discriminator_weights(FCDiscriminator(6, base_channels=4), tmp_path / "d.pth")
    assert "FCDiscriminator(in_channels=6)" in str(error.value)
    payload = {"modules": {"segmentor": small(width=8).state_dict()}}
    with pytest.raises(CheckpointError, match=pattern) as error:
        checkpoint_module.load_module_states(payload, {"segmentor": small()}, "last.pt")
    assert "the module 'segmentor'" in str(error.value)
