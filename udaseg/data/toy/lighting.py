"""Spatially varying light of the version-2 target: cast shadows, wet patches, road glare.

Version 1's target differs from the source by per-material looks and a camera response that is
the same at every pixel; batch-norm statistics undo much of such a shift. Real streets are lit
unevenly: the buildings on the sun's side throw a shadow across the sidewalk and part of the
road (broken where a side street lets the sun through), the facades opposite are lit above and
shaded below, everything standing in a shadow is darker and bluer, wet asphalt mirrors the
overcast sky, and the road glares towards the horizon. All of it depends on where a pixel is
in the street, not on its colour, so no per-channel statistic can take it out.

Every function works at the output resolution on float32 [H, W, 3] images in 0..255, with the
plane coordinates `render` computes (ground parts: X, Z; side planes: Z, Y; frontal: X, Y) and
its own generator, called only when the style asks for these effects (version 1 draws nothing
more from the image's generator and stays byte-identical).
"""

from __future__ import annotations

import numpy as np

from udaseg.data.toy.canvas import (
    LANE_MARKING,
    MAP_FRONT,
    MAP_GROUND,
    MAP_SIDE,
    ROAD,
    SKY,
)

# Light in a shadow is skylight: dimmer and bluer than the sun-lit surface next to it.
SHADOW_TINT = np.array([0.92, 0.97, 1.12], dtype=np.float32)
SUNLIT_TINT = np.array([1.06, 1.03, 0.96], dtype=np.float32)


