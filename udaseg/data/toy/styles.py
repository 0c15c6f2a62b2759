"""Appearance of the two toy domains: materials, palettes, textures and the target knobs.

A scene (`scene.py`) says *what* is where: every drawn part has a class, a material (asphalt,
car paint, foliage...) and a few random numbers of its own. A `DomainStyle` says how materials
*look*: their colours, surface textures, shading and the camera's post-processing. The source
domain is "game-like": saturated flat colours, clean procedural textures and hard directional
shading. The target domain is "real-like": a muted palette, surface detail taken from the photos
that scikit-image ships (gravel, brick, grass...), soft overcast shading, a colour cast, gamma,
blur and sensor noise.

Materials deliberately cut across classes (glass on cars, buses and buildings, grey metal on
poles, fences and trucks, cloth of every colour on persons and riders) and palettes overlap
between classes, so that colour is never a key to the label: a network has to use shape and
context, in both domains.

`TargetStyle` gathers the knobs that size the domain gap; each has a neutral value that makes
the target look like the source, so the gap can be dialled continuously when it is calibrated
against trained models.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

# --- Materials ------------------------------------------------------------------------------

MATERIAL_NAMES: tuple[str, ...] = (
    "sky",
    "asphalt",
    "lane_paint",
    "curb",
    "pavement",
    "grass",
    "facade",
    "window_glass",
    "wall_stone",
    "fence",
    "metal",
    "foliage",
    "bark",
    "car_paint",
    "vehicle_glass",
    "tyre",
    "tail_light",
    "head_light",
    "skin",
    "cloth_top",
    "cloth_bottom",
    "hair",
    "sign_face",
    "sign_rim",
    "light_housing",
    "light_lamp",
    "truck_body",
    "bus_paint",
    "train_paint",
    "bike_frame",
    "skyline",
    "ego_hood",
)
MATERIAL = {name: index for index, name in enumerate(MATERIAL_NAMES)}

Colour = tuple[int, int, int]

# Source ("game-like") colours: saturated, clean, bright.
SOURCE_PALETTE: dict[str, tuple[Colour, ...]] = {
    "sky": (
        (92, 152, 232),
        (110, 170, 240),
        (72, 132, 222),
        (138, 184, 236),
        (162, 190, 226),
        (186, 200, 220),
    ),
    "asphalt": ((86, 86, 92), (102, 99, 101), (72, 74, 80), (112, 106, 100)),
    "lane_paint": ((236, 236, 230), (240, 222, 92)),
    "curb": ((172, 170, 164), (150, 150, 152)),
    "pavement": (
        (178, 160, 150),
        (192, 182, 170),
        (160, 160, 166),
        (200, 170, 150),
        (150, 140, 136),
    ),
    "grass": ((112, 172, 62), (140, 182, 70), (122, 152, 60), (170, 162, 92)),
    "facade": (
        (202, 182, 150),
        (172, 120, 90),
        (150, 150, 162),
        (212, 202, 182),
        (182, 92, 72),
        (122, 132, 152),
        (222, 212, 162),
        (162, 162, 142),
        (104, 102, 108),
    ),
    "window_glass": ((62, 82, 112), (42, 52, 72), (92, 122, 152), (32, 36, 46)),
    "wall_stone": ((172, 162, 142), (142, 142, 132), (192, 172, 132), (122, 112, 102)),
    "fence": ((152, 112, 72), (102, 112, 102), (172, 172, 172), (62, 92, 62)),
    "metal": ((122, 126, 132), (92, 96, 102), (152, 152, 152), (62, 72, 62)),
    "foliage": ((62, 142, 42), (82, 152, 52), (52, 122, 42), (102, 162, 62)),
    "bark": ((102, 72, 42), (92, 82, 62)),
    "car_paint": (
        (202, 32, 32),
        (32, 62, 182),
        (232, 232, 232),
        (32, 32, 34),
        (162, 162, 172),
        (222, 182, 42),
        (42, 142, 62),
        (122, 32, 122),
        (102, 102, 112),
    ),
    "vehicle_glass": ((52, 62, 82), (32, 36, 52), (82, 102, 132)),
    "tyre": ((26, 26, 26), (36, 36, 40)),
    "tail_light": ((222, 32, 32), (202, 52, 22)),
    "head_light": ((242, 242, 212), (232, 232, 232)),
    "skin": ((232, 192, 162), (202, 152, 112), (152, 102, 72), (102, 72, 52)),
    "cloth_top": (
        (202, 42, 42),
        (42, 82, 202),
        (242, 242, 242),
        (32, 32, 32),
        (62, 162, 62),
        (242, 202, 52),
        (122, 62, 162),
        (242, 132, 42),
        (122, 122, 122),
    ),
    "cloth_bottom": ((42, 52, 92), (32, 32, 32), (122, 112, 92), (82, 82, 92), (162, 142, 112)),
    "hair": ((32, 22, 16), (92, 62, 32), (202, 172, 102), (22, 22, 22)),
    "sign_face": ((222, 32, 32), (32, 82, 202), (242, 242, 242), (252, 202, 22)),
    "sign_rim": ((232, 232, 232), (202, 32, 32)),
    "light_housing": ((42, 42, 42), (62, 62, 56), (202, 172, 42)),
    "light_lamp": ((255, 42, 32), (255, 192, 42), (62, 232, 92)),
    "truck_body": (
        (232, 232, 232),
        (202, 202, 206),
        (192, 42, 32),
        (42, 92, 172),
        (242, 202, 62),
        (92, 102, 92),
    ),
    "bus_paint": ((232, 202, 42), (202, 42, 42), (232, 232, 232), (42, 122, 202), (62, 152, 82)),
    "train_paint": ((222, 222, 222), (202, 42, 42), (242, 212, 62)),
    "bike_frame": ((202, 32, 32), (32, 32, 32), (42, 82, 202), (202, 202, 202), (42, 162, 62)),
    "skyline": ((142, 152, 172), (122, 132, 152)),
    "ego_hood": ((30, 30, 34), (52, 52, 60)),
}

# Target ("real-like") colours: muted, overcast, closer to Cityscapes' greys and greens.
TARGET_PALETTE: dict[str, tuple[Colour, ...]] = {
    "sky": (
        (200, 208, 216),
        (182, 194, 208),
        (220, 224, 228),
        (152, 176, 204),
        (126, 160, 202),
        (110, 150, 206),
    ),
    "asphalt": ((96, 94, 100), (110, 108, 112), (82, 82, 88), (122, 118, 116)),
    "lane_paint": ((202, 202, 196), (212, 200, 152)),
    "curb": ((142, 140, 136), (160, 156, 150)),
    "pavement": ((150, 146, 140), (130, 128, 126), (166, 160, 150), (142, 132, 126)),
    "grass": ((102, 122, 62), (122, 132, 72), (92, 112, 62), (132, 126, 86)),
    "facade": (
        (162, 152, 136),
        (142, 132, 122),
        (122, 122, 126),
        (182, 172, 152),
        (152, 112, 92),
        (112, 112, 112),
        (192, 186, 176),
        (132, 126, 112),
    ),
    "window_glass": ((72, 76, 86), (52, 56, 62), (102, 112, 122), (42, 42, 46)),
    "wall_stone": ((152, 146, 136), (122, 118, 112), (166, 156, 142)),
    "fence": ((112, 102, 86), (92, 96, 92), (142, 142, 136)),
    "metal": ((102, 102, 102), (82, 84, 86), (122, 122, 116)),
    "foliage": ((72, 92, 46), (62, 82, 42), (86, 102, 56), (52, 72, 42)),
    "bark": ((72, 62, 52), (82, 74, 62)),
    "car_paint": (
        (42, 42, 46),
        (172, 172, 176),
        (222, 222, 222),
        (122, 122, 126),
        (62, 72, 102),
        (122, 42, 36),
        (32, 32, 36),
        (92, 96, 86),
    ),
    "vehicle_glass": ((42, 46, 52), (62, 66, 72), (26, 28, 32)),
    "tyre": ((32, 32, 32), (40, 38, 38)),
    "tail_light": ((172, 42, 36), (150, 50, 40)),
    "head_light": ((212, 212, 202), (196, 196, 190)),
    "skin": ((212, 176, 150), (182, 140, 110), (132, 96, 72), (92, 68, 52)),
    "cloth_top": (
        (42, 42, 46),
        (72, 72, 82),
        (122, 112, 102),
        (152, 52, 52),
        (62, 82, 122),
        (202, 202, 196),
        (92, 102, 82),
    ),
    "cloth_bottom": ((42, 46, 62), (36, 36, 40), (92, 86, 76), (72, 72, 76)),
    "hair": ((42, 32, 26), (82, 62, 42), (32, 32, 32), (142, 122, 92)),
    "sign_face": ((192, 42, 42), (42, 82, 162), (222, 222, 216), (222, 182, 42)),
    "sign_rim": ((212, 212, 206), (182, 46, 42)),
    "light_housing": ((36, 36, 36), (52, 52, 46)),
    "light_lamp": ((232, 72, 52), (232, 172, 62), (82, 202, 122)),
    "truck_body": ((212, 212, 212), (172, 172, 176), (142, 52, 42), (52, 82, 132), (102, 106, 100)),
    "bus_paint": ((202, 182, 62), (222, 222, 222), (62, 102, 152), (172, 62, 52)),
    "train_paint": ((202, 202, 202), (172, 62, 52)),
    "bike_frame": ((42, 42, 42), (152, 42, 42), (62, 72, 122), (182, 182, 182)),
    "skyline": ((162, 166, 172), (142, 146, 152)),
    "ego_hood": ((28, 28, 30), (44, 44, 48)),
}

# Surface textures. Procedural ones (the source's "game" look) are drawn once from a fixed seed;
# photo ones come from scikit-image's bundled sample images (see `_photo_textures`).
PROCEDURAL_TEXTURES: tuple[str, ...] = (
    "flat",
    "smooth_noise",
    "fine_noise",
    "game_bricks",
    "game_tiles",
    "planks",
    "leaves",
)
PHOTO_TEXTURES: tuple[str, ...] = ("gravel", "brick", "grass", "moon", "wood", "fur")
TEXTURE_NAMES: tuple[str, ...] = PROCEDURAL_TEXTURES + PHOTO_TEXTURES
TEXTURE = {name: index for index, name in enumerate(TEXTURE_NAMES)}
TEXTURE_SIZE = 256

# material -> (texture, texture pixels per metre, strength): the source uses procedural
# textures, the target photo textures; `texture_strength` blends from one to the other.
SOURCE_TEXTURES: dict[str, tuple[str, float, float]] = {
    "sky": ("smooth_noise", 0.4, 0.03),
    "asphalt": ("fine_noise", 40.0, 0.06),
    "lane_paint": ("flat", 1.0, 0.0),
    "curb": ("smooth_noise", 20.0, 0.05),
    "pavement": ("game_tiles", 48.0, 0.10),
    "grass": ("fine_noise", 30.0, 0.10),
    "facade": ("game_bricks", 40.0, 0.08),
    "window_glass": ("flat", 1.0, 0.0),
    "wall_stone": ("game_bricks", 48.0, 0.14),
    "fence": ("planks", 40.0, 0.10),
    "metal": ("flat", 1.0, 0.0),
    "foliage": ("leaves", 40.0, 0.22),
    "bark": ("planks", 60.0, 0.10),
    "car_paint": ("flat", 1.0, 0.0),
    "vehicle_glass": ("flat", 1.0, 0.0),
    "tyre": ("flat", 1.0, 0.0),
    "tail_light": ("flat", 1.0, 0.0),
    "head_light": ("flat", 1.0, 0.0),
    "skin": ("flat", 1.0, 0.0),
    "cloth_top": ("smooth_noise", 60.0, 0.05),
    "cloth_bottom": ("smooth_noise", 60.0, 0.05),
    "hair": ("flat", 1.0, 0.0),
    "sign_face": ("flat", 1.0, 0.0),
    "sign_rim": ("flat", 1.0, 0.0),
    "light_housing": ("flat", 1.0, 0.0),
    "light_lamp": ("flat", 1.0, 0.0),
    "truck_body": ("smooth_noise", 20.0, 0.03),
    "bus_paint": ("flat", 1.0, 0.0),
    "train_paint": ("flat", 1.0, 0.0),
    "bike_frame": ("flat", 1.0, 0.0),
    "skyline": ("smooth_noise", 2.0, 0.05),
    "ego_hood": ("flat", 1.0, 0.0),
}
TARGET_TEXTURES: dict[str, tuple[str, float, float]] = {
    "sky": ("smooth_noise", 0.6, 0.08),
    "asphalt": ("gravel", 160.0, 0.22),
    "lane_paint": ("gravel", 90.0, 0.12),
    "curb": ("moon", 40.0, 0.20),
    "pavement": ("brick", 60.0, 0.35),
    "grass": ("grass", 70.0, 0.50),
    "facade": ("brick", 55.0, 0.30),
    "window_glass": ("moon", 30.0, 0.15),
    "wall_stone": ("brick", 70.0, 0.30),
    "fence": ("wood", 80.0, 0.30),
    "metal": ("moon", 60.0, 0.10),
    "foliage": ("grass", 28.0, 0.60),
    "bark": ("fur", 80.0, 0.30),
    "car_paint": ("moon", 30.0, 0.10),
    "vehicle_glass": ("moon", 30.0, 0.15),
    "tyre": ("gravel", 100.0, 0.10),
    "tail_light": ("flat", 1.0, 0.0),
    "head_light": ("flat", 1.0, 0.0),
    "skin": ("moon", 80.0, 0.05),
    "cloth_top": ("fur", 120.0, 0.20),
    "cloth_bottom": ("fur", 120.0, 0.20),
    "hair": ("fur", 150.0, 0.20),
    "sign_face": ("moon", 60.0, 0.08),
    "sign_rim": ("flat", 1.0, 0.0),
    "light_housing": ("moon", 60.0, 0.10),
    "light_lamp": ("flat", 1.0, 0.0),
    "truck_body": ("moon", 25.0, 0.15),
    "bus_paint": ("moon", 25.0, 0.10),
    "train_paint": ("moon", 25.0, 0.10),
    "bike_frame": ("flat", 1.0, 0.0),
    "skyline": ("brick", 4.0, 0.15),
    "ego_hood": ("moon", 30.0, 0.10),
}

# Version 2 of the target (`udaseg make-toy --version 2`) re-materialises the street class by
# class, the way a real city differs from a game's: the road is pale worn concrete-grey asphalt
# with cracks (darker than the sidewalk in the source, lighter in the target), sidewalks are dark
# red-brown pavers, buildings dark brick and soot-grey with bright sky-reflecting windows (light
# walls with dark windows in the source), the terrain is dry brown earth, the vegetation autumnal,
# poles painted dark green, buses cream and teal. Each class moves in its own direction, so no
# per-channel normalisation (batch-norm statistics, a colour transfer) can map the target back
# onto the source. Materials not listed keep the version-1 target look.
TARGET_PALETTE_V2: dict[str, tuple[Colour, ...]] = {
    "asphalt": ((150, 150, 146), (162, 160, 152), (140, 142, 140), (172, 168, 158)),
    "lane_paint": ((226, 226, 220), (222, 214, 170)),
    "curb": ((112, 108, 104), (96, 94, 92)),
    "pavement": ((112, 78, 66), (96, 84, 78), (124, 92, 72), (84, 76, 74)),
    "grass": ((138, 112, 76), (120, 98, 70), (156, 130, 88), (110, 104, 72)),
    "foliage": ((148, 96, 40), (172, 132, 52), (96, 84, 40), (60, 76, 40), (130, 60, 36)),
    "bark": ((52, 46, 42), (66, 60, 54)),
    "facade": (
        (92, 62, 54),
        (78, 76, 78),
        (104, 96, 88),
        (66, 62, 64),
        (118, 74, 60),
        (86, 88, 94),
    ),
    "window_glass": ((186, 196, 206), (168, 178, 190), (204, 210, 214), (150, 162, 176)),
    "wall_stone": ((186, 184, 176), (172, 170, 164), (196, 190, 178)),
    "fence": ((60, 72, 62), (150, 152, 150), (52, 52, 56)),
    "metal": ((46, 70, 56), (58, 84, 66), (60, 62, 66)),
    "car_paint": (
        (196, 198, 200),
        (226, 226, 226),
        (36, 38, 42),
        (92, 100, 116),
        (146, 148, 150),
        (120, 108, 92),
    ),
    "bus_paint": ((218, 206, 168), (60, 138, 138), (226, 226, 218)),
    "truck_body": ((182, 182, 176), (118, 122, 112), (72, 92, 120)),
    "cloth_top": ((38, 38, 44), (64, 70, 84), (140, 120, 96), (96, 40, 40), (180, 178, 170)),
    "sky": ((222, 226, 230), (206, 212, 220), (232, 234, 236), (190, 198, 210)),
}
TARGET_TEXTURES_V2: dict[str, tuple[str, float, float]] = {
    "asphalt": ("moon", 60.0, 0.30),
    "pavement": ("brick", 90.0, 0.45),
    "grass": ("gravel", 50.0, 0.45),
    "foliage": ("fur", 40.0, 0.55),
    "facade": ("brick", 40.0, 0.45),
    "wall_stone": ("moon", 40.0, 0.25),
    "metal": ("wood", 60.0, 0.15),
    "car_paint": ("moon", 20.0, 0.04),
}
MATERIAL_SETS: tuple[str, ...] = ("v1", "v2")


@dataclass(frozen=True)
class DomainStyle:
    """How one domain renders materials; built by `source_style()` or `TargetStyle.domain()`.

    Attributes:
        palette_shift: 0 uses `SOURCE_PALETTE`, 1 `TARGET_PALETTE`, in between interpolates.
        texture_strength: 0 uses the procedural source textures, 1 the photo textures.
        shading_contrast: how strongly faces are lit differently (1 = hard "game" sun).
        brightness_jitter: per-instance relative brightness jitter (uniform +-).
        colour_jitter: per-instance, per-channel relative colour jitter (uniform +-).
        fog_distance: metres at which 63% of a surface's colour has turned to haze.
        colour_cast: per-channel gains (R, G, B) applied after rendering.
        gamma: output = input ** gamma on 0..1 values (> 1 darkens mid-tones).
        saturation: 1 keeps colours, < 1 washes them out towards grey.
        blur_sigma: Gaussian blur in output pixels (0 = none).
        noise_std: sensor noise standard deviation in 0..255 units.
        image_jitter: per-image brightness/cast jitter (relative, uniform +-).
        vignetting: darkening of the corners (0 = none).
        material_set: "v1" or "v2": which target palette and textures `palette_shift` and
            `texture_strength` blend towards.
        cast_shadows: darkness of the shadows that buildings cast across the street (0 = none).
        wet_road: probability that an image has wet patches on the road mirroring the sky.
        specular_road: brightening of the road towards the horizon (grazing sun glare; 0 = none).
        chromatic_aberration: red and blue shifted by this many pixels in opposite directions.
        jpeg_quality: JPEG round trip at this quality (0 = none): compression artefacts.
    """

    name: str
    palette_shift: float = 0.0
    texture_strength: float = 0.0
    shading_contrast: float = 1.0
    brightness_jitter: float = 0.18
    colour_jitter: float = 0.08
    fog_distance: float = 400.0
    colour_cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    saturation: float = 1.0
    blur_sigma: float = 0.0
    noise_std: float = 0.0
    image_jitter: float = 0.05
    vignetting: float = 0.0
    material_set: str = "v1"
    cast_shadows: float = 0.0
    wet_road: float = 0.0
    specular_road: float = 0.0
    chromatic_aberration: int = 0
    jpeg_quality: int = 0


def source_style() -> DomainStyle:
    """The source domain's "game-like" look: flat saturated colours and a hard sun."""
    return DomainStyle(name="source")


