"""Cross-domain retrieval: ranks on hand-made embeddings, domain rates, the command end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine_helpers import TINY_MODEL, tiny_config, write_tiny_benchmark
from udaseg.cli import main
from udaseg.config import config_from_dict, from_dict
from udaseg.data.label_spaces import CITYSCAPES19
from udaseg.engine.trainer import train
from udaseg.errors import ConfigError
from udaseg.models import build_segmentor
from udaseg.models.deeplabv2 import DeepLabV2Config
from udaseg.retrieval import (
    contact_sheet,
    domain_of,
    domain_statistics,
    embed_images,
    nearest_neighbours,
)

NUM_CLASSES = CITYSCAPES19.num_classes


def unit(*rows: tuple[float, ...]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_neighbours_rank_by_cosine_on_hand_made_embeddings() -> None:
    gallery = unit((1, 0), (0, 1), (1, 1), (-1, 0))
    queries = unit((1, 0.1), (0, 1))
    result = nearest_neighbours(queries, gallery, k=3, backend="torch")
    # Query (1, 0.1): cos with (1,0) 0.995, (1,1)/sqrt2 0.774, (0,1) 0.0995, (-1,0) -0.995.
    assert result.indices.tolist()[0] == [0, 2, 1]
    assert result.similarities[0, 0] == pytest.approx(1 / np.sqrt(1.01), abs=1e-6)
    # Query (0, 1): itself (1.0), then (1,1) 0.707, then a tie at 0 between (1,0) and (-1,0):
    # the lower gallery index first.
    assert result.indices.tolist()[1] == [1, 2, 0]
    excluded = torch.tensor([[False] * 4, [False, True, False, False]])
    without_self = nearest_neighbours(queries, gallery, k=2, excluded=excluded, backend="torch")
    assert without_self.indices.tolist()[1] == [2, 0]
    with pytest.raises(ConfigError, match="-k 4"):
        nearest_neighbours(queries, gallery, k=4, excluded=excluded)


def test_faiss_backend_without_faiss_is_a_config_error() -> None:
    try:
        import faiss  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="faiss"):
            nearest_neighbours(unit((1, 0)), unit((1, 0), (0, 1)), k=1, backend="faiss")
    else:
        result = nearest_neighbours(unit((1, 0)), unit((0, 1), (1, 0)), k=1, backend="faiss")
        assert result.indices.tolist() == [[1]]


def test_domain_statistics_by_hand() -> None:
    # Gallery: 3 images of domain 0 (source), 2 of domain 1 (target).
    gallery_domains = torch.tensor([0, 0, 0, 1, 1])
    neighbour_domains = torch.tensor([[0, 1], [1, 1], [0, 0]])  # k = 2
    query_domains = torch.tensor([0, 1, -1])  # the last query's domain is unknown
    excluded_counts = torch.tensor([1, 0, 0])  # query 0 is a source gallery image itself
    stats = domain_statistics(
        neighbour_domains, query_domains, gallery_domains, ["source", "target"], excluded_counts
    )
    assert stats["neighbour_domain_fractions"] == {"source": 0.5, "target": 0.5}
    # Query 0 (source): 1 of 2 neighbours cross; query 1 (target): none cross.
    assert stats["cross_domain_rate"] == pytest.approx((0.5 + 0.0) / 2)
    # Random neighbours: query 0 draws from 4 images (itself left out), 2 of them target;
    # query 1 from 5 images, 3 of them source.
    assert stats["chance_rate"] == pytest.approx((2 / 4 + 3 / 5) / 2)
    assert stats["per_query_domain"]["target"] == {
        "queries": 1,
        "cross_domain_rate": 0.0,
        "chance_rate": pytest.approx(0.6),
    }


def test_embeddings_are_pooled_and_unit_length() -> None:
    def features_of(images: torch.Tensor) -> torch.Tensor:
        # Channel 0: the image's mean red value; channel 1: constant 1 (a [B, 2, 2, 2] map).
        red = images[:, 0].mean(dim=(1, 2))
        return torch.stack([red, torch.ones_like(red)], 1)[:, :, None, None].expand(-1, -1, 2, 2)

    images = [torch.full((3, 4, 4), 0.0), torch.full((3, 4, 4), 1.0)]
    vectors = embed_images(features_of, images, batch_size=1)
    assert torch.allclose(vectors, unit((0, 1), (1, 1)))


def test_contact_sheet_layout_and_domain_of(tmp_path: Path) -> None:
    image = np.zeros((8, 16, 3), dtype=np.uint8)
    sheet = contact_sheet(
        [(image, 0, [(image, 1, 0.9), (image, 0, 0.5)]), (image, -1, [(image, 1, 0.1)])],
        thumbnail_size=(10, 20),
        border=2,
    )
    # 2 rows of (10 + 4 + 14) px; 3 columns (query, 2 neighbours) of 24 px and a 6 px gap.
    assert sheet.shape == (56, 78, 3)
    assert tuple(sheet[0, 0]) == (230, 97, 1)  # the query's frame: domain 0's colour
    assert tuple(sheet[0, 30]) == (94, 60, 153)  # first neighbour: domain 1's colour
    assert (sheet[:14, 24:30] == 255).all()  # the gap (beside the frames)
    with_header = contact_sheet([(image, 0, [(image, 1, 0.9)])], (10, 20), 2, ["a", "b"])
    assert with_header.shape[0] == 14 + 28
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert domain_of(tmp_path / "a" / "b" / "x.png", [tmp_path / "c", tmp_path / "a"]) == 1
    assert domain_of(tmp_path / "x.png", [tmp_path / "a"]) == -1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-step checkpoint; its network is the randomly initialised one (lr 0, BatchNorm
    statistics reset): that one's pooled features differ between images, while any trained
    step of the tiny network at this size collapses them to one vector."""
    root = write_tiny_benchmark(tmp_path_factory.mktemp("tiny"))
    run = tmp_path_factory.mktemp("run")
    raw = tiny_config(root, run, method={"name": "source_only"})
    raw["train"]["steps"] = 1
    raw["eval"] = {"max_images": 1, "input_size": [32, 64]}
    train(config_from_dict(raw))
    path = run / "checkpoints" / "last.pt"
    payload = torch.load(path, weights_only=False)
    torch.manual_seed(0)
    fresh = build_segmentor(from_dict(DeepLabV2Config, TINY_MODEL), NUM_CLASSES)
    payload["modules"]["segmentor"] = fresh.state_dict()
    torch.save(payload, path)
    return path


