"""`udaseg retrieve --checkpoint CKPT --query DIR --gallery DIR [--gallery DIR2] --out DIR`

Embeds every image with the model's decoder features averaged over the image (L2-normalised),
finds each query's k nearest gallery images by cosine similarity and writes
`<out>/retrieval.json` (every query's neighbours with their domain and similarity, and the
summary) and `<out>/contact_sheet.png` (one row per query: the query, then its neighbours,
framed in their domain's colour). Each --gallery folder is one domain (`--gallery NAME=DIR`
names it; else it is named after the folder).
With two domains in the gallery it reports the cross-domain neighbour rate: the fraction of a
query's k neighbours that come from the other domain, next to the rate random neighbours would
give. Run it on a source-only and on an adapted checkpoint to compare alignment. A query found
in a gallery folder belongs to that domain (else --query-domain names it) and never retrieves
its own file. See docs/retrieval.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="a udaseg checkpoint")
    parser.add_argument("--config", help="config naming the model (with --weights)")
    parser.add_argument("--weights", help="released weights in the original key layout")
    parser.add_argument("--query", required=True, help="folder (or .txt list) of query images")
    parser.add_argument(
        "--gallery",
        required=True,
        action="append",
        metavar="[NAME=]DIR",
        help="folder of gallery images, one per domain (repeat for several domains); the domain "
        "is named NAME, else after the folder",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("-k", type=int, default=5, help="neighbours per query (default 5)")
    parser.add_argument(
        "--query-domain",
        help="the queries' domain (a gallery folder's name) when they are not "
        "inside a gallery folder",
    )
    parser.add_argument(
        "--size", help="network input size HxW (default: the config's eval.input_size)"
    )
    parser.add_argument(
        "--rows", type=int, default=12, help="queries shown in the contact sheet (default 12)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward")
    parser.add_argument(
        "--backend",
        choices=["auto", "torch", "faiss"],
        default="auto",
        help="nearest-neighbour search (auto: faiss for large galleries when installed)",
    )
    parser.add_argument(
        "--center",
        action="store_true",
        help="subtract the gallery's mean embedding before the cosine (pooled ReLU features "
        "share a large common part, which makes every raw similarity close to 1)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace earlier outputs")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="key=value")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from udaseg.commands.predict import _parse_size, collect_images
    from udaseg.data.io import read_image
    from udaseg.engine.distributed import init_distributed
    from udaseg.engine.loading import load_for_inference
    from udaseg.errors import ConfigError, DataError
    from udaseg.evaluation.inference import resize_images
    from udaseg.files import atomic_write, check_output_file, check_output_folder
    from udaseg.retrieval import (
        contact_sheet,
        domain_of,
        domain_statistics,
        embed_images,
        nearest_neighbours,
        png_bytes,
    )

    for option, value in (("-k", args.k), ("--rows", args.rows), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ConfigError(f"{option} must be at least 1, got {value}")
    size = _parse_size(args.size)
    out = check_output_folder(args.out, "--out")
    json_path = check_output_file(out / "retrieval.json", "--out", args.overwrite)
    sheet_path = check_output_file(out / "contact_sheet.png", "--out", args.overwrite)

    names, roots = _galleries(args.gallery)
    gallery = [
        (path, index) for index, root in enumerate(roots) for path, _ in collect_images([str(root)])
    ]
    queries = [path for path, _ in collect_images([args.query])]
    query_domains = [domain_of(path, roots) for path in queries]
    if args.query_domain is not None:
        if args.query_domain not in names:
            raise ConfigError(
                f"--query-domain {args.query_domain!r}: not a gallery name ({', '.join(names)})"
            )
        query_domains = [
            domain if domain >= 0 else names.index(args.query_domain) for domain in query_domains
        ]

    context = init_distributed(args.device)
    loaded = load_for_inference(
        args.checkpoint, args.config, args.weights, args.overrides, context.device
    )
    segmentor = loaded.method.segmentor
    input_size = size or loaded.config.eval.input_size
    resize = loaded.config.eval.resize

    def load(path: Path) -> torch.Tensor:
        try:
            pixels = read_image(path)
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: cannot read this image ({error})") from None
        image = torch.from_numpy(pixels).permute(2, 0, 1)[None]
        target = input_size or tuple(image.shape[-2:])
        return resize_images(image, target, resize)[0]

    seen_sizes: list = []

    def embed(paths: list[Path]) -> torch.Tensor:
        vectors = []
        for start in range(0, len(paths), args.batch_size):
            images = [load(path) for path in paths[start : start + args.batch_size]]
            sizes = {tuple(image.shape[-2:]) for image in images} | set(seen_sizes)
            if len(sizes) > 1:
                raise DataError(
                    f"images of different sizes {sorted(sizes)}: give --size HxW (the config "
                    "has no eval.input_size)"
                )
            seen_sizes[:] = list(sizes)
            vectors.append(
                embed_images(
                    lambda batch: segmentor(batch.to(context.device))["features"],
                    images,
                    args.batch_size,
                )
            )
        return torch.cat(vectors)

    gallery_vectors = embed([path for path, _ in gallery])
    query_vectors = embed(queries)
    if args.center:
        mean = gallery_vectors.mean(0)
        gallery_vectors = torch.nn.functional.normalize(gallery_vectors - mean, dim=1)
        query_vectors = torch.nn.functional.normalize(query_vectors - mean, dim=1)
    resolved_gallery = [path.resolve() for path, _ in gallery]
    excluded = torch.tensor(
        [[query.resolve() == other for other in resolved_gallery] for query in queries]
    )
    neighbours = nearest_neighbours(
        query_vectors, gallery_vectors, args.k, excluded, backend=args.backend
    )
    gallery_domains = torch.tensor([domain for _, domain in gallery])
    neighbour_domains = gallery_domains[neighbours.indices]
    summary = domain_statistics(
        neighbour_domains,
        torch.tensor(query_domains),
        gallery_domains,
        names,
        excluded.sum(1),
    )
    summary.update(
        {
            "k": args.k,
            "queries": len(queries),
            "gallery": {name: int((gallery_domains == i).sum()) for i, name in enumerate(names)},
            "checkpoint": loaded.description,
            "embedding": "decoder features averaged over the image, L2-normalised; cosine",
            "centered": args.center,
            "input_size": list(seen_sizes[0]),
        }
    )
    records = [
        {
            "query": str(query),
            "domain": names[domain] if domain >= 0 else None,
            "neighbours": [
                {
                    "path": str(gallery[index][0]),
                    "domain": names[gallery[index][1]],
                    "similarity": round(float(similarity), 6),
                }
                for index, similarity in zip(
                    neighbours.indices[row].tolist(), neighbours.similarities[row], strict=True
                )
            ],
        }
        for row, (query, domain) in enumerate(zip(queries, query_domains, strict=True))
    ]
    payload = {"summary": summary, "queries": records}
    atomic_write(json_path, lambda stream: stream.write(json.dumps(payload, indent=2).encode()))

    # The sheet shows queries spread over the whole list (both domains when both are queried).
    shown = np.unique(np.linspace(0, len(queries) - 1, min(args.rows, len(queries))).round())
    rows = []
    for row in shown.astype(int).tolist():
        neighbours_shown = [
            (read_image(gallery[index][0]), gallery[index][1], float(similarity))
            for index, similarity in zip(
                neighbours.indices[row].tolist(), neighbours.similarities[row], strict=True
            )
        ]
        rows.append((read_image(queries[row]), query_domains[row], neighbours_shown))
    sheet = contact_sheet(rows, domain_names=names)
    atomic_write(sheet_path, lambda stream: stream.write(png_bytes(sheet)))

    fractions = ", ".join(
        f"{name} {fraction:.3f}" for name, fraction in summary["neighbour_domain_fractions"].items()
    )
    print(f"{len(queries)} queries, k={args.k}; neighbours by domain: {fractions}")
    if summary["cross_domain_rate"] is not None:
        print(
            f"cross-domain neighbour rate {summary['cross_domain_rate']:.3f} "
            f"(random neighbours: {summary['chance_rate']:.3f})"
        )
    print(f"wrote {json_path} and {sheet_path}")
    return 0


def _galleries(entries: list[str]) -> tuple[list[str], list[Path]]:
    """(domain names, folders) of the --gallery entries `[NAME=]DIR`.

    An entry is NAME=DIR when the part before the first "=" names no folder (it has no path
    separator); unnamed folders are named after themselves, a repeated name gets #2, #3, ...
    """
    from udaseg.errors import DataError

    names: list[str] = []
    roots: list[Path] = []
    for entry in entries:
        name, separator, rest = entry.partition("=")
        if separator and name and "/" not in name and "\\" not in name:
            root = Path(rest)
        else:
            name, root = "", Path(entry)
        if not root.is_dir():
            raise DataError(f"--gallery {entry}: {root} is not a folder")
        name = name or root.resolve().name or str(root)
        candidate, number = name, 2
        while candidate in names:
            candidate, number = f"{name}#{number}", number + 1
        names.append(candidate)
        roots.append(root)
    return names, roots