# How much of version 2's full shift the benchmark uses (see `TargetStyle.version2`).
VERSION2_STRENGTH = 0.7


@dataclass(frozen=True)
class TargetStyle:
    """Knobs that make the target domain differ from the source (defaults: the shipped gap).

    Every knob has a neutral value (in brackets) with which the target looks like the source;
    `TargetStyle.neutral()` sets them all. The defaults aim at a GTA5->Cityscapes-like gap:
    a source-only model clearly below a target-trained one, yet far above chance.

    Appearance:
        texture_strength: blend from procedural to photo textures [0]; default 1.
        palette_shift: blend from the source to the target palette [0]; default 0.85.
        colour_cast: per-channel gains R, G, B [1, 1, 1]; default (0.95, 1.03, 0.88), the
            green-yellow cast of Cityscapes.
        gamma: tone curve exponent [1]; default 1.25 (darker mid-tones).
        saturation: [1]; default 0.75 (washed out like Cityscapes' overcast images).
        blur_sigma: output pixels [0]; default 0.5 (optics and debayering).
        noise_std: 0..255 units [0]; default 3 (sensor noise).
        shading_contrast: [1]; default 0.45 (overcast light instead of a hard sun).
        fog_distance: metres [400]; default 220 (haze).
        vignetting: [0]; default 0.25.
    Layout (kept mild on purpose):
        horizon_shift: horizon moved by this fraction of the image height, + is lower [0];
            default 0.03.
        camera_height_shift: metres [0]; default -0.1 (a lower car-mounted camera).
        object_frequency: multipliers of the expected number of objects per image [all 1];
            default: more persons, bicycles and riders, fewer trucks, buses and moving cars,
            as Cityscapes' German city centres compared with GTA5's Los Santos.
        ego_vehicle: height of the ego-vehicle hood at the bottom of the image as a fraction
            of the height, labelled "ego vehicle" (void) as in Cityscapes [0]; default 0.05.
    Version 2 only (`TargetStyle.version2()`; at their neutral values in version 1, and then
    left out of `to_dict`, so version 1's cache key and files are unchanged):
        material_set: "v1" or "v2" (class-by-class re-materialisation, `TARGET_PALETTE_V2`).
        cast_shadows, wet_road, specular_road: spatially varying light [0] (see DomainStyle).
        chromatic_aberration: pixels [0]; jpeg_quality: [0 = none].
        object_shape: multipliers of object proportions [none], e.g. {"car_height": 1.2}; see
            `scene.SHAPE_FACTORS`.
    """

    texture_strength: float = 1.0
    palette_shift: float = 0.85
    colour_cast: tuple[float, float, float] = (0.95, 1.03, 0.88)
    gamma: float = 1.25
    saturation: float = 0.75
    blur_sigma: float = 0.5
    noise_std: float = 3.0
    shading_contrast: float = 0.45
    fog_distance: float = 220.0
    vignetting: float = 0.25
    horizon_shift: float = 0.03
    camera_height_shift: float = -0.1
    object_frequency: dict[str, float] = field(
        default_factory=lambda: {
            "persons": 1.6,
            "riders": 1.5,
            "bicycles": 1.8,
            "motorcycles": 0.7,
            "cars": 0.85,
            "parked_cars": 1.3,
            "trucks": 0.5,
            "buses": 0.7,
            "trees": 1.3,
        }
    )
    ego_vehicle: float = 0.05
    material_set: str = "v1"
    cast_shadows: float = 0.0
    wet_road: float = 0.0
    specular_road: float = 0.0
    chromatic_aberration: int = 0
    jpeg_quality: int = 0
    object_shape: dict[str, float] = field(default_factory=dict)

    @classmethod
    def version2(cls, strength: float = VERSION2_STRENGTH) -> TargetStyle:
        """The version-2 target: version 1's camera plus a shift that is class-dependent
        (materials re-chosen class by class), spatially varying (cast shadows, wet and glaring
        road), in object appearance (proportions) and layout (class frequencies), and in the
        sensor (chromatic aberration, JPEG). docs/toy-benchmark.md describes it.

        The knobs below are the shift at full strength; the benchmark uses them scaled by
        `strength` (`scaled`), 0.7 by default: at full strength a source-only model falls to
        chance level (4.7 mIoU19), at 0.5 the gap to the oracle becomes too small
        (bench/toy_shift_calibration.py; the numbers are in docs/toy-benchmark.md)."""
        return cls(
            palette_shift=1.0,
            object_frequency={
                "persons": 2.2,
                "riders": 1.6,
                "bicycles": 2.5,
                "motorcycles": 0.6,
                "cars": 0.8,
                "parked_cars": 1.5,
                "trucks": 0.35,
                "buses": 0.6,
                "trees": 1.6,
                "terrain": 0.6,
                "signs": 1.4,
            },
            material_set="v2",
            cast_shadows=0.6,
            wet_road=0.4,
            specular_road=0.35,
            chromatic_aberration=1,
            jpeg_quality=60,
            object_shape={
                "car_height": 1.2,
                "car_length": 0.85,
                "person_height": 1.08,
                "person_width": 0.8,
                "bus_height": 1.15,
                "truck_length": 0.8,
            },
        ).scaled(strength)

    @classmethod
    def neutral(cls) -> TargetStyle:
        """A target that looks like the source (no gap): the zero point of every knob."""
        return cls(
            texture_strength=0.0,
            palette_shift=0.0,
            colour_cast=(1.0, 1.0, 1.0),
            gamma=1.0,
            saturation=1.0,
            blur_sigma=0.0,
            noise_std=0.0,
            shading_contrast=1.0,
            fog_distance=400.0,
            vignetting=0.0,
            horizon_shift=0.0,
            camera_height_shift=0.0,
            object_frequency={},
            ego_vehicle=0.0,
        )

    def scaled(self, amount: float) -> TargetStyle:
        """These knobs moved `amount` of the way from neutral: 0 is no gap, 1 is `self`, and
        values above 1 widen the gap (blends are capped at full strength).

        One number to calibrate the gap with: e.g. `TargetStyle().scaled(0.7)`.
        """
        neutral = TargetStyle.neutral()

        def blend(name: str, low: float = 0.0, high: float = float("inf")) -> float:
            start, end = getattr(neutral, name), getattr(self, name)
            return float(min(max(start + amount * (end - start), low), high))

        return TargetStyle(
            texture_strength=blend("texture_strength", 0.0, 1.0),
            palette_shift=blend("palette_shift", 0.0, 1.0),
            colour_cast=tuple(max(0.0, 1.0 + amount * (gain - 1.0)) for gain in self.colour_cast),
            gamma=blend("gamma", 0.2),
            saturation=blend("saturation"),
            blur_sigma=blend("blur_sigma"),
            noise_std=blend("noise_std"),
            shading_contrast=blend("shading_contrast"),
            fog_distance=blend("fog_distance", 20.0),
            vignetting=blend("vignetting", 0.0, 1.0),
            horizon_shift=blend("horizon_shift", -0.3, 0.3),
            camera_height_shift=blend("camera_height_shift", -1.0, 1.0),
            object_frequency={
                name: multiplier**amount for name, multiplier in self.object_frequency.items()
            },
            ego_vehicle=blend("ego_vehicle", 0.0, 0.3),
            material_set=self.material_set,
            cast_shadows=blend("cast_shadows", 0.0, 0.95),
            wet_road=blend("wet_road", 0.0, 1.0),
            specular_road=blend("specular_road"),
            chromatic_aberration=round(blend("chromatic_aberration", 0.0, 4.0)),
            jpeg_quality=self.jpeg_quality,
            object_shape={
                name: multiplier**amount for name, multiplier in self.object_shape.items()
            },
        )

    def domain(self) -> DomainStyle:
        """The rendering style of the target domain."""
        return DomainStyle(
            name="target",
            palette_shift=self.palette_shift,
            texture_strength=self.texture_strength,
            shading_contrast=self.shading_contrast,
            fog_distance=self.fog_distance,
            colour_cast=tuple(self.colour_cast),
            gamma=self.gamma,
            saturation=self.saturation,
            blur_sigma=self.blur_sigma,
            noise_std=self.noise_std,
            vignetting=self.vignetting,
            material_set=self.material_set,
            cast_shadows=self.cast_shadows,
            wet_road=self.wet_road,
            specular_road=self.specular_road,
            chromatic_aberration=self.chromatic_aberration,
            jpeg_quality=self.jpeg_quality,
        )

    def to_dict(self) -> dict:
        """JSON-ready knobs (for the manifest and the cache key)."""
        values = asdict(self)
        values["colour_cast"] = list(self.colour_cast)
        values["object_frequency"] = dict(sorted(self.object_frequency.items()))
        values["object_shape"] = dict(sorted(self.object_shape.items()))
        # Version-2 knobs at their neutral value are left out: version 1's manifests and cache
        # keys (hashes of this dict) stay what they were before version 2 existed.
        for name, neutral in _VERSION2_NEUTRAL.items():
            if values[name] == neutral:
                del values[name]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> TargetStyle:
        """The inverse of `to_dict`."""
        values = dict(values)
        if "colour_cast" in values:
            values["colour_cast"] = tuple(values["colour_cast"])
        return cls(**values)


