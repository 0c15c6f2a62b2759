"""Turn a drawn scene (a part map and its part table) into an image and a label map.

Everything here is vectorised numpy over the render-resolution part map (twice the output size
in each direction): per-part colours are computed once and gathered by part id, texture
coordinates come from the part's plane (so ground and facade textures recede in perspective),
window grids and fence slats are computed per pixel from the same plane coordinates. The image
is then box-filtered to the output size (anti-aliasing) and the label map is subsampled with
nearest neighbour, so no label value is ever a blend of two classes.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image

from udaseg.data.toy.canvas import (
    FACE_BOTTOM,
    FACE_EMISSIVE,
    FACE_FRONT,
    FACE_GROUND,
    FACE_NEGATIVE_X,
    FACE_POSITIVE_X,
    FACE_TOP,
    MAP_GROUND,
    MAP_SIDE,
    PATTERN_SLATS,
    PATTERN_WINDOWS,
    SKY,
    Camera,
    Canvas,
)
from udaseg.data.toy.lighting import (
    apply_cast_shadows,
    apply_specular_road,
    apply_wet_road,
    cast_shadow_mask,
    chromatic_aberration,
)
from udaseg.data.toy.styles import (
    MATERIAL,
    TEXTURE_SIZE,
    DomainStyle,
    material_tables,
    texture_bank,
)


@lru_cache(maxsize=4)
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (u [1, W], v [H, 1]) as float32."""
    u = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
    v = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    return u, v


def _palette_colours(
    tables, material: np.ndarray, tone: np.ndarray, palette_shift: float
) -> np.ndarray:
    """Base colours [P, 3] float32 of parts: the palette entry `tone[:, 0]` picks, blended
    between the source and target palettes."""
    source_index = np.minimum(
        (tone[:, 0] * tables.source_count[material]).astype(np.int64),
        tables.source_count[material] - 1,
    )
    target_index = np.minimum(
        (tone[:, 0] * tables.target_count[material]).astype(np.int64),
        tables.target_count[material] - 1,
    )
    source = tables.source_colours[material, source_index]
    target = tables.target_colours[material, target_index]
    return (1.0 - palette_shift) * source + palette_shift * target


def _face_shading(style: DomainStyle, rng: np.random.Generator) -> np.ndarray:
    """Shading factor per face kind [7]: a sun from a random side for this image; overcast
    styles (low contrast) light all faces almost alike."""
    contrast = style.shading_contrast
    sun = rng.uniform(0.0, 1.0)  # 0: the sun lights +X faces, 1: -X faces
    shading = np.ones(7, dtype=np.float32)
    shading[FACE_FRONT] = 1.0 - 0.08 * contrast
    shading[FACE_POSITIVE_X] = 1.0 + contrast * (0.15 - 0.5 * sun)
    shading[FACE_NEGATIVE_X] = 1.0 + contrast * (0.15 - 0.5 * (1.0 - sun))
    shading[FACE_TOP] = 1.0 + 0.2 * contrast
    shading[FACE_BOTTOM] = 1.0 - 0.45 * contrast
    shading[FACE_GROUND] = 1.0
    shading[FACE_EMISSIVE] = 1.0
    return shading


def _part_colours(
    parts: dict[str, np.ndarray], style: DomainStyle, rng: np.random.Generator
) -> np.ndarray:
    """Colour [P, 3] of every part: palette, per-instance jitter and face shading."""
    tables = material_tables(style.material_set)
    material = parts["material"].astype(np.int64)
    tone = parts["tone"]
    colours = _palette_colours(tables, material, tone, style.palette_shift)
    brightness = 1.0 + style.brightness_jitter * (2.0 * tone[:, 1] - 1.0)
    channel = 1.0 + style.colour_jitter * (2.0 * tone[:, 2:5] - 1.0)
    shading = _face_shading(style, rng)[parts["face"]]
    return (colours * (brightness * shading)[:, None] * channel).astype(np.float32)