def _write_images(folder: Path, seeds: list[int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        # Two flat colours split at a seed-dependent column: pooled features of noise images
        # are all alike for an untrained network, these are not.
        colours = np.random.default_rng(seed).integers(0, 256, (2, 3), dtype=np.uint8)
        pixels = np.empty((32, 64, 3), dtype=np.uint8)
        split = 8 * seed % 64
        pixels[:, :split], pixels[:, split:] = colours[0], colours[1]
        path = folder / f"image_{seed}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def test_retrieve_command_writes_json_and_sheet(checkpoint: Path, tmp_path: Path) -> None:
    source = _write_images(tmp_path / "source", [1, 2, 3])
    _write_images(tmp_path / "target", [4, 5, 6])
    (tmp_path / "queries").mkdir()
    shutil.copy(source[1], tmp_path / "queries" / "copy.png")  # identical pixels, another file
    galleries = ["--gallery", f"gta={tmp_path / 'source'}", "--gallery", str(tmp_path / "target")]
    common = ["--checkpoint", str(checkpoint), *galleries, "-k", "3", "--device", "cpu"]
    common += ["--out", str(tmp_path / "out")]
    arguments = ["retrieve", *common, "--query", str(tmp_path / "queries")]
    arguments += ["--query-domain", "target"]
    assert main(arguments) == 0
    payload = json.loads((tmp_path / "out" / "retrieval.json").read_text())
    first = payload["queries"][0]["neighbours"][0]
    assert first["path"] == str(source[1]) and first["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert payload["queries"][0]["domain"] == "target" and first["domain"] == "gta"
    summary = payload["summary"]
    assert summary["gallery"] == {"gta": 3, "target": 3} and summary["k"] == 3
    assert 0.0 <= summary["cross_domain_rate"] <= 1.0 and summary["chance_rate"] == 0.5
    assert Image.open(tmp_path / "out" / "contact_sheet.png").size[1] > 0
    # Outputs are not replaced without --overwrite; the queries of a gallery folder belong to it
    # and never retrieve their own files; --center keeps the identical image first.
    assert main(arguments) == 2
    within = ["retrieve", *common, "--query", str(tmp_path / "source"), "--overwrite"]
    assert main(within) == 0
    payload = json.loads((tmp_path / "out" / "retrieval.json").read_text())
    for record in payload["queries"]:
        assert record["domain"] == "gta"
        assert record["query"] not in [n["path"] for n in record["neighbours"]]
    assert payload["summary"]["chance_rate"] == pytest.approx(3 / 5)
    assert main([*arguments, "--overwrite", "--center"]) == 0
    payload = json.loads((tmp_path / "out" / "retrieval.json").read_text())
    assert payload["summary"]["centered"] and payload["queries"][0]["neighbours"][0]["path"] == str(
        source[1]
    )


def test_retrieve_bad_inputs_are_one_line_errors(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _write_images(tmp_path / "source", [1, 2])
    base = ["retrieve", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]
    cases = {
        "not a folder": ["--query", str(tmp_path / "source"), "--gallery", str(tmp_path / "no")],
        "-k 5": [
            "--query",
            str(tmp_path / "source"),
            "--gallery",
            str(tmp_path / "source"),
            "-k",
            "5",
        ],
        "--query-domain": [
            *("--query", str(tmp_path / "source"), "--gallery", str(tmp_path / "source")),
            *("--query-domain", "elsewhere"),
        ],
        "no such image": ["--query", str(tmp_path / "none"), "--gallery", str(tmp_path / "source")],
    }
    for message, extra in cases.items():
        assert main([*base, *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1, error