_VERSION2_NEUTRAL: dict[str, object] = {
    "material_set": "v1",
    "cast_shadows": 0.0,
    "wet_road": 0.0,
    "specular_road": 0.0,
    "chromatic_aberration": 0,
    "jpeg_quality": 0,
    "object_shape": {},
}


# --- Tables consumed by the renderer --------------------------------------------------------


@dataclass(frozen=True)
class MaterialTables:
    """Per-material arrays for one domain style, indexed by material id.

    Attributes:
        source_colours / target_colours: float32 [M, K, 3] palettes padded by repetition to K
            entries; `count_*` [M] says how many entries are real.
        source_texture / target_texture: int64 [M] texture ids.
        source_scale / target_scale: float32 [M] texture pixels per metre.
        source_strength / target_strength: float32 [M].
    """

    source_colours: np.ndarray
    source_count: np.ndarray
    target_colours: np.ndarray
    target_count: np.ndarray
    source_texture: np.ndarray
    source_scale: np.ndarray
    source_strength: np.ndarray
    target_texture: np.ndarray
    target_scale: np.ndarray
    target_strength: np.ndarray


def _palette_array(palette: dict[str, tuple[Colour, ...]]) -> tuple[np.ndarray, np.ndarray]:
    size = max(len(colours) for colours in palette.values())
    table = np.zeros((len(MATERIAL_NAMES), size, 3), dtype=np.float32)
    count = np.zeros(len(MATERIAL_NAMES), dtype=np.int64)
    for name, colours in palette.items():
        index = MATERIAL[name]
        count[index] = len(colours)
        for k in range(size):
            table[index, k] = colours[k % len(colours)]
    return table, count


