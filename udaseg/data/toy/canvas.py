"""The drawing surface of the toy scenes: classes, camera, part table and primitives.

World coordinates are metres: X to the right, Y up, Z forward; the camera sits at
(0, camera height, 0) looking along +Z with its optical axis level, so the horizon is one image
row.

Drawing produces no colours. Every primitive is filled with the integer id of a *part* into one
int32 map (PIL mode "I", C-speed polygon fills); the part table says each part's class,
instance, material, orientation, texture plane and random appearance numbers. `render.py` turns
the part map into a label map and an image for a given domain style.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from udaseg.data.toy.styles import MATERIAL

# --- Classes: Cityscapes train ids 0..18, then two toy-internal classes ----------------------
(
    ROAD,
    SIDEWALK,
    BUILDING,
    WALL,
    FENCE,
    POLE,
    TRAFFIC_LIGHT,
    TRAFFIC_SIGN,
    VEGETATION,
    TERRAIN,
    SKY,
    PERSON,
    RIDER,
    CAR,
    TRUCK,
    BUS,
    TRAIN,
    MOTORCYCLE,
    BICYCLE,
) = range(19)
LANE_MARKING = 19  # road in Cityscapes labelIds, class 22 ("lanemarking", void) in SYNTHIA
EGO_VEHICLE = 20  # Cityscapes labelId 1 (void): the hood at the bottom of target images
NUM_INTERNAL_CLASSES = 21

# Which way a part's surface faces; the style turns this into a shading factor.
FACE_FRONT = 0  # towards the camera (normal -Z)
FACE_POSITIVE_X = 1  # normal +X: the left side of the street, facing the road
FACE_NEGATIVE_X = 2  # normal -X
FACE_TOP = 3
FACE_BOTTOM = 4
FACE_GROUND = 5
FACE_EMISSIVE = 6  # sky and lamps: not shaded, not fogged

# The plane a part's texture is laid on (texture coordinates are metres on that plane).
MAP_GROUND = 0  # horizontal plane Y = plane: coordinates (X, Z)
MAP_SIDE = 1  # vertical plane X = plane: coordinates (Z, Y)
MAP_FRONT = 2  # vertical plane Z = plane: coordinates (X, Y); also billboards at depth `plane`

PATTERN_NONE = 0
PATTERN_WINDOWS = 1  # args: spacing u, spacing v, fill u, fill v, lowest v, highest v
PATTERN_SLATS = 2  # args: spacing u, fill u

Z_NEAR = 0.8  # metres; polygons are clipped to Z >= Z_NEAR before projection
Z_FAR = 170.0  # where the street ends in a skyline


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at render resolution.

    Attributes:
        width, height: render size in pixels.
        focal: focal length in pixels.
        centre_u: column of the principal point.
        horizon_v: row of the horizon (the optical axis is level).
        elevation: camera height above the road in metres.
    """

    width: int
    height: int
    focal: float
    centre_u: float
    horizon_v: float
    elevation: float

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points [N, 3] (Z > 0) -> pixel coordinates [N, 2] (u, v)."""
        points = np.asarray(points, dtype=np.float64)
        depth = points[:, 2]
        u = self.centre_u + self.focal * points[:, 0] / depth
        v = self.horizon_v + self.focal * (self.elevation - points[:, 1]) / depth
        return np.stack([u, v], axis=1)

    def project_point(self, x: float, y: float, z: float) -> tuple[float, float]:
        """One world point (Z > 0) -> pixel (u, v); plain Python, for the many small calls."""
        return (
            self.centre_u + self.focal * x / z,
            self.horizon_v + self.focal * (self.elevation - y) / z,
        )

    def scale(self, depth: float) -> float:
        """Pixels per metre of a billboard at `depth`."""
        return self.focal / depth

    def ground_row(self, depth: float, height: float = 0.0) -> float:
        """Image row of a point at `height` metres and `depth` metres."""
        return self.horizon_v + self.focal * (self.elevation - height) / depth


@dataclass
class PartTable:
    """Attributes of every part drawn into a part map (one row per part id).

    Columns (after `arrays()`): klass uint8 [P], instance int32 [P], material uint8 [P],
    face uint8 [P], mapping uint8 [P], plane float32 [P], pattern uint8 [P],
    pattern_args float32 [P, 6], tone float32 [P, 6] (uniform random numbers that pick the
    palette entry, brightness, colour jitter and texture offset), gradient float32 [P]
    (relative brightness change per image height, for sky and shadows).
    """

    rows: list[tuple] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        """The table as one array per column (see the class docstring)."""
        columns = list(zip(*self.rows, strict=True))
        return {
            "klass": np.asarray(columns[0], dtype=np.uint8),
            "instance": np.asarray(columns[1], dtype=np.int32),
            "material": np.asarray(columns[2], dtype=np.uint8),
            "face": np.asarray(columns[3], dtype=np.uint8),
            "mapping": np.asarray(columns[4], dtype=np.uint8),
            "plane": np.asarray(columns[5], dtype=np.float32),
            "pattern": np.asarray(columns[6], dtype=np.uint8),
            "pattern_args": np.asarray(columns[7], dtype=np.float32).reshape(-1, 6),
            "tone": np.asarray(columns[8], dtype=np.float32).reshape(-1, 6),
            "gradient": np.asarray(columns[9], dtype=np.float32),
        }


class Canvas:
    """A part map being drawn, with its part table and the camera."""

    def __init__(self, camera: Camera, rng: np.random.Generator) -> None:
        self.camera = camera
        self.rng = rng
        self.image = Image.new("I", (camera.width, camera.height), 0)
        self.draw = ImageDraw.Draw(self.image)
        self.parts = PartTable()
        self._next_instance = 1
        # Multipliers of object proportions for this domain (version 2's target; see
        # `scene.SHAPE_FACTORS`); empty = the proportions as drawn.
        self.shape: dict[str, float] = {}
        # Part 0 fills the image before anything is drawn: the sky.
        self.part(SKY, "sky", face=FACE_EMISSIVE, mapping=MAP_FRONT, plane=2000.0, gradient=0.6)

    def new_instance(self) -> int:
        """A fresh instance id (1, 2, ...) for the parts of one object."""
        self._next_instance += 1
        return self._next_instance - 1

    def tone(self) -> np.ndarray:
        """Random appearance numbers for one instance (shared by its parts of one material)."""
        return self.rng.random(6)

    def part(
        self,
        klass: int,
        material: str,
        tone: np.ndarray | None = None,
        *,
        instance: int = 0,
        face: int = FACE_FRONT,
        mapping: int = MAP_FRONT,
        plane: float = 10.0,
        pattern: int = PATTERN_NONE,
        pattern_args: tuple[float, ...] = (),
        gradient: float = 0.0,
    ) -> int:
        """Register a part and return its id (the fill value of its primitives)."""
        if tone is None:
            tone = self.tone()
        arguments = tuple(pattern_args) + (0.0,) * (6 - len(pattern_args))
        self.parts.rows.append(
            (
                klass,
                instance,
                MATERIAL[material],
                face,
                mapping,
                plane,
                pattern,
                arguments,
                tone,
                gradient,
            )
        )
        return len(self.parts.rows) - 1

    # -- primitives ---------------------------------------------------------------------------

    def polygon_world(self, part: int, points: np.ndarray | list) -> None:
        """Fill a planar world polygon [N, 3], clipped to Z >= Z_NEAR."""
        points = [tuple(point) for point in points]
        if any(point[2] < Z_NEAR for point in points):
            points = _clip_near(points)
            if len(points) < 3:
                return
        project = self.camera.project_point
        self.draw.polygon([project(x, y, z) for x, y, z in points], fill=part)

    def polygon_image(self, part: int, points: np.ndarray | list) -> None:
        """Fill an image-space polygon [N, 2] (render pixels)."""
        self.draw.polygon(
            [tuple(p) for p in np.asarray(points, dtype=np.float64).tolist()], fill=part
        )

    def ellipse_image(
        self, part: int, centre: tuple[float, float], radii: tuple[float, float]
    ) -> None:
        """Fill an axis-aligned ellipse (render pixels; radii at least half a pixel)."""
        u, v = centre
        ru, rv = max(radii[0], 0.5), max(radii[1], 0.5)
        self.draw.ellipse([u - ru, v - rv, u + ru, v + rv], fill=part)

    def ring_image(
        self, part: int, centre: tuple[float, float], radii: tuple[float, float], width: float
    ) -> None:
        """Draw an ellipse's outline `width` pixels wide (a tyre)."""
        u, v = centre
        ru, rv = max(radii[0], 0.5), max(radii[1], 0.5)
        self.draw.ellipse(
            [u - ru, v - rv, u + ru, v + rv], outline=part, width=max(1, int(round(width)))
        )

    def line_image(self, part: int, points: list[tuple[float, float]], width: float) -> None:
        """Draw a polyline `width` pixels wide with round joints (frames, arms, legs)."""
        self.draw.line(points, fill=part, width=max(1, int(round(width))), joint="curve")


def _clip_near(points: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """Sutherland-Hodgman clipping of a polygon [N, 3] against the plane Z = Z_NEAR."""
    result = []
    count = len(points)
    for index in range(count):
        current, following = points[index], points[(index + 1) % count]
        current_in, following_in = current[2] >= Z_NEAR, following[2] >= Z_NEAR
        if current_in:
            result.append(current)
        if current_in != following_in:
            t = (Z_NEAR - current[2]) / (following[2] - current[2])
            result.append(tuple(a + t * (b - a) for a, b in zip(current, following, strict=True)))
    return result
