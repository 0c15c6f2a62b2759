"""Procedural street scenes seen by a pinhole camera.

A scene is a straight street to the vanishing point: a ground plane (road with lane marks,
zebra crossings, curbs, sidewalks, grass verges), a row of facades, walls, fences and hedges
on each side, a skyline far away, and objects (`objects.py`) placed where they belong: cars
in the lanes and parked along the curbs, persons on the sidewalks and the zebra, riders in the
right lane, lamp posts, signs and traffic lights on the sidewalk's edge, trees in rows. They are
drawn back to front (painter's algorithm) into a `Canvas` (`canvas.py`).

`LayoutParams` holds what differs between domains: the horizon, the camera height and the
expected number of objects of each kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from udaseg.data.toy.canvas import (
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    FACE_BOTTOM,
    FACE_FRONT,
    FACE_GROUND,
    FACE_NEGATIVE_X,
    FACE_POSITIVE_X,
    FACE_TOP,
    FENCE,
    LANE_MARKING,
    MAP_FRONT,
    MAP_GROUND,
    MAP_SIDE,
    MOTORCYCLE,
    PATTERN_NONE,
    PATTERN_SLATS,
    PATTERN_WINDOWS,
    ROAD,
    SIDEWALK,
    TERRAIN,
    TRAIN,
    TRUCK,
    VEGETATION,
    WALL,
    Z_FAR,
    Z_NEAR,
    Camera,
    Canvas,
)
from udaseg.data.toy.objects import (
    draw_car,
    draw_ego_vehicle,
    draw_lamp_post,
    draw_large_vehicle,
    draw_light_post,
    draw_rider,
    draw_sign_post,
    draw_tree,
    draw_two_wheeler,
    draw_walker,
    draw_walker_on_road,
)

# --- Layout parameters ------------------------------------------------------------------------

DEFAULT_RATES: dict[str, float] = {
    # expected number per image (or probability per street side where noted)
    "cars": 3.0,  # moving cars in the lanes
    "parked_cars": 0.55,  # probability that a street side has a row of parked cars
    "trucks": 0.5,
    "buses": 0.3,
    "trains": 0.05,  # trams
    "persons": 4.0,
    "riders": 0.9,
    "bicycles": 0.8,  # parked bicycles
    "motorcycles": 0.5,  # parked motorcycles
    "lamps": 1.0,  # lamp posts: 1 = the usual spacing
    "signs": 1.6,
    "traffic_lights": 0.6,  # probability of lights at a crossing or a pedestrian crossing
    "trees": 0.55,  # probability that a street side has a row of trees
    "terrain": 0.45,  # probability that a street side has grass verges or gardens
    "cross_street": 0.5,  # probability of a crossing street
}


@dataclass(frozen=True)
class LayoutParams:
    """How scenes of one domain are laid out.

    Attributes:
        horizon: horizon row as a fraction of the image height.
        horizon_jitter: uniform +- jitter of `horizon` per image.
        camera_height: (low, high) metres, uniform per image.
        focal: focal length as a fraction of the image width.
        rates: expected object counts / probabilities, see `DEFAULT_RATES`.
        excluded: classes that must not appear (SYNTHIA has no terrain, truck or train).
        ego_vehicle: height of the ego-vehicle hood as a fraction of the image height (0: none).
        shape: multipliers of object proportions (`SHAPE_FACTORS`); empty = as drawn.
    """

    horizon: float = 0.44
    horizon_jitter: float = 0.03
    camera_height: tuple[float, float] = (1.45, 1.8)
    focal: float = 0.85
    rates: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RATES))
    excluded: frozenset[int] = frozenset()
    ego_vehicle: float = 0.0
    shape: dict[str, float] = field(default_factory=dict)

    def rate(self, name: str) -> float:
        """The expected count or probability `name` (see `DEFAULT_RATES`)."""
        return self.rates.get(name, DEFAULT_RATES[name])

    def with_changes(
        self,
        horizon_shift: float = 0.0,
        camera_height_shift: float = 0.0,
        frequency: dict[str, float] | None = None,
        ego_vehicle: float | None = None,
        shape: dict[str, float] | None = None,
    ) -> LayoutParams:
        """A shifted copy (the target domain's mild layout shift)."""
        rates = dict(self.rates)
        for name, multiplier in (frequency or {}).items():
            if name not in DEFAULT_RATES:
                raise ValueError(
                    f"unknown object frequency {name!r}; known: {sorted(DEFAULT_RATES)}"
                )
            rates[name] = self.rate(name) * multiplier
        low, high = self.camera_height
        return replace(
            self,
            horizon=self.horizon + horizon_shift,
            camera_height=(low + camera_height_shift, high + camera_height_shift),
            rates=rates,
            ego_vehicle=self.ego_vehicle if ego_vehicle is None else ego_vehicle,
            shape=dict(self.shape) if shape is None else _checked_shape(shape),
        )


SYNTHIA_EXCLUDED = frozenset({TERRAIN, TRUCK, TRAIN})

# Object proportions a domain may change (multipliers; version 2's target: boxier, shorter cars,
# taller and slimmer people, taller buses, shorter trucks).
SHAPE_FACTORS = (
    "car_height",
    "car_length",
    "person_height",
    "person_width",
    "bus_height",
    "truck_length",
)


def _checked_shape(shape: dict[str, float]) -> dict[str, float]:
    for name in shape:
        if name not in SHAPE_FACTORS:
            raise ValueError(f"unknown object shape {name!r}; known: {list(SHAPE_FACTORS)}")
    return dict(shape)


# --- The street -------------------------------------------------------------------------------


@dataclass
class Side:
    """One side of the street. `sign` is -1 (left) or +1 (right); X grows away from the road
    as `sign * x` grows."""

    sign: int
    curb: float  # X of the curb (road edge)
    verge: float  # width of a grass verge between curb and sidewalk (0: none)
    sidewalk: float  # sidewalk width
    garden: float  # width of grass between sidewalk and facades (0: none)
    beyond_is_terrain: bool  # ground behind walls/fences/in gaps

    @property
    def sidewalk_inner(self) -> float:
        return self.curb + self.sign * self.verge

    @property
    def sidewalk_outer(self) -> float:
        return self.sidewalk_inner + self.sign * self.sidewalk

    @property
    def facade(self) -> float:
        return self.sidewalk_outer + self.sign * self.garden


@dataclass
class Street:
    """The layout of one street: lanes (X centres and directions), the two sides, parking
    lanes, an optional crossing street and zebra (Z ranges), and the lane space vehicles took.
    """

    lanes: list[float]  # lane centres (X)
    lane_directions: list[int]  # +1 driving away from the camera, -1 towards it
    lane_width: float
    left: Side
    right: Side
    parking_left: bool
    parking_right: bool
    cross: tuple[float, float] | None  # Z range of a crossing street
    crosswalk: tuple[float, float] | None  # Z range of a zebra crossing
    occupied: dict[int, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def road_left(self) -> float:
        return self.left.curb

    @property
    def road_right(self) -> float:
        return self.right.curb

    @property
    def own_lanes(self) -> list[float]:
        """Centres of the lanes driving away from the camera."""
        return [x for x, d in zip(self.lanes, self.lane_directions, strict=True) if d > 0]

    def side(self, sign: int) -> Side:
        return self.left if sign < 0 else self.right

    def in_cross(self, z0: float, z1: float, margin: float = 0.0) -> bool:
        if self.cross is None:
            return False
        return z1 > self.cross[0] - margin and z0 < self.cross[1] + margin

    def reserve(self, lane: int, z0: float, z1: float) -> bool:
        """Claim the Z range [z0, z1] of a lane for a vehicle; False if it overlaps another."""
        taken = self.occupied.setdefault(lane, [])
        if any(z1 > a - 1.5 and z0 < b + 1.5 for a, b in taken):
            return False
        taken.append((z0, z1))
        return True


def sample_street(rng: np.random.Generator, params: LayoutParams) -> Street:
    """A random street: 2-4 lanes (one-way now and then), the camera in one of its own lanes,
    parking lanes, sidewalks, grass verges and gardens, perhaps a crossing and a zebra."""
    lane_width = rng.uniform(2.9, 3.5)
    count = int(rng.choice([2, 2, 3, 4, 4]))
    one_way = rng.random() < 0.2
    if one_way:
        directions = [1] * count
    else:
        oncoming = count // 2
        directions = [-1] * oncoming + [1] * (count - oncoming)
    own_lanes = [index for index, direction in enumerate(directions) if direction > 0]
    camera_lane = int(rng.choice(own_lanes))
    # Lane centres relative to the camera's lane, plus a little lateral offset inside it.
    offset = rng.uniform(-0.4, 0.4)
    lanes = [(index - camera_lane) * lane_width - offset for index in range(count)]
    parking_left = bool(rng.random() < 0.5)
    parking_right = bool(rng.random() < 0.6)
    road_left = lanes[0] - lane_width / 2 - (2.3 if parking_left else 0.3)
    road_right = lanes[-1] + lane_width / 2 + (2.3 if parking_right else 0.3)
    allow_terrain = TERRAIN not in params.excluded

    def make_side(sign: int, curb: float) -> Side:
        has_terrain = allow_terrain and rng.random() < params.rate("terrain")
        verge = rng.uniform(1.0, 3.0) if has_terrain and rng.random() < 0.5 else 0.0
        garden = (
            rng.uniform(1.5, 6.0) if has_terrain and (verge == 0 or rng.random() < 0.3) else 0.0
        )
        return Side(
            sign=sign,
            curb=curb,
            verge=verge,
            sidewalk=rng.uniform(2.0, 5.0),
            garden=garden,
            beyond_is_terrain=allow_terrain and rng.random() < 0.5,
        )

    cross = None
    crosswalk = None
    if rng.random() < params.rate("cross_street"):
        start = rng.uniform(14.0, 55.0)
        cross = (start, start + rng.uniform(10.0, 16.0))
        if rng.random() < 0.7:
            crosswalk = (cross[0] - 4.5, cross[0] - 1.5)
    elif rng.random() < 0.25:
        start = rng.uniform(8.0, 30.0)
        crosswalk = (start, start + 3.0)
    return Street(
        lanes=lanes,
        lane_directions=directions,
        lane_width=lane_width,
        left=make_side(-1, road_left),
        right=make_side(1, road_right),
        parking_left=parking_left,
        parking_right=parking_right,
        cross=cross,
        crosswalk=crosswalk,
    )


# --- Scene ------------------------------------------------------------------------------------


def make_camera(rng: np.random.Generator, params: LayoutParams, height: int, width: int) -> Camera:
    """A camera for one image: horizon, focal length and height jittered around `params`."""
    horizon = params.horizon + rng.uniform(-params.horizon_jitter, params.horizon_jitter)
    return Camera(
        width=width,
        height=height,
        focal=params.focal * width * rng.uniform(0.95, 1.05),
        centre_u=width / 2 + rng.uniform(-0.02, 0.02) * width,
        horizon_v=horizon * height,
        elevation=rng.uniform(*params.camera_height),
    )


def build_scene(rng: np.random.Generator, params: LayoutParams, height: int, width: int) -> Canvas:
    """Draw one random street scene into a part map of [height, width] render pixels."""
    camera = make_camera(rng, params, height, width)
    canvas = Canvas(camera, rng)
    canvas.shape = dict(params.shape)
    street = sample_street(rng, params)
    _draw_skyline(canvas, street)
    _draw_ground(canvas, street)
    for sign in (-1, 1):
        _draw_roadside(canvas, street, street.side(sign), params)
    objects: list[tuple[float, int, object]] = []
    _place_objects(canvas, street, params, objects)
    # Painter's algorithm: far objects first; the index keeps the order deterministic.
    for _, _, draw in sorted(objects, key=lambda item: (-item[0], item[1])):
        draw()
    if params.ego_vehicle > 0:
        draw_ego_vehicle(canvas, params.ego_vehicle)
    return canvas


# --- Ground -----------------------------------------------------------------------------------


def _ground_part(canvas: Canvas, klass: int, material: str, height: float = 0.0, tone=None) -> int:
    return canvas.part(klass, material, tone, face=FACE_GROUND, mapping=MAP_GROUND, plane=height)


def _strip(canvas: Canvas, part: int, x0: float, x1: float, z0: float, z1: float, y: float = 0.0):
    canvas.polygon_world(part, [(x0, y, z0), (x1, y, z0), (x1, y, z1), (x0, y, z1)])


def _draw_ground(canvas: Canvas, street: Street) -> None:
    road_tone = canvas.tone()
    road = _ground_part(canvas, ROAD, "asphalt", tone=road_tone)
    far = 400.0
    # Everything below the horizon starts as road; strips then paint the roadsides.
    _strip(canvas, road, -far, far, Z_NEAR, Z_FAR)
    sidewalk_tone = canvas.tone()
    curb_tone = canvas.tone()
    grass_tone = canvas.tone()
    for side in (street.left, street.right):
        s = side.sign
        sidewalk = _ground_part(canvas, SIDEWALK, "pavement", 0.15, sidewalk_tone)
        beyond_class = TERRAIN if side.beyond_is_terrain else SIDEWALK
        beyond = _ground_part(
            canvas,
            beyond_class,
            "grass" if side.beyond_is_terrain else "pavement",
            0.15,
            grass_tone if side.beyond_is_terrain else sidewalk_tone,
        )
        _strip(canvas, beyond, side.facade, s * far, Z_NEAR, Z_FAR, 0.15)
        _strip(canvas, sidewalk, side.sidewalk_inner, side.sidewalk_outer, Z_NEAR, Z_FAR, 0.15)
        if side.verge > 0:
            verge = _ground_part(canvas, TERRAIN, "grass", 0.15, grass_tone)
            _strip(canvas, verge, side.curb, side.sidewalk_inner, Z_NEAR, Z_FAR, 0.15)
        if side.garden > 0:
            garden = _ground_part(canvas, TERRAIN, "grass", 0.15, grass_tone)
            _strip(canvas, garden, side.sidewalk_outer, side.facade, Z_NEAR, Z_FAR, 0.15)
        # The curb's vertical face, 15 cm high, facing the road (labelled sidewalk).
        curb = canvas.part(
            SIDEWALK,
            "curb",
            curb_tone,
            face=FACE_POSITIVE_X if s < 0 else FACE_NEGATIVE_X,
            mapping=MAP_SIDE,
            plane=side.curb,
        )
        canvas.polygon_world(
            curb,
            [
                (side.curb, 0, Z_NEAR),
                (side.curb, 0.15, Z_NEAR),
                (side.curb, 0.15, Z_FAR),
                (side.curb, 0, Z_FAR),
            ],
        )
    if street.cross is not None:
        z0, z1 = street.cross
        _strip(canvas, road, -far, far, z0, z1)
    _draw_lane_marks(canvas, street)


def _draw_lane_marks(canvas: Canvas, street: Street) -> None:
    rng = canvas.rng
    paint_tone = canvas.tone()
    white = paint_tone.copy()
    white[0] = 0.0  # the first palette entry is white; the second yellow
    marks = _ground_part(canvas, LANE_MARKING, "lane_paint", tone=white)
    centre_paint = marks
    if rng.random() < 0.5:  # a yellow centre line, as on American (and GTA) roads
        yellow = paint_tone.copy()
        yellow[0] = 0.99
        centre_paint = _ground_part(canvas, LANE_MARKING, "lane_paint", tone=yellow)
    width = rng.uniform(0.12, 0.2)
    dash, gap = rng.uniform(2.0, 4.0), rng.uniform(4.0, 8.0)
    phase = rng.uniform(0, dash + gap)
    boundaries = [(street.lanes[i] + street.lanes[i + 1]) / 2 for i in range(len(street.lanes) - 1)]
    for i, x in enumerate(boundaries):
        centre_line = street.lane_directions[i] != street.lane_directions[i + 1]
        part = centre_paint if centre_line else marks
        solid = centre_line and rng.random() < 0.5
        z = Z_NEAR - phase
        while z < 90.0:
            z0, z1 = (z, z + 20.0) if solid else (z, z + dash)
            if not street.in_cross(z0, z1):
                _strip(canvas, part, x - width / 2, x + width / 2, max(z0, Z_NEAR), z1)
            z += 20.0 if solid else dash + gap
    # Edge lines separating parking lanes from traffic.
    for parked, x in (
        (street.parking_left, street.lanes[0] - street.lane_width / 2),
        (street.parking_right, street.lanes[-1] + street.lane_width / 2),
    ):
        if parked and rng.random() < 0.6:
            segments = [(Z_NEAR, 90.0)]
            if street.cross is not None:
                segments = [(Z_NEAR, street.cross[0]), (street.cross[1], 90.0)]
            for z0, z1 in segments:
                _strip(canvas, marks, x - 0.06, x + 0.06, z0, z1)
    if street.crosswalk is not None:
        z0, z1 = street.crosswalk
        x = street.road_left + 0.3
        while x < street.road_right - 0.5:
            _strip(canvas, marks, x, x + 0.5, z0, z1)
            x += 1.0
        # The stop line in front of it, on the camera's side.
        own = street.own_lanes
        _strip(
            canvas,
            marks,
            min(own) - street.lane_width / 2,
            max(own) + street.lane_width / 2,
            z0 - 1.6,
            z0 - 1.2,
        )


# --- Skyline and roadsides --------------------------------------------------------------------


def _draw_skyline(canvas: Canvas, street: Street) -> None:
    """Far buildings and tree lines across the end of the street, at Z_FAR."""
    rng = canvas.rng
    x = -220.0
    while x < 220.0:
        width = rng.uniform(8.0, 30.0)
        if rng.random() < 0.7:
            height = rng.uniform(8.0, 45.0)
            part = canvas.part(BUILDING, "skyline", face=FACE_FRONT, mapping=MAP_FRONT, plane=Z_FAR)
            canvas.polygon_world(
                part,
                [
                    (x, 0, Z_FAR),
                    (x + width, 0, Z_FAR),
                    (x + width, height, Z_FAR),
                    (x, height, Z_FAR),
                ],
            )
        else:
            part = canvas.part(
                VEGETATION, "foliage", face=FACE_FRONT, mapping=MAP_FRONT, plane=Z_FAR
            )
            scale = canvas.camera.scale(Z_FAR)
            base = canvas.camera.project_point(x + width / 2, 0.0, Z_FAR)
            for _ in range(3):
                radius = rng.uniform(3.0, 7.0)
                du = rng.uniform(-width / 2, width / 2) * scale
                centre_height = rng.uniform(radius, radius + 6.0)
                canvas.ellipse_image(
                    part,
                    (base[0] + du, base[1] - centre_height * scale),
                    (radius * scale * 1.2, radius * scale),
                )
            canvas.polygon_world(
                part, [(x, 0, Z_FAR), (x + width, 0, Z_FAR), (x + width, 4, Z_FAR), (x, 4, Z_FAR)]
            )
        x += width


def _building(
    canvas: Canvas,
    x_face: float,
    z0: float,
    z1: float,
    height: float,
    sign: int,
    depth: float,
    instance: int,
) -> None:
    """A building block: its facade along the street (plane X = x_face) and the end wall facing
    the camera (plane Z = z0), both with a window grid."""
    rng = canvas.rng
    tone = canvas.tone()
    floor = rng.uniform(2.8, 3.6)
    spacing = rng.uniform(2.0, 4.0)
    windows = (
        spacing,
        floor,
        rng.uniform(0.35, 0.7),
        rng.uniform(0.4, 0.65),
        rng.uniform(0.8, floor),
        height - rng.uniform(0.5, 2.0),
    )
    pattern = PATTERN_WINDOWS if rng.random() < 0.9 else PATTERN_NONE
    face = canvas.part(
        BUILDING,
        "facade",
        tone,
        instance=instance,
        face=FACE_POSITIVE_X if sign < 0 else FACE_NEGATIVE_X,
        mapping=MAP_SIDE,
        plane=x_face,
        pattern=pattern,
        pattern_args=windows,
    )
    canvas.polygon_world(
        face, [(x_face, 0, z0), (x_face, 0, z1), (x_face, height, z1), (x_face, height, z0)]
    )
    end = canvas.part(
        BUILDING,
        "facade",
        tone,
        instance=instance,
        face=FACE_FRONT,
        mapping=MAP_FRONT,
        plane=z0,
        pattern=pattern,
        pattern_args=windows,
    )
    x_back = x_face + sign * depth
    canvas.polygon_world(
        end, [(x_face, 0, z0), (x_back, 0, z0), (x_back, height, z0), (x_face, height, z0)]
    )
    # A roof edge / cornice in a different material now and then.
    if rng.random() < 0.35:
        cornice = canvas.part(
            BUILDING,
            "wall_stone",
            instance=instance,
            face=FACE_BOTTOM,
            mapping=MAP_SIDE,
            plane=x_face,
        )
        overhang = -sign * 0.4
        canvas.polygon_world(
            cornice,
            [
                (x_face, height, z0),
                (x_face, height, z1),
                (x_face + overhang, height + 0.6, z1),
                (x_face + overhang, height + 0.6, z0),
            ],
        )


def _low_barrier(
    canvas: Canvas,
    klass: int,
    material: str,
    x: float,
    z0: float,
    z1: float,
    height: float,
    sign: int,
) -> None:
    """A wall, fence or hedge along the street: its face towards the road, its top and its end
    facing the camera."""
    rng = canvas.rng
    tone = canvas.tone()
    thickness = 0.3 if klass != VEGETATION else rng.uniform(0.6, 1.2)
    pattern, arguments = PATTERN_NONE, ()
    if klass == FENCE:
        pattern, arguments = PATTERN_SLATS, (rng.uniform(0.12, 0.4), rng.uniform(0.4, 0.8))
    face = canvas.part(
        klass,
        material,
        tone,
        face=FACE_POSITIVE_X if sign < 0 else FACE_NEGATIVE_X,
        mapping=MAP_SIDE,
        plane=x,
        pattern=pattern,
        pattern_args=arguments,
    )
    top = canvas.part(klass, material, tone, face=FACE_TOP, mapping=MAP_GROUND, plane=height)
    end = canvas.part(
        klass,
        material,
        tone,
        face=FACE_FRONT,
        mapping=MAP_FRONT,
        plane=z0,
        pattern=pattern,
        pattern_args=arguments,
    )
    x_back = x + sign * thickness
    canvas.polygon_world(end, [(x, 0, z0), (x_back, 0, z0), (x_back, height, z0), (x, height, z0)])
    canvas.polygon_world(
        top, [(x, height, z0), (x_back, height, z0), (x_back, height, z1), (x, height, z1)]
    )
    canvas.polygon_world(face, [(x, 0, z0), (x, 0, z1), (x, height, z1), (x, height, z0)])


def _draw_roadside(canvas: Canvas, street: Street, side: Side, params: LayoutParams) -> None:
    """Segments of facades, walls, fences and hedges from the camera to Z_FAR."""
    rng = canvas.rng
    s = side.sign
    segments = []
    z = Z_NEAR - rng.uniform(0.0, 12.0)
    after_cross = False
    while z < Z_FAR:
        if street.cross is not None and street.cross[0] <= z + 30 and z < street.cross[1]:
            # The crossing street interrupts the row; the block after it is a deep building
            # whose end wall lines the crossing street.
            if z < street.cross[0]:
                segments.append(("building", z, street.cross[0]))
            z = street.cross[1]
            after_cross = True
            continue
        length = rng.uniform(8.0, 30.0) + 0.15 * max(z, 0.0)
        if street.cross is not None and z < street.cross[0] < z + length:
            length = street.cross[0] - z
        roll = rng.random()
        if after_cross or roll < 0.62:
            kind = "building"
        elif roll < 0.72:
            kind = "wall"
        elif roll < 0.84:
            kind = "fence"
        else:
            kind = "hedge"
        segments.append((kind, z, min(z + length, Z_FAR)))
        after_cross = False
        z += length
    for kind, z0, z1 in reversed(segments):  # far first
        if z1 <= Z_NEAR:
            continue
        x = side.facade
        if kind == "building":
            setback = rng.uniform(0.0, 2.0) if rng.random() < 0.5 else 0.0
            depth = (
                60.0
                if street.cross is not None and abs(z0 - street.cross[1]) < 1e-6
                else rng.uniform(10, 30)
            )
            _building(
                canvas,
                x + s * setback,
                z0,
                z1,
                rng.uniform(7.0, 28.0),
                s,
                depth,
                canvas.new_instance(),
            )
            continue
        # Something behind the barrier: a building set back, or trees.
        behind = x + s * rng.uniform(4.0, 14.0)
        if rng.random() < 0.55:
            _building(
                canvas,
                behind,
                z0,
                z1,
                rng.uniform(7.0, 25.0),
                s,
                rng.uniform(10, 30),
                canvas.new_instance(),
            )
        else:
            zt = z1 - rng.uniform(1.0, 5.0)
            while zt > max(z0, Z_NEAR + 1.0):
                draw_tree(canvas, behind - s * rng.uniform(0.0, 3.0), zt, rng.uniform(5.0, 11.0))
                zt -= rng.uniform(3.0, 8.0)
        if kind == "wall":
            _low_barrier(canvas, WALL, "wall_stone", x, z0, z1, rng.uniform(1.0, 3.0), s)
        elif kind == "fence":
            _low_barrier(canvas, FENCE, "fence", x, z0, z1, rng.uniform(1.0, 2.2), s)
        else:
            _low_barrier(canvas, VEGETATION, "foliage", x, z0, z1, rng.uniform(0.9, 2.2), s)


def _sample_depth(rng: np.random.Generator, near: float, far: float, power: float = 1.6) -> float:
    """A depth biased towards the camera (objects near the horizon are few and small)."""
    return near + (far - near) * rng.random() ** power


def _count(rng: np.random.Generator, rate: float) -> int:
    return int(rng.poisson(rate)) if rate > 0 else 0


def _place_objects(
    canvas: Canvas, street: Street, params: LayoutParams, objects: list[tuple[float, int, object]]
) -> None:
    """Sample the scene's objects; each is appended as (nearest depth, order, draw function)."""
    rng = canvas.rng

    def add(depth: float, function, *arguments) -> None:
        objects.append((depth, len(objects), lambda: function(*arguments)))

    excluded = params.excluded

    # Moving vehicles in the lanes.
    lane_vehicles = [("cars", CAR), ("trucks", TRUCK), ("buses", BUS), ("trains", TRAIN)]
    for rate_name, klass in lane_vehicles:
        if klass in excluded:
            continue
        for _ in range(_count(rng, params.rate(rate_name))):
            lane = int(rng.integers(0, len(street.lanes)))
            direction = street.lane_directions[lane]
            z = _sample_depth(rng, 5.0 if klass == CAR else 8.0, 80.0)
            length = {CAR: 5.0, TRUCK: 10.0, BUS: 12.5, TRAIN: 32.0}[klass]
            if street.in_cross(z, z + length, 1.0) or not street.reserve(lane, z, z + length):
                continue
            x = street.lanes[lane] + rng.uniform(-0.3, 0.3)
            if klass == CAR:
                add(z, draw_car, canvas, x, z, direction, canvas.new_instance())
            else:
                add(z, draw_large_vehicle, canvas, klass, x, z, direction, canvas.new_instance())
    # Cars crossing at the intersection, seen from the side.
    if street.cross is not None:
        for _ in range(_count(rng, 0.8 * params.rate("cars") / 3.0)):
            z = street.cross[0] + rng.uniform(1.0, street.cross[1] - street.cross[0] - 3.0)
            x = rng.uniform(street.road_left - 15.0, street.road_right + 15.0)
            add(z, draw_car, canvas, x, z, 0, canvas.new_instance())
    # Parked cars along the curbs.
    for sign, parking in ((-1, street.parking_left), (1, street.parking_right)):
        if not parking or rng.random() > params.rate("parked_cars"):
            continue
        x = street.side(sign).curb - sign * 1.2
        z = rng.uniform(3.0, 10.0)
        while z < 70.0:
            length = 5.0
            if not street.in_cross(z, z + length, 2.0) and not (
                street.crosswalk and street.crosswalk[0] - 6 < z < street.crosswalk[1] + 1
            ):
                add(
                    z,
                    draw_car,
                    canvas,
                    x + rng.uniform(-0.2, 0.2),
                    z,
                    int(rng.choice([1, 1, -1])),
                    canvas.new_instance(),
                )
            z += length + rng.uniform(0.8, 8.0) + (15.0 if rng.random() < 0.15 else 0.0)
    # Pedestrians on the sidewalks, a few crossing at the zebra.
    for _ in range(_count(rng, params.rate("persons"))):
        side = street.side(int(rng.choice([-1, 1])))
        z = _sample_depth(rng, 4.0, 60.0, 1.3)
        group = 1 + (rng.random() < 0.3) + (rng.random() < 0.1)
        for member in range(group):
            x = side.sidewalk_inner + side.sign * rng.uniform(0.3, max(side.sidewalk - 0.3, 0.4))
            zm = z + member * rng.uniform(0.5, 1.2)
            add(zm, draw_walker, canvas, x, zm, canvas.new_instance())
    if street.crosswalk is not None:
        for _ in range(_count(rng, 0.4 * params.rate("persons"))):
            z = rng.uniform(*street.crosswalk)
            x = rng.uniform(street.road_left, street.road_right)
            add(z, draw_walker_on_road, canvas, x, z, canvas.new_instance())
    # Riders on bicycles and motorcycles, mostly seen from behind in the right lane.
    for _ in range(_count(rng, params.rate("riders"))):
        klass = BICYCLE if rng.random() < 0.65 else MOTORCYCLE
        z = _sample_depth(rng, 5.0, 50.0, 1.4)
        if street.in_cross(z, z + 2.0):
            heading = rng.uniform(-0.3, 0.3)  # crossing: side view
            x = rng.uniform(street.road_left - 5.0, street.road_right + 5.0)
        elif rng.random() < 0.75:
            heading = math.pi / 2 + rng.uniform(-0.7, 0.7)
            if klass == BICYCLE:
                x = street.lanes[-1] + street.lane_width / 2 - rng.uniform(0.4, 1.2)
            else:
                x = street.lanes[int(rng.integers(0, len(street.lanes)))] + rng.uniform(-0.8, 0.8)
        else:  # on the sidewalk, side-on
            side = street.side(int(rng.choice([-1, 1])))
            x = side.sidewalk_inner + side.sign * rng.uniform(0.5, max(side.sidewalk - 0.5, 0.6))
            heading = rng.uniform(-0.6, 0.6)
        if klass in excluded:
            continue
        on_sidewalk = x < street.road_left or x > street.road_right
        add(z, draw_rider, canvas, x, z, klass, heading, 0.15 if on_sidewalk else 0.0)
    # Parked bicycles and motorcycles on the sidewalks.
    for rate_name, klass in (("bicycles", BICYCLE), ("motorcycles", MOTORCYCLE)):
        for _ in range(_count(rng, params.rate(rate_name))):
            side = street.side(int(rng.choice([-1, 1])))
            z0 = _sample_depth(rng, 4.0, 40.0, 1.3)
            for k in range(1 + int(rng.random() < 0.4) * int(rng.integers(1, 4))):
                x = side.sidewalk_inner + side.sign * rng.uniform(0.3, 1.0)
                z = z0 + k * 0.8
                add(
                    z,
                    draw_two_wheeler,
                    canvas,
                    x,
                    z,
                    klass,
                    rng.uniform(-0.5, 0.5),
                    canvas.new_instance(),
                    0.15,
                )
    # Poles: lamp posts at regular spacing, sign posts, traffic lights.
    for sign in (-1, 1):
        side = street.side(sign)
        x = side.sidewalk_inner + sign * 0.5
        if rng.random() < 0.85 * min(params.rate("lamps"), 1.0):
            spacing = rng.uniform(18.0, 35.0) / max(params.rate("lamps"), 0.1)
            z = rng.uniform(4.0, spacing)
            while z < 110.0:
                if not street.in_cross(z, z, 1.0):
                    add(z, draw_lamp_post, canvas, x, z, sign)
                z += spacing
        if rng.random() < params.rate("trees"):
            spacing = rng.uniform(7.0, 14.0)
            tree_x = (
                (side.sidewalk_outer - sign * 0.8)
                if side.garden == 0
                else (side.sidewalk_outer + sign * side.garden / 2)
            )
            if side.verge > 0 and rng.random() < 0.5:
                tree_x = side.curb + sign * side.verge / 2
            z = rng.uniform(3.0, spacing)
            while z < 90.0:
                if not street.in_cross(z, z, 2.0):
                    add(z, draw_tree, canvas, tree_x, z, rng.uniform(5.0, 11.0))
                z += spacing * rng.uniform(0.8, 1.2)
    for _ in range(_count(rng, params.rate("signs"))):
        sign = int(rng.choice([-1, 1]))
        side = street.side(sign)
        x = side.sidewalk_inner + sign * rng.uniform(0.3, 0.8)
        z = _sample_depth(rng, 5.0, 50.0, 1.2)
        add(z, draw_sign_post, canvas, x, z)
    if rng.random() < params.rate("traffic_lights") and (street.cross or street.crosswalk):
        z = (street.cross or street.crosswalk)[0] - rng.uniform(0.5, 2.0)
        for sign in (-1, 1):
            if rng.random() < 0.8:
                x = street.side(sign).sidewalk_inner + sign * 0.5
                mast_arm = rng.random() < 0.4 and sign > 0
                add(z, draw_light_post, canvas, x, z, street.own_lanes if mast_arm else None)
    elif rng.random() < 0.25 * params.rate("traffic_lights"):
        sign = int(rng.choice([-1, 1]))
        z = _sample_depth(rng, 8.0, 45.0)
        add(z, draw_light_post, canvas, street.side(sign).sidewalk_inner + sign * 0.5, z)
    # Trees and shrubs beyond the sidewalks, in the gardens.
    for sign in (-1, 1):
        side = street.side(sign)
        if side.garden > 1.5 and rng.random() < params.rate("trees"):
            for _ in range(int(rng.integers(1, 5))):
                z = _sample_depth(rng, 5.0, 70.0, 1.2)
                add(
                    z,
                    draw_tree,
                    canvas,
                    side.sidewalk_outer + sign * rng.uniform(0.5, side.garden - 0.3),
                    z,
                    rng.uniform(3.0, 9.0),
                )