def _texture_arrays(
    textures: dict[str, tuple[str, float, float]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.zeros(len(MATERIAL_NAMES), dtype=np.int64)
    scales = np.ones(len(MATERIAL_NAMES), dtype=np.float32)
    strengths = np.zeros(len(MATERIAL_NAMES), dtype=np.float32)
    for name, (texture, scale, strength) in textures.items():
        ids[MATERIAL[name]] = TEXTURE[texture]
        scales[MATERIAL[name]] = scale
        strengths[MATERIAL[name]] = strength
    return ids, scales, strengths


@lru_cache(maxsize=2)
def material_tables(material_set: str = "v1") -> MaterialTables:
    """The palettes and texture assignments as arrays (computed once per process and set);
    `material_set` "v2" takes the target's materials from `TARGET_PALETTE_V2` and
    `TARGET_TEXTURES_V2` where they list them."""
    assert set(SOURCE_PALETTE) == set(TARGET_PALETTE) == set(MATERIAL_NAMES)
    assert set(SOURCE_TEXTURES) == set(TARGET_TEXTURES) == set(MATERIAL_NAMES)
    if material_set not in MATERIAL_SETS:
        raise ValueError(f"material_set: expected one of {MATERIAL_SETS}, got {material_set!r}")
    target_palette, target_textures = dict(TARGET_PALETTE), dict(TARGET_TEXTURES)
    if material_set == "v2":
        target_palette.update(TARGET_PALETTE_V2)
        target_textures.update(TARGET_TEXTURES_V2)
    source_colours, source_count = _palette_array(SOURCE_PALETTE)
    target_colours, target_count = _palette_array(target_palette)
    source_texture, source_scale, source_strength = _texture_arrays(SOURCE_TEXTURES)
    target_texture, target_scale, target_strength = _texture_arrays(target_textures)
    return MaterialTables(
        source_colours,
        source_count,
        target_colours,
        target_count,
        source_texture,
        source_scale,
        source_strength,
        target_texture,
        target_scale,
        target_strength,
    )


# --- Textures -------------------------------------------------------------------------------


def _normalise(texture: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation, clipped to +-3 (float32)."""
    texture = texture.astype(np.float64)
    texture = texture - texture.mean()
    texture = texture / max(float(texture.std()), 1e-6)
    return np.clip(texture, -3.0, 3.0).astype(np.float32)


def _value_noise(rng: np.random.Generator, cell: int, size: int = TEXTURE_SIZE) -> np.ndarray:
    """Tileable smooth noise [size, size]: random values on a grid every `cell` pixels,
    bilinearly interpolated."""
    grid = rng.standard_normal((size // cell, size // cell))
    grid = np.concatenate([grid, grid[:1]], axis=0)
    grid = np.concatenate([grid, grid[:, :1]], axis=1)
    position = np.arange(size) / cell
    low = np.floor(position).astype(np.int64)
    weight = (position - low).astype(np.float64)
    weight = weight * weight * (3 - 2 * weight)  # smoothstep: no visible grid creases
    rows = grid[low] * (1 - weight)[:, None] + grid[low + 1] * weight[:, None]
    return rows[:, low] * (1 - weight)[None, :] + rows[:, low + 1] * weight[None, :]


def _procedural_textures() -> list[np.ndarray]:
    """The source domain's clean, regular "game" textures [TEXTURE_SIZE, TEXTURE_SIZE]."""
    rng = np.random.default_rng(20240611)
    size = TEXTURE_SIZE
    rows, columns = np.mgrid[0:size, 0:size]
    flat = np.zeros((size, size), dtype=np.float32)
    smooth = _value_noise(rng, 32)
    fine = _value_noise(rng, 4) + 0.5 * _value_noise(rng, 16)
    # Bricks: 32x16 px with mortar lines, every other row offset by half a brick.
    brick_row = rows // 16
    brick_column = (columns + (brick_row % 2) * 16) // 32
    brick_tone = rng.uniform(-0.4, 0.4, (size // 16 + 1, size // 32 + 2))[brick_row, brick_column]
    mortar = ((rows % 16) < 2) | (((columns + (brick_row % 2) * 16) % 32) < 2)
    bricks = np.where(mortar, -2.0, brick_tone)
    tiles = np.where(((rows % 32) < 2) | ((columns % 32) < 2), -2.0, 0.0)
    tiles = tiles + 0.3 * rng.uniform(-1, 1, (size // 32, size // 32))[rows // 32, columns // 32]
    planks = np.where((columns % 16) < 2, -2.0, 0.0) + 0.3 * _value_noise(rng, 8)
    leaves_noise = _value_noise(rng, 8) + 0.5 * _value_noise(rng, 4)
    leaves = np.where(leaves_noise > 0.3, 1.0, -1.0) + 0.3 * leaves_noise
    textures = [flat, smooth, fine, bricks, tiles, planks, leaves]
    return [flat] + [_normalise(texture) for texture in textures[1:]]


def _skimage_data_dir() -> Path | None:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data"


# name -> (file in skimage/data, crop box (left, upper, right, lower) or None)
_PHOTO_SOURCES: dict[str, tuple[str, tuple[int, int, int, int] | None]] = {
    "gravel": ("gravel.png", None),
    "brick": ("brick.png", None),
    "grass": ("grass.png", None),
    "moon": ("moon.png", (0, 0, 256, 256)),
    "wood": ("coffee.png", (0, 0, 180, 110)),
    "fur": ("chelsea.png", (10, 180, 160, 300)),
}


def _photo_textures() -> list[np.ndarray]:
    """Detail maps from scikit-image's sample photos: grey, high-passed, [SIZE, SIZE].

    High-passing removes each photo's illumination gradient so that only the surface detail
    modulates the material colour. A missing file (a stripped scikit-image) falls back to a
    fixed noise texture, so generation never needs the network.
    """
    directory = _skimage_data_dir()
    rng = np.random.default_rng(7)
    textures = []
    for name in PHOTO_TEXTURES:
        file_name, crop = _PHOTO_SOURCES[name]
        path = directory / file_name if directory is not None else None
        if path is None or not path.is_file():
            textures.append(_normalise(_value_noise(rng, 4) + _value_noise(rng, 16)))
            continue
        with Image.open(path) as opened:
            photo = opened.convert("L")
        if crop is not None:
            photo = photo.crop(crop)
        photo = photo.resize((TEXTURE_SIZE, TEXTURE_SIZE), Image.Resampling.BILINEAR)
        low = photo.filter(ImageFilter.GaussianBlur(12))
        detail = np.asarray(photo, dtype=np.float32) - np.asarray(low, dtype=np.float32)
        if name == "brick":  # the photo's bricks stand upright; walls and pavements lay them flat
            detail = detail.T
        textures.append(_normalise(detail))
    return textures


MIP_LEVELS = 6


def _periodic_blur(textures: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of tileable textures [K, T, T] with wrap-around, through the FFT."""
    rows = np.fft.fftfreq(TEXTURE_SIZE)
    columns = np.fft.rfftfreq(TEXTURE_SIZE)
    squared = rows[:, None] ** 2 + columns[None, :] ** 2
    response = np.exp(-2.0 * np.pi**2 * sigma**2 * squared)
    spectrum = np.fft.rfft2(textures)
    return np.fft.irfft2(spectrum * response, s=textures.shape[-2:])


@lru_cache(maxsize=1)
def texture_bank() -> np.ndarray:
    """All textures at MIP_LEVELS levels of detail.

    Level l is the texture blurred over about 2**l of its pixels, for surfaces where one image
    pixel covers that many texture pixels (mip-mapping): sampling the sharp texture there
    would alias into noise.

    Returns:
        float32 [MIP_LEVELS, len(TEXTURE_NAMES), TEXTURE_SIZE, TEXTURE_SIZE], zero mean.
    """
    sharp = np.stack(_procedural_textures() + _photo_textures()).astype(np.float32)
    levels = [sharp] + [_periodic_blur(sharp, 0.5 * 2**level) for level in range(1, MIP_LEVELS)]
    return np.stack(levels).astype(np.float32)