def cast_shadow_mask(
    mapping: np.ndarray,
    plane: np.ndarray,
    tu: np.ndarray,
    tv: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Which samples lie in the shadow of the buildings on the sun's side of the street.

    The sun stands to one side (sign s = +-1). Its buildings' shadow covers the ground beyond
    X = s * edge(Z), where the edge wobbles and breaks off periodically along the street (gaps
    between buildings, side streets); the facades across the street are shaded up to a height
    that follows the same breaks. Objects (frontal billboards and boxes) take the shadow of the
    ground they stand on, at their (X, Z).

    Args:
        mapping: int [H, W] plane kind of each sample's part (canvas MAP_*).
        plane: float32 [H, W] the part's plane constant (ground: height; side: X; front: Z).
        tu, tv: float32 [H, W] plane coordinates (see `render._plane_coordinates`).
        rng: the image's generator.
    Returns:
        float32 [H, W] in [0, 1]: 1 in full shadow, soft at the edges.
    """
    sun_side = 1.0 if rng.random() < 0.5 else -1.0
    edge = rng.uniform(-3.0, 7.0)  # metres from the camera's line towards the sunny side
    wobble = rng.uniform(0.5, 2.0)
    period = rng.uniform(18.0, 45.0)  # metres between breaks in the building row
    duty = rng.uniform(0.6, 0.85)  # fraction of each period in shadow
    phase = rng.uniform(0.0, 1.0)
    facade_height = rng.uniform(3.0, 9.0)  # how high the shadow climbs the facades opposite

    x = np.where(mapping == MAP_SIDE, plane, tu)
    z = np.where(mapping == MAP_SIDE, tu, np.where(mapping == MAP_FRONT, plane, tv))
    cycle = (z / np.float32(period) + np.float32(phase)) % 1.0
    covered = np.clip((np.float32(duty) - cycle) * np.float32(period) / 1.5, 0.0, 1.0)
    boundary = edge + wobble * np.sin(z * np.float32(0.21) + np.float32(phase * 6.0))
    across = np.clip((sun_side * x - boundary) / 0.6 + 0.5, 0.0, 1.0)
    shadow = across * covered
    # The facades across the street (on the side away from the sun) are shaded below a line
    # under the same breaks; the sun-side facades face away from the sun and are dim anyway
    # (face shading), so they get the full shadow.
    opposite = (mapping == MAP_SIDE) & (sun_side * plane < 0)
    climbing = np.clip((np.float32(facade_height) - tv) / 0.8 + 0.5, 0.0, 1.0) * covered
    shadow = np.where(opposite, climbing, shadow)
    sun_side_facade = (mapping == MAP_SIDE) & (sun_side * plane > 0)
    shadow = np.where(sun_side_facade, np.float32(1.0), shadow)
    return shadow.astype(np.float32)


def apply_cast_shadows(
    image: np.ndarray, shadow: np.ndarray, klass: np.ndarray, strength: float
) -> np.ndarray:
    """Darken and cool the shadowed samples, warm the sun-lit ones (not the sky).

    Args:
        image: float32 [H, W, 3].
        shadow: float32 [H, W] in [0, 1] (`cast_shadow_mask`).
        klass: uint8 [H, W] toy-internal class of each sample.
        strength: how much light the shadow takes away (0.6 = 60%).
    """
    lit = (klass != SKY).astype(np.float32)
    shade = shadow * lit
    factor = (1.0 - strength * shade)[:, :, None] * (1.0 + shade[:, :, None] * (SHADOW_TINT - 1.0))
    sunny = (1.0 - shade) * lit
    factor = factor * (1.0 + sunny[:, :, None] * (SUNLIT_TINT - 1.0))
    return image * factor


def _smooth_field(x: np.ndarray, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field over the ground plane (sum of a few random plane waves)."""
    field = np.zeros(x.shape, dtype=np.float32)
    for _ in range(4):
        angle = rng.uniform(0.0, np.pi)
        frequency = rng.uniform(0.15, 0.5)
        offset = rng.uniform(0.0, 2.0 * np.pi)
        along = np.cos(angle) * x + np.sin(angle) * z * 0.5
        field += np.sin(np.float32(frequency) * along + np.float32(offset)).astype(np.float32)
    return field / 2.0


def apply_wet_road(
    image: np.ndarray,
    mapping: np.ndarray,
    klass: np.ndarray,
    tu: np.ndarray,
    tv: np.ndarray,
    sky_colour: np.ndarray,
    probability: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Puddles on the road of some images: the road there mirrors the sky and loses detail.

    Args:
        image: float32 [H, W, 3]; mapping, klass: [H, W]; tu, tv: ground X, Z for ground parts.
        sky_colour: float32 [3] the sky's colour in this image.
        probability: chance that this image's road is wet.
    """
    if rng.random() >= probability:
        return image
    road = ((klass == ROAD) | (klass == LANE_MARKING)) & (mapping == MAP_GROUND)
    wetness = rng.uniform(0.2, 0.8)  # how much of the road is under water (field threshold)
    field = _smooth_field(tu, tv, rng)
    puddle = np.clip((field - (1.0 - 2.0 * wetness)) * 2.0, 0.0, 1.0) * road
    mirror = 0.55 * puddle[:, :, None]
    reflected = 0.5 * image + 0.5 * sky_colour[None, None, :] * 0.85
    return image + mirror * (reflected - image)


def apply_specular_road(
    image: np.ndarray,
    mapping: np.ndarray,
    klass: np.ndarray,
    v: np.ndarray,
    horizon_v: float,
    height: float,
    amount: float,
) -> np.ndarray:
    """Glare on the road that grows towards the horizon, where the sun grazes the surface.

    Args:
        v: float32 [H, 1] rows of the samples in the same units as `horizon_v` and `height`.
        amount: relative brightening at the horizon.
    """
    road = (((klass == ROAD) | (klass == LANE_MARKING)) & (mapping == MAP_GROUND)).astype(
        np.float32
    )
    below = np.clip((v - np.float32(horizon_v)) / np.float32(0.25 * height), 0.0, None)
    glare = np.float32(amount) * np.exp(-below) * road
    return image * (1.0 + glare[:, :, None]) + 40.0 * glare[:, :, None]


def chromatic_aberration(image: np.ndarray, shift: int) -> np.ndarray:
    """Red shifted `shift` pixels right and blue `shift` left (edges replicated).

    Args:
        image: float32 [H, W, 3].
    """
    if shift <= 0:
        return image
    result = image.copy()
    result[:, shift:, 0] = image[:, :-shift, 0]
    result[:, :shift, 0] = image[:, :1, 0]
    result[:, :-shift, 2] = image[:, shift:, 2]
    result[:, -shift:, 2] = image[:, -1:, 2]
    return result