def _plane_coordinates(
    camera: Camera,
    parts: dict[str, np.ndarray],
    ids: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Surface coordinates in metres on each sample's part plane, and the sample's depth.

    Every plane kind gives the depth as `numerator / denominator`: a per-part numerator over
    the sample's row offset from the horizon (ground planes), its column offset from the
    principal point (side planes) or 1 (frontal planes).

    Args:
        camera: the scene's camera (render resolution).
        parts: the part table.
        ids: part id of each sample, any shape S.
        u, v: the samples' pixel coordinates (render resolution), broadcastable to S.
    Returns:
        tu, tv, depth: float32 arrays of shape S. Ground planes give (X, Z), side planes
        (Z, Y), frontal planes (X, Y); depth is the sample's Z.
    """
    focal = np.float32(camera.focal)
    elevation = np.float32(camera.elevation)
    plane = parts["plane"]
    mapping = parts["mapping"]
    numerator = np.where(
        mapping == MAP_GROUND,
        focal * (elevation - plane),
        np.where(mapping == MAP_SIDE, focal * plane, plane),
    ).astype(np.float32)
    sample_mapping = mapping[ids]
    is_ground = sample_mapping == MAP_GROUND
    is_side = sample_mapping == MAP_SIDE
    du = u - np.float32(camera.centre_u)
    dv = v - np.float32(camera.horizon_v)
    denominator = np.where(is_ground, dv, np.where(is_side, du, np.float32(1.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = numerator[ids] / denominator
    # Samples that graze a plane (near the horizon or the vanishing line) get a far depth.
    depth = np.where((depth > 0.3) & (depth < 2000.0), depth, np.float32(2000.0))
    scaled_depth = depth / focal
    tu = np.where(is_side, depth, du * scaled_depth)
    tv = np.where(is_ground, depth, elevation - dv * scaled_depth)
    return tu, tv, depth


def _texture_detail(
    part_map: np.ndarray,
    parts: dict[str, np.ndarray],
    tu: np.ndarray,
    tv: np.ndarray,
    depth: np.ndarray,
    pixels_per_metre: float,
    style: DomainStyle,
) -> np.ndarray:
    """Relative brightness detail [H, W] from the material textures (0 = none).

    Args:
        part_map: part id of each sample [H, W].
        tu, tv, depth: the samples' plane coordinates and depth (metres) [H, W].
        pixels_per_metre: image pixels per metre at 1 m depth (the focal length), which with
            the depth picks each sample's texture level of detail.
    """
    tables = material_tables(style.material_set)
    bank = texture_bank()
    levels, count = bank.shape[:2]
    bank = bank.reshape(-1)
    material = parts["material"].astype(np.int64)
    layers = []
    if style.texture_strength < 1.0:
        layers.append(
            (
                1.0 - style.texture_strength,
                tables.source_texture,
                tables.source_scale,
                tables.source_strength,
            )
        )
    if style.texture_strength > 0.0:
        layers.append(
            (
                style.texture_strength,
                tables.target_texture,
                tables.target_scale,
                tables.target_strength,
            )
        )
    size = TEXTURE_SIZE
    mask = size - 1  # the size is a power of two: `& mask` is a positive modulo
    # Truncation is flooring for positive values; the shift keeps them positive and, being a
    # multiple of the texture size, does not move the texture. Far samples are clipped first.
    shift = np.float32(2**20)
    tu = np.clip(tu, -1e4, 1e4)
    tv = np.clip(tv, -1e4, 1e4)
    # A per-part offset, so that two buildings of the same material show different bricks.
    row_offset = (parts["tone"][:, 3] * size).astype(np.int32)[part_map]
    column_offset = (parts["tone"][:, 5] * size).astype(np.int32)[part_map]
    metres_per_pixel = depth / np.float32(pixels_per_metre)
    detail = None
    for weight, texture_ids, scales, strengths in layers:
        scale = scales[material].astype(np.float32)[part_map]
        row = ((shift - tv * scale).astype(np.int32) + row_offset) & mask
        column = ((tu * scale + shift).astype(np.int32) + column_offset) & mask
        # Texture pixels under one image pixel -> level of detail (mip-mapping).
        footprint = np.maximum(scale * metres_per_pixel, np.float32(1.0))
        level = np.minimum(np.log2(footprint).astype(np.int32), levels - 1)
        texture = (level * count + texture_ids[material].astype(np.int32)[part_map]) * (size * size)
        gain = (weight * strengths[material]).astype(np.float32)[part_map]
        layer = gain * bank.take(texture + row * size + column)
        detail = layer if detail is None else detail + layer
    return detail if detail is not None else np.zeros(part_map.shape, dtype=np.float32)


def _window_colours(parts: dict[str, np.ndarray], style: DomainStyle) -> np.ndarray:
    """Glass colour [P, 3] for every part (used where a part has a window grid)."""
    tables = material_tables(style.material_set)
    glass = np.full(len(parts["material"]), MATERIAL["window_glass"], dtype=np.int64)
    # Other tone numbers than the wall's, so window and wall colours vary independently.
    tone = np.roll(parts["tone"], 2, axis=1)
    return _palette_colours(tables, glass, tone, style.palette_shift).astype(np.float32)


def _apply_patterns(
    image: np.ndarray,
    part_map: np.ndarray,
    parts: dict[str, np.ndarray],
    camera: Camera,
    style: DomainStyle,
) -> None:
    """Windows on facades and buses, gaps between fence slats (in place on `image`, at the
    render resolution, so that their edges are anti-aliased like the parts')."""
    pattern = parts["pattern"]
    if not pattern.any():
        return
    flat_image = image.reshape(-1, 3)
    flat_parts = part_map.reshape(-1)
    where = np.flatnonzero(pattern[flat_parts])
    ids = flat_parts[where]
    width = part_map.shape[1]
    u = (where % width).astype(np.float32) + np.float32(0.5)
    v = (where // width).astype(np.float32) + np.float32(0.5)
    tu, tv, _ = _plane_coordinates(camera, parts, ids, u, v)
    arguments = parts["pattern_args"][ids]
    windows = pattern[ids] == PATTERN_WINDOWS
    cell_u = tu / arguments[:, 0]
    cell_v = (tv - arguments[:, 4]) / np.where(windows, arguments[:, 1], 1.0)
    floor_u, floor_v = np.floor(cell_u), np.floor(cell_v)
    pane = (
        windows
        & ((cell_u - floor_u) < arguments[:, 2])
        & ((cell_v - floor_v) < arguments[:, 3])
        & (tv >= arguments[:, 4])
        & (tv <= arguments[:, 5])
    )
    if pane.any():
        # Each pane a little lighter or darker (reflections, blinds, lights on).
        key = floor_u[pane] * 12.9898 + floor_v[pane] * 78.233 + ids[pane] * 0.137
        variation = 0.7 + 0.6 * np.abs(np.sin(key) * 43758.5453 % 1.0)
        glass = _window_colours(parts, style)[ids[pane]]
        flat_image[where[pane]] = glass * variation[:, None].astype(np.float32)
    gap = (pattern[ids] == PATTERN_SLATS) & ((cell_u - floor_u) > arguments[:, 1])
    flat_image[where[gap]] *= np.float32(0.5)


def _street_light(
    image: np.ndarray,
    nearest: np.ndarray,
    parts: dict[str, np.ndarray],
    tu: np.ndarray,
    tv: np.ndarray,
    v: np.ndarray,
    camera: Camera,
    colours: np.ndarray,
    style: DomainStyle,
    rng: np.random.Generator,
) -> np.ndarray:
    """Version 2's spatially varying light (`lighting.py`) on the output-size image."""
    klass = parts["klass"][nearest]
    mapping = parts["mapping"][nearest]
    if style.cast_shadows > 0:
        shadow = cast_shadow_mask(mapping, parts["plane"][nearest], tu, tv, rng)
        image = apply_cast_shadows(image, shadow, klass, style.cast_shadows)
    if style.wet_road > 0:
        image = apply_wet_road(image, mapping, klass, tu, tv, colours[0], style.wet_road, rng)
    if style.specular_road > 0:
        image = apply_specular_road(
            image, mapping, klass, v, camera.horizon_v, camera.height, style.specular_road
        )
    return image.astype(np.float32)


def _box_downsample(image: np.ndarray) -> np.ndarray:
    """Average 2x2 blocks: [2H, 2W, C] -> [H, W, C]."""
    return 0.25 * (image[0::2, 0::2] + image[1::2, 0::2] + image[0::2, 1::2] + image[1::2, 1::2])


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [H, W, C] float32 with edge replication."""
    radius = max(1, int(np.ceil(2.5 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    for axis in (0, 1):
        padded = np.pad(
            image, [(radius, radius) if a == axis else (0, 0) for a in range(3)], mode="edge"
        )
        size = image.shape[axis]
        result = np.zeros_like(image)
        for weight, offset in zip(kernel, range(2 * radius + 1), strict=True):
            index = [slice(None)] * 3
            index[axis] = slice(offset, offset + size)
            result += weight * padded[tuple(index)]
        image = result
    return image


def _camera_response(image: np.ndarray, style: DomainStyle, rng: np.random.Generator) -> np.ndarray:
    """Exposure, saturation, colour cast, vignetting, gamma, blur and noise on [H, W, 3]
    float32 in 0..255; returns uint8."""
    jitter = style.image_jitter
    exposure = 1.0 + jitter * rng.uniform(-1.0, 1.0)
    cast = np.asarray(style.colour_cast, dtype=np.float32) * (
        1.0 + 0.5 * jitter * rng.uniform(-1.0, 1.0, 3)
    ).astype(np.float32)
    image = image * (exposure * cast)
    if style.saturation != 1.0:
        grey = image.mean(axis=2, keepdims=True)
        image = grey + style.saturation * (image - grey)
    if style.vignetting > 0:
        height, width = image.shape[:2]
        v = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
        u = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
        image = image * (1.0 - 0.5 * style.vignetting * (u * u + v * v))[:, :, None]
    image = np.clip(image, 0.0, 255.0)
    if style.chromatic_aberration > 0:
        image = chromatic_aberration(image, style.chromatic_aberration)
    if style.gamma != 1.0:
        # A lookup table at quarter-level steps instead of a per-pixel power (much faster).
        levels = np.arange(1021, dtype=np.float32) / 4.0
        table = 255.0 * (levels / 255.0) ** style.gamma
        image = table.astype(np.float32).take((image * 4.0 + 0.5).astype(np.int32))
    if style.blur_sigma > 0:
        image = _gaussian_blur(image.astype(np.float32), style.blur_sigma)
    if style.noise_std > 0:
        noise = rng.standard_normal(image.shape, dtype=np.float32)
        image = image + np.float32(style.noise_std) * noise
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if style.jpeg_quality > 0:
        # A JPEG round trip: the blocking and ringing of a compressed camera stream.
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=style.jpeg_quality)
        with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
            image = np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()
    return image


def render(
    canvas: Canvas, style: DomainStyle, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render a drawn scene in a domain style, at half the canvas resolution.

    Args:
        canvas: the scene's part map ([2H, 2W]) and part table.
        style: the domain's appearance.
        rng: this image's generator (sun direction, exposure, noise).
    Returns:
        image uint8 [H, W, 3]; classes uint8 [H, W] (toy-internal class ids, see `scene`);
        instances int32 [H, W] (0 for stuff).
    """
    part_map = np.asarray(canvas.image, dtype=np.int32)
    parts = canvas.parts.arrays()
    colours = _part_colours(parts, style, rng)
    image = colours[part_map]
    _apply_patterns(image, part_map, parts, canvas.camera, style)
    image = _box_downsample(image)
    # The rest is done at the output resolution, from the samples the label map takes (the
    # bottom-right pixel of each 2x2 block): surface texture, vertical gradients and fog.
    nearest = part_map[1::2, 1::2]
    height, width = nearest.shape
    u = (np.arange(width, dtype=np.float32)[None, :] + np.float32(0.5)) * np.float32(2.0)
    v = (np.arange(height, dtype=np.float32)[:, None] + np.float32(0.5)) * np.float32(2.0)
    tu, tv, depth = _plane_coordinates(canvas.camera, parts, nearest, u, v)
    detail = _texture_detail(nearest, parts, tu, tv, depth, canvas.camera.focal / 2, style)
    image *= (1.0 + detail)[:, :, None]
    gradient = parts["gradient"][nearest]
    fogged = (parts["face"] != FACE_EMISSIVE).astype(np.float32)[nearest]
    # Vertical gradients (the sky darkens away from the horizon).
    offset = (v - np.float32(canvas.camera.horizon_v)) / np.float32(2 * height)
    image *= (1.0 + gradient * offset)[:, :, None]
    if style.cast_shadows > 0 or style.wet_road > 0 or style.specular_road > 0:
        image = _street_light(image, nearest, parts, tu, tv, v, canvas.camera, colours, style, rng)
    # Aerial perspective: far surfaces fade into the sky's colour (part 0 is the sky).
    fog = fogged * (1.0 - np.exp(-depth / np.float32(style.fog_distance)))
    haze = colours[0] if parts["klass"][0] == SKY else image.mean((0, 1))
    image += fog[:, :, None] * (haze - image)
    image = _camera_response(image, style, rng)
    # Nearest-neighbour subsampling (PIL's NEAREST picks the same pixel of each 2x2 block).
    classes = parts["klass"][nearest]
    instances = parts["instance"][nearest]
    return image, classes, instances
