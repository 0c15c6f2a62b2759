"""Cross-domain retrieval: how aligned are a segmentor's features across domains?

The project talk of ../shared/papers/003 queries source images against target ones (and the
reverse) with a model's features and looks at whether the neighbours cross the domain gap. Here:
- `embed_images`: each image's decoder features [F, h, w] (what the classifier reads), averaged
  over the grid and L2-normalised: one [F] vector per image;
- `nearest_neighbours`: cosine similarity, top k (torch, in query chunks; faiss's exact inner-
  product index when faiss is installed and the gallery is large);
- `domain_statistics`: with several galleries (domains), the fraction of each query's k
  neighbours that come from a domain other than its own, against the fraction that random
  neighbours would give (the gallery's share of other-domain images): a number for alignment;
- `contact_sheet`: one row per query, the query then its neighbours, framed in their domain's
  colour: the picture.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from udaseg.errors import ConfigError

# Above this many gallery images, "auto" uses faiss when it is installed.
FAISS_MIN_GALLERY = 50_000
# Frame colours of the domains in a contact sheet (RGB), in gallery order; the query's frame is
# its domain's colour too.
DOMAIN_COLOURS = [(230, 97, 1), (94, 60, 153), (27, 158, 119), (217, 95, 2), (117, 112, 179)]


@dataclass
class Neighbours:
    indices: torch.Tensor  # int64 [Q, k] gallery indices, best first
    similarities: torch.Tensor  # float [Q, k] cosine similarities


@torch.no_grad()
def embed_images(
    features_of: Callable[[torch.Tensor], torch.Tensor],
    images: Sequence[torch.Tensor],
    batch_size: int = 8,
) -> torch.Tensor:
    """Pooled, L2-normalised feature vectors of images.

    Args:
        features_of: float [B, 3, H, W] RGB 0..255 -> feature maps [B, F, h, w] (a segmentor's
            "features").
        images: float [3, H, W] tensors of one size (the caller resizes them).
        batch_size: images per forward.
    Returns:
        float32 [N, F], unit rows.
    """
    vectors = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack(list(images[start : start + batch_size]))
        features = features_of(batch).float()
        vectors.append(F.normalize(features.mean(dim=(2, 3)), dim=1).cpu())
    return torch.cat(vectors)


def nearest_neighbours(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    excluded: torch.Tensor | None = None,
    backend: str = "auto",
    chunk: int = 1024,
) -> Neighbours:
    """The k most similar gallery vectors of each query (cosine: the rows are unit vectors).

    Args:
        queries: [Q, F] unit rows; gallery: [G, F] unit rows.
        k: neighbours per query (at most G, less the excluded ones).
        excluded: bool [Q, G], pairs that may not be neighbours (a query's own file).
        backend: "torch", "faiss" (exact inner-product index), or "auto" (faiss for galleries
            of FAISS_MIN_GALLERY images or more when it is installed, else torch).
    Returns:
        Neighbours with [Q, k] indices and similarities, best first (ties: lower index first).
    """
    if backend not in ("auto", "torch", "faiss"):
        raise ConfigError(f"--backend must be auto, torch or faiss, got {backend!r}")
    available = gallery.shape[0] - (int(excluded.sum(1).max()) if excluded is not None else 0)
    if not 1 <= k <= available:
        raise ConfigError(f"-k {k}: must be between 1 and {available} (the gallery's size)")
    faiss = None
    if backend != "torch":
        try:
            import faiss  # optional: pip install faiss-cpu
        except ImportError:
            if backend == "faiss":
                raise ConfigError(
                    "--backend faiss: faiss is not installed (pip install faiss-cpu)"
                ) from None
    if faiss is not None and (backend == "faiss" or gallery.shape[0] >= FAISS_MIN_GALLERY):
        index = faiss.IndexFlatIP(gallery.shape[1])
        index.add(gallery.numpy().astype(np.float32))
        extra = int(excluded.sum(1).max()) if excluded is not None else 0
        similarities, indices = index.search(queries.numpy().astype(np.float32), k + extra)
        similarities, indices = torch.from_numpy(similarities), torch.from_numpy(indices).long()
        if excluded is not None:
            blocked = torch.gather(excluded, 1, indices)
            similarities = similarities.masked_fill(blocked, float("-inf"))
        order = torch.sort(similarities, dim=1, descending=True, stable=True).indices[:, :k]
        return Neighbours(torch.gather(indices, 1, order), torch.gather(similarities, 1, order))
    all_indices, all_similarities = [], []
    for start in range(0, queries.shape[0], chunk):
        similarities = queries[start : start + chunk] @ gallery.t()  # [q, G]
        if excluded is not None:
            similarities = similarities.masked_fill(excluded[start : start + chunk], float("-inf"))
        # A stable descending sort: equal similarities keep gallery order, so results do not
        # depend on the backend's tie breaking.
        order = torch.sort(similarities, dim=1, descending=True, stable=True).indices[:, :k]
        all_indices.append(order)
        all_similarities.append(torch.gather(similarities, 1, order))
    return Neighbours(torch.cat(all_indices), torch.cat(all_similarities))


def domain_statistics(
    neighbour_domains: torch.Tensor,
    query_domains: torch.Tensor,
    gallery_domains: torch.Tensor,
    domain_names: Sequence[str],
    excluded_counts: torch.Tensor | None = None,
) -> dict:
    """How often neighbours cross domains, and how often random neighbours would.

    Args:
        neighbour_domains: int64 [Q, k] domain index of each neighbour.
        query_domains: int64 [Q], each query's domain (-1: unknown).
        gallery_domains: int64 [G] domain index of each gallery image.
        domain_names: names of the domain indices.
        excluded_counts: int64 [Q] gallery images excluded per query (its own file), left out
            of the chance rate.
    Returns:
        {"neighbour_domain_fractions": {name: fraction of all neighbours},
         "cross_domain_rate": mean fraction of neighbours from another domain than the query's
         (queries of known domain; None if none), "chance_rate": the same for neighbours drawn
         at random from the gallery, "per_query_domain": {name: {"queries", "cross_domain_rate",
         "chance_rate"}}}.
    """
    total = neighbour_domains.numel()
    fractions = {
        name: float((neighbour_domains == index).sum()) / total
        for index, name in enumerate(domain_names)
    }
    known = query_domains >= 0
    result: dict = {
        "neighbour_domain_fractions": fractions,
        "cross_domain_rate": None,
        "chance_rate": None,
        "per_query_domain": {},
    }
    if not bool(known.any()):
        return result
    crossing = (neighbour_domains != query_domains[:, None]).float().mean(1)  # [Q]
    gallery_size = torch.full_like(query_domains, gallery_domains.numel())
    if excluded_counts is not None:
        gallery_size = gallery_size - excluded_counts
    same_domain = (gallery_domains[None, :] == query_domains[:, None]).sum(1)
    if excluded_counts is not None:
        same_domain = same_domain - excluded_counts  # the excluded image is the query's own
    chance = (gallery_size - same_domain).float() / gallery_size.float()
    result["cross_domain_rate"] = float(crossing[known].mean())
    result["chance_rate"] = float(chance[known].mean())
    for index, name in enumerate(domain_names):
        members = query_domains == index
        if bool(members.any()):
            result["per_query_domain"][name] = {
                "queries": int(members.sum()),
                "cross_domain_rate": float(crossing[members].mean()),
                "chance_rate": float(chance[members].mean()),
            }
    return result


def contact_sheet(
    rows: Sequence[tuple[np.ndarray, int, Sequence[tuple[np.ndarray, int, float]]]],
    thumbnail_size: tuple[int, int] = (96, 192),
    border: int = 4,
    domain_names: Sequence[str] = (),
) -> np.ndarray:
    """One row per query: the query, a gap, then its neighbours, each framed in its domain colour.

    Args:
        rows: (query uint8 [H, W, 3], query domain (-1: unknown, grey frame), neighbours as
            (image uint8 [H, W, 3], domain, similarity)).
        thumbnail_size: (height, width) of each thumbnail.
        border: frame width in pixels.
        domain_names: names of the domain indices, written in their colours in a header line
            (no header when empty).
    Returns:
        uint8 [header + rows x cell height, cell width x (1 + neighbours) + gap, 3], the gap being
        a quarter cell between the query and its neighbours; the similarity is written under
        each neighbour.
    """
    height, width = thumbnail_size
    text_height = 14
    cell_height, cell_width = height + 2 * border + text_height, width + 2 * border
    gap = cell_width // 4
    header = text_height if domain_names else 0
    columns = 1 + max(len(neighbours) for _, _, neighbours in rows)
    sheet = Image.new(
        "RGB", (columns * cell_width + gap, header + len(rows) * cell_height), (255, 255, 255)
    )
    draw = ImageDraw.Draw(sheet)
    left = 0
    for domain, name in enumerate(domain_names):
        draw.text((left + border, 0), name, fill=DOMAIN_COLOURS[domain % len(DOMAIN_COLOURS)])
        left += cell_width

    def place(image: np.ndarray, domain: int, row: int, column: int, caption: str) -> None:
        colour = DOMAIN_COLOURS[domain % len(DOMAIN_COLOURS)] if domain >= 0 else (128, 128, 128)
        left = column * cell_width + (gap if column else 0)
        top = header + row * cell_height
        draw.rectangle([left, top, left + cell_width - 1, top + height + 2 * border - 1], colour)
        thumbnail = Image.fromarray(image).resize((width, height), Image.BILINEAR)
        sheet.paste(thumbnail, (left + border, top + border))
        draw.text((left + border, top + height + 2 * border), caption, fill=(0, 0, 0))

    for row, (query, query_domain, neighbours) in enumerate(rows):
        place(query, query_domain, row, 0, "query")
        for rank, (image, domain, similarity) in enumerate(neighbours):
            place(image, domain, row, 1 + rank, f"{rank + 1}: {similarity:.4f}")
    return np.asarray(sheet)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def domain_of(path: Path, roots: Sequence[Path]) -> int:
    """Index of the first root that is `path` or a folder above it; -1 if none."""
    resolved = path.resolve()
    for index, root in enumerate(roots):
        root = root.resolve()
        if resolved == root or root in resolved.parents:
            return index
    return -1
