"""The objects of a toy street, drawn in world coordinates: vehicles, persons, riders on
bicycles and motorcycles, poles with lamps, signs and traffic lights, trees.

Each function draws one object into a `Canvas`, nearest parts last, with real-world sizes
(a car is 1.65-1.95 m wide, a person 1.5-1.95 m tall), so that perspective makes far objects
small and near the horizon. Solid objects are projected boxes; thin or articulated ones
(persons, two-wheelers, signs, trees) are billboards facing the camera.
"""

from __future__ import annotations

import math

import numpy as np

from udaseg.data.toy.canvas import (
    BICYCLE,
    BUS,
    CAR,
    EGO_VEHICLE,
    FACE_BOTTOM,
    FACE_EMISSIVE,
    FACE_FRONT,
    FACE_NEGATIVE_X,
    FACE_POSITIVE_X,
    FACE_TOP,
    MAP_FRONT,
    MAP_GROUND,
    MAP_SIDE,
    MOTORCYCLE,
    PATTERN_NONE,
    PATTERN_WINDOWS,
    PERSON,
    POLE,
    RIDER,
    TRAFFIC_LIGHT,
    TRAFFIC_SIGN,
    TRAIN,
    TRUCK,
    VEGETATION,
    Z_NEAR,
    Canvas,
)


def _box(
    canvas: Canvas,
    bounds: tuple[float, float, float, float, float, float],
    klass: int,
    material: str,
    tone: np.ndarray,
    instance: int,
    *,
    pattern: int = PATTERN_NONE,
    pattern_args: tuple[float, ...] = (),
    side_pattern_only: bool = True,
) -> dict[str, int]:
    """Draw the faces of an axis-aligned box (x0, x1, y0, y1, z0, z1) that the camera sees.

    Returns the part id of each drawn face: "front", "side", "top", "bottom".
    """
    x0, x1, y0, y1, z0, z1 = bounds
    elevation = canvas.camera.elevation
    drawn = {}
    if x0 > 0 or x1 < 0:  # one side face is visible
        x_side = x0 if x0 > 0 else x1
        side = canvas.part(
            klass,
            material,
            tone,
            instance=instance,
            face=FACE_NEGATIVE_X if x0 > 0 else FACE_POSITIVE_X,
            mapping=MAP_SIDE,
            plane=x_side,
            pattern=pattern,
            pattern_args=pattern_args,
        )
        canvas.polygon_world(
            side, [(x_side, y0, z0), (x_side, y0, z1), (x_side, y1, z1), (x_side, y1, z0)]
        )
        drawn["side"] = side
    if y1 < elevation or y0 > elevation:
        y = y1 if y1 < elevation else y0
        top = canvas.part(
            klass,
            material,
            tone,
            instance=instance,
            face=FACE_TOP if y1 < elevation else FACE_BOTTOM,
            mapping=MAP_GROUND,
            plane=y,
        )
        canvas.polygon_world(top, [(x0, y, z0), (x1, y, z0), (x1, y, z1), (x0, y, z1)])
        drawn["top" if y1 < elevation else "bottom"] = top
    front = canvas.part(
        klass,
        material,
        tone,
        instance=instance,
        face=FACE_FRONT,
        mapping=MAP_FRONT,
        plane=z0,
        pattern=PATTERN_NONE if side_pattern_only else pattern,
        pattern_args=pattern_args,
    )
    canvas.polygon_world(front, [(x0, y0, z0), (x1, y0, z0), (x1, y1, z0), (x0, y1, z0)])
    drawn["front"] = front
    return drawn


def _front_rectangle(
    canvas: Canvas, part: int, x0: float, x1: float, y0: float, y1: float, z: float
) -> None:
    canvas.polygon_world(part, [(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)])


def _side_wheels(
    canvas: Canvas, klass: int, instance: int, x_side: float, centres: list[float], radius: float
) -> None:
    """Wheels on a vehicle's visible side (plane X = x_side), as projected circles."""
    if abs(x_side) < 0.3:
        return
    tyre = canvas.part(
        klass, "tyre", instance=instance, face=FACE_FRONT, mapping=MAP_SIDE, plane=x_side
    )
    hub = canvas.part(
        klass, "metal", instance=instance, face=FACE_FRONT, mapping=MAP_SIDE, plane=x_side
    )
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    for zc in centres:
        if zc - radius < Z_NEAR:
            continue
        for part, r in ((tyre, radius), (hub, radius * 0.5)):
            circle = np.stack(
                [
                    np.full_like(angles, x_side),
                    radius + r * np.sin(angles),
                    zc + r * np.cos(angles),
                ],
                axis=1,
            )
            canvas.polygon_world(part, circle)


def _shape(canvas: Canvas, name: str) -> float:
    """The domain's multiplier of one object proportion (`scene.SHAPE_FACTORS`; 1 = as drawn
    in the source and in version 1's target)."""
    return canvas.shape.get(name, 1.0)


def draw_car(canvas: Canvas, x: float, z: float, direction: int, instance: int) -> None:
    """A car whose nearest face is at depth z: seen from behind (direction +1), from the
    front (-1) or from the side when crossing (0, then x is its centre along X)."""
    rng = canvas.rng
    width, length = rng.uniform(1.65, 1.95), rng.uniform(3.8, 4.9) * _shape(canvas, "car_length")
    clearance, body_height = 0.25, rng.uniform(0.55, 0.75) * _shape(canvas, "car_height")
    cabin_height = rng.uniform(0.42, 0.62) * _shape(canvas, "car_height")
    paint = canvas.tone()
    glass = canvas.tone()
    y_body = clearance + body_height
    if direction == 0:
        bounds = (x - length / 2, x + length / 2, clearance, y_body, z, z + width)
        back_inset = rng.uniform(0.9, 1.3)
        cabin = (
            x - length / 2 + back_inset,
            x + length / 2 - 1.1,
            y_body,
            y_body + cabin_height,
            z + 0.12,
            z + width - 0.12,
        )
    else:
        bounds = (x - width / 2, x + width / 2, clearance, y_body, z, z + length)
        near_inset = rng.uniform(0.8, 1.2) if direction > 0 else rng.uniform(1.1, 1.5)
        far_inset = rng.uniform(0.8, 1.2) if direction < 0 else rng.uniform(1.1, 1.5)
        cabin = (
            x - width / 2 + 0.1,
            x + width / 2 - 0.1,
            y_body,
            y_body + cabin_height,
            z + near_inset,
            z + length - far_inset,
        )
    # The dark gap under the body shows the tyres.
    x0, x1, _, _, z0, z1 = bounds
    under = canvas.part(
        CAR, "tyre", instance=instance, face=FACE_FRONT, mapping=MAP_FRONT, plane=z0
    )
    tyre_width = 0.24 if direction != 0 else 0.5
    for xa, xb in ((x0, x0 + tyre_width), (x1 - tyre_width, x1)):
        _front_rectangle(canvas, under, xa, xb, 0.0, clearance + 0.05, z0 + 0.3)
    body = _box(canvas, bounds, CAR, "car_paint", paint, instance)
    if "side" in body:
        x_side = x0 if x0 > 0 else x1
        if direction == 0:
            _wheels_front_plane(canvas, CAR, instance, [x0 + 0.8, x1 - 0.8], z0, 0.33)
        else:
            _side_wheels(canvas, CAR, instance, x_side, [z0 + 0.8, z1 - 0.8], 0.33)
    elif direction == 0:
        _wheels_front_plane(canvas, CAR, instance, [x0 + 0.8, x1 - 0.8], z0, 0.33)
    cabin_parts = _box(canvas, cabin, CAR, "car_paint", paint, instance)
    # Windows: inset glass on the cabin's visible faces.
    cx0, cx1, cy0, cy1, cz0, cz1 = cabin
    window = canvas.part(
        CAR,
        "vehicle_glass",
        glass,
        instance=instance,
        face=FACE_FRONT,
        mapping=MAP_FRONT,
        plane=cz0,
    )
    inset = 0.12
    _front_rectangle(canvas, window, cx0 + inset, cx1 - inset, cy0 + 0.06, cy1 - 0.06, cz0)
    if "side" in cabin_parts:
        x_side = cx0 if cx0 > 0 else cx1
        side_window = canvas.part(
            CAR,
            "vehicle_glass",
            glass,
            instance=instance,
            face=FACE_FRONT,
            mapping=MAP_SIDE,
            plane=x_side,
        )
        canvas.polygon_world(
            side_window,
            [
                (x_side, cy0 + 0.06, cz0 + 0.15),
                (x_side, cy0 + 0.06, cz1 - 0.15),
                (x_side, cy1 - 0.06, cz1 - 0.3),
                (x_side, cy1 - 0.06, cz0 + 0.3),
            ],
        )
    # Lights and the number plate on the face towards the camera.
    lamp_material = "tail_light" if direction > 0 else "head_light"
    lamps = canvas.part(
        CAR, lamp_material, instance=instance, face=FACE_EMISSIVE, mapping=MAP_FRONT, plane=z0
    )
    if direction != 0:
        y_lamp = y_body - rng.uniform(0.12, 0.25)
        for xa in (x0 + 0.08, x1 - 0.38):
            _front_rectangle(canvas, lamps, xa, xa + 0.3, y_lamp - 0.12, y_lamp, z0)
        plate = canvas.part(
            CAR, "sign_rim", instance=instance, face=FACE_FRONT, mapping=MAP_FRONT, plane=z0
        )
        _front_rectangle(canvas, plate, x - 0.26, x + 0.26, clearance + 0.12, clearance + 0.24, z0)


def _wheels_front_plane(
    canvas: Canvas, klass: int, instance: int, centres: list[float], z: float, radius: float
) -> None:
    """Wheels of a vehicle seen from the side, drawn in the plane Z = z."""
    tyre = canvas.part(
        klass, "tyre", instance=instance, face=FACE_FRONT, mapping=MAP_FRONT, plane=z
    )
    hub = canvas.part(
        klass, "metal", instance=instance, face=FACE_FRONT, mapping=MAP_FRONT, plane=z
    )
    scale = canvas.camera.scale(z)
    for xc in centres:
        u, v = canvas.camera.project_point(xc, radius, z)
        canvas.ellipse_image(tyre, (u, v), (radius * scale, radius * scale))
        canvas.ellipse_image(hub, (u, v), (radius * scale * 0.5, radius * scale * 0.5))


def draw_large_vehicle(
    canvas: Canvas, klass: int, x: float, z: float, direction: int, instance: int
) -> None:
    """A truck, bus or tram seen from behind (+1) or the front (-1)."""
    rng = canvas.rng
    if klass == TRUCK:
        width, length, height, floor = 2.45, rng.uniform(6.5, 10.0), rng.uniform(3.2, 3.9), 0.9
        length *= _shape(canvas, "truck_length")
        material = "truck_body"
    elif klass == BUS:
        width, length, height, floor = 2.5, rng.uniform(10.5, 12.5), rng.uniform(2.9, 3.3), 0.3
        height *= _shape(canvas, "bus_height")
        material = "bus_paint"
    else:
        width, length, height, floor = 2.6, rng.uniform(22.0, 32.0), rng.uniform(3.3, 3.6), 0.35
        material = "train_paint"
    paint = canvas.tone()
    x0, x1 = x - width / 2, x + width / 2
    windows = (rng.uniform(1.2, 1.8), 10.0, 0.85, 1.0, floor + 1.0, floor + height * 0.78)
    has_windows = klass in (BUS, TRAIN)
    if klass == TRUCK:
        cab_length = 2.3
        if direction > 0:  # the cab is at the far end, mostly hidden by the cargo box
            cab = (x0 + 0.05, x1 - 0.05, 0.4, 2.9, z + length - cab_length, z + length)
            cargo = (x0, x1, floor, floor + height - 0.9, z, z + length - cab_length - 0.3)
            _box(canvas, cab, TRUCK, "car_paint", canvas.tone(), instance)
            parts = _box(canvas, cargo, TRUCK, material, paint, instance)
            front_z = z
        else:
            cargo = (x0, x1, floor, floor + height - 0.9, z + cab_length + 0.3, z + length)
            cab = (x0 + 0.05, x1 - 0.05, 0.4, 2.9, z, z + cab_length)
            _box(canvas, cargo, TRUCK, material, paint, instance)
            parts = _box(canvas, cab, TRUCK, "car_paint", canvas.tone(), instance)
            window = canvas.part(
                TRUCK,
                "vehicle_glass",
                instance=instance,
                face=FACE_FRONT,
                mapping=MAP_FRONT,
                plane=z,
            )
            _front_rectangle(canvas, window, x0 + 0.2, x1 - 0.2, 1.7, 2.7, z)
            front_z = z
        if "side" in parts:
            x_side = x0 if x0 > 0 else x1
            _side_wheels(
                canvas, TRUCK, instance, x_side, [z + 1.2, z + length - 1.5, z + length - 2.9], 0.5
            )
        if direction > 0:  # the rear doors' seam
            seam = canvas.part(
                TRUCK, "tyre", instance=instance, face=FACE_FRONT, mapping=MAP_FRONT, plane=front_z
            )
            _front_rectangle(
                canvas, seam, x - 0.03, x + 0.03, floor + 0.1, floor + height - 1.0, front_z
            )
    else:
        parts = _box(
            canvas,
            (x0, x1, floor, floor + height, z, z + length),
            klass,
            material,
            paint,
            instance,
            pattern=PATTERN_WINDOWS if has_windows else PATTERN_NONE,
            pattern_args=windows,
        )
        window = canvas.part(
            klass, "vehicle_glass", instance=instance, face=FACE_FRONT, mapping=MAP_FRONT, plane=z
        )
        top = floor + height * (0.85 if direction < 0 else 0.8)
        bottom = floor + height * (0.3 if direction < 0 else 0.45)
        _front_rectangle(canvas, window, x0 + 0.15, x1 - 0.15, bottom, top, z)
        if "side" in parts:
            x_side = x0 if x0 > 0 else x1
            _side_wheels(canvas, klass, instance, x_side, [z + 2.0, z + length - 2.5], 0.5)
        if klass == TRAIN:  # pantograph
            arm = canvas.part(
                TRAIN,
                "metal",
                instance=instance,
                face=FACE_FRONT,
                mapping=MAP_FRONT,
                plane=z + length / 2,
            )
            for dz in (-1.0, 1.0):
                p = canvas.camera.project(
                    np.array(
                        [
                            [x, floor + height, z + length / 2 + dz],
                            [x + 0.3, floor + height + 1.2, z + length / 2],
                        ]
                    )
                )
                canvas.line_image(
                    arm, [tuple(p[0]), tuple(p[1])], 0.08 * canvas.camera.scale(z + length / 2)
                )
    lamps = canvas.part(
        klass,
        "tail_light" if direction > 0 else "head_light",
        instance=instance,
        face=FACE_EMISSIVE,
        mapping=MAP_FRONT,
        plane=z,
    )
    for xa in (x0 + 0.1, x1 - 0.35):
        _front_rectangle(canvas, lamps, xa, xa + 0.25, 0.55, 0.8, z)
    bumper = canvas.part(
        klass, "tyre", instance=instance, face=FACE_FRONT, mapping=MAP_FRONT, plane=z
    )
    _front_rectangle(canvas, bumper, x0, x1, 0.2, 0.45, z)


def _person(
    canvas: Canvas,
    u: float,
    v: float,
    scale: float,
    height: float,
    klass: int,
    instance: int,
    depth: float,
    *,
    side_view: bool,
    phase: float,
    seated: bool = False,
    helmet: bool = False,
) -> None:
    """A person as a billboard whose feet (or seat, when `seated`) are at pixel (u, v).

    Proportions follow the usual 7.5 heads; `phase` in [-1, 1] is the walking stride.
    """
    rng = canvas.rng
    H = height * scale * _shape(canvas, "person_height")
    skin = canvas.part(klass, "skin", instance=instance, mapping=MAP_FRONT, plane=depth)
    top = canvas.part(klass, "cloth_top", instance=instance, mapping=MAP_FRONT, plane=depth)
    bottom = canvas.part(klass, "cloth_bottom", instance=instance, mapping=MAP_FRONT, plane=depth)
    hair = canvas.part(klass, "hair", instance=instance, mapping=MAP_FRONT, plane=depth)
    shoulder = (0.11 if not side_view else 0.065) * _shape(canvas, "person_width")
    hip = (0.09 if not side_view else 0.065) * _shape(canvas, "person_width")
    if seated:
        # Seated: the hips are at (u, v); legs hang down towards the pedals.
        hip_v = v
        shoulder_v = v - 0.3 * H
        lean = (0.1 * H) if side_view else 0.0
    else:
        hip_v = v - 0.5 * H
        shoulder_v = v - 0.81 * H
        lean = 0.0
    head_v = shoulder_v - 0.1 * H
    # Legs
    leg_width = 0.06 * H
    if not seated:
        for sign in (-1, 1):
            if side_view:
                foot_u = u + sign * phase * 0.17 * H
                hip_u = u
            else:
                foot_u = u + sign * (0.05 + 0.015 * phase) * H
                hip_u = u + sign * 0.045 * H
            canvas.polygon_image(
                bottom,
                [
                    (hip_u - leg_width / 2, hip_v),
                    (hip_u + leg_width / 2, hip_v),
                    (foot_u + leg_width * 0.4, v - 0.03 * H),
                    (foot_u - leg_width * 0.4, v - 0.03 * H),
                ],
            )
            canvas.polygon_image(
                hair,
                [
                    (foot_u - leg_width * 0.5, v - 0.04 * H),
                    (foot_u + leg_width * (1.2 if side_view else 0.5), v - 0.04 * H),
                    (foot_u + leg_width * (1.2 if side_view else 0.5), v),
                    (foot_u - leg_width * 0.5, v),
                ],
            )
    # Torso (a jacket reaching just below the hips)
    canvas.polygon_image(
        top,
        [
            (u + lean - shoulder * H, shoulder_v),
            (u + lean + shoulder * H, shoulder_v),
            (u + hip * H, hip_v + 0.04 * H),
            (u - hip * H, hip_v + 0.04 * H),
        ],
    )
    # Arms
    arm_width = 0.045 * H
    for sign in (-1, 1):
        start_u = u + lean + sign * (shoulder * H - arm_width / 2)
        if seated:
            end = (u + lean + (0.28 * H if side_view else sign * 0.14 * H), shoulder_v + 0.18 * H)
        elif side_view:
            end = (u - sign * phase * 0.12 * H, shoulder_v + 0.36 * H)
        else:
            end = (start_u + sign * 0.02 * H, shoulder_v + 0.36 * H)
        canvas.line_image(top, [(start_u, shoulder_v + arm_width / 2), end], arm_width)
        canvas.ellipse_image(skin, end, (arm_width * 0.55, arm_width * 0.6))
    # Head and hair (or helmet)
    head_u = u + lean
    canvas.ellipse_image(skin, (head_u, head_v), (0.05 * H, 0.066 * H))
    if helmet:
        canvas.ellipse_image(hair, (head_u, head_v - 0.01 * H), (0.062 * H, 0.064 * H))
    elif rng.random() < 0.85:
        canvas.polygon_image(
            hair,
            [
                (head_u - 0.052 * H, head_v),
                (head_u - 0.04 * H, head_v - 0.06 * H),
                (head_u + 0.04 * H, head_v - 0.06 * H),
                (head_u + 0.052 * H, head_v),
                (head_u, head_v - 0.035 * H),
            ],
        )
    if not seated and rng.random() < 0.25:  # a bag
        bag = canvas.part(klass, "cloth_bottom", instance=instance, mapping=MAP_FRONT, plane=depth)
        bag_u = u + (0.12 * H if rng.random() < 0.5 else -0.12 * H)
        canvas.polygon_image(
            bag,
            [
                (bag_u - 0.05 * H, hip_v - 0.05 * H),
                (bag_u + 0.05 * H, hip_v - 0.05 * H),
                (bag_u + 0.05 * H, hip_v + 0.08 * H),
                (bag_u - 0.05 * H, hip_v + 0.08 * H),
            ],
        )


def draw_walker(canvas: Canvas, x: float, z: float, instance: int) -> None:
    """A pedestrian standing or walking on the sidewalk at (x, z)."""
    rng = canvas.rng
    camera = canvas.camera
    scale = camera.scale(z)
    u, v = camera.project_point(x, 0.15, z)  # on the sidewalk
    _person(
        canvas,
        u,
        v,
        scale,
        rng.uniform(1.5, 1.95),
        PERSON,
        instance,
        z,
        side_view=rng.random() < 0.45,
        phase=rng.uniform(-1, 1),
    )


def draw_two_wheeler(
    canvas: Canvas,
    x: float,
    z: float,
    klass: int,
    heading: float,
    instance: int,
    ground: float = 0.0,
) -> tuple[float, float, float]:
    """A bicycle or motorcycle in a vertical plane through (x, z) at `heading` radians from the
    X axis (0: seen from the side; pi/2: seen from behind). Returns the seat's (u, v) and the
    pixels per metre, for a rider."""
    rng = canvas.rng
    camera = canvas.camera
    scale = camera.scale(z)
    u0, v0 = camera.project_point(x, ground, z)
    # Foreshortening of the along-bike axis; a bike seen end-on still shows its tyre width.
    squeeze = max(abs(math.cos(heading)), 0.12)
    flip = -1.0 if rng.random() < 0.5 else 1.0

    def point(a: float, b: float) -> tuple[float, float]:
        return (u0 + flip * a * squeeze * scale, v0 - b * scale)

    frame_tone = canvas.tone()
    if klass == BICYCLE:
        radius, base = 0.34, 0.52
        frame = canvas.part(
            BICYCLE, "bike_frame", frame_tone, instance=instance, mapping=MAP_FRONT, plane=z
        )
        tyre = canvas.part(BICYCLE, "tyre", instance=instance, mapping=MAP_FRONT, plane=z)
        spokes = canvas.part(BICYCLE, "metal", instance=instance, mapping=MAP_FRONT, plane=z)
        for a in (-base, base):
            centre = point(a, radius)
            radii = (radius * scale * squeeze, radius * scale)
            canvas.ellipse_image(spokes, centre, (radii[0] * 0.9, radii[1] * 0.9))
            canvas.ring_image(tyre, centre, radii, max(0.07 * scale, 1.0))
        width = max(0.05 * scale, 1.0)
        rear, front = point(-base, radius), point(base, radius)
        bracket, seat, head = point(-0.03, 0.3), point(-0.2, 0.9), point(0.4, 0.92)
        for a, b in (
            (rear, bracket),
            (bracket, seat),
            (seat, rear),
            (seat, head),
            (bracket, head),
            (head, front),
        ):
            canvas.line_image(frame, [a, b], width)
        canvas.line_image(frame, [point(0.34, 1.02), point(0.48, 1.0)], width)
        saddle = canvas.part(BICYCLE, "hair", instance=instance, mapping=MAP_FRONT, plane=z)
        canvas.line_image(saddle, [point(-0.3, 0.93), point(-0.1, 0.93)], max(0.06 * scale, 1.0))
        return point(-0.2, 0.95) + (scale,)
    radius, base = 0.31, 0.7
    tyre = canvas.part(MOTORCYCLE, "tyre", instance=instance, mapping=MAP_FRONT, plane=z)
    hub = canvas.part(MOTORCYCLE, "metal", instance=instance, mapping=MAP_FRONT, plane=z)
    for a in (-base, base):
        centre = point(a, radius)
        canvas.ellipse_image(
            tyre, centre, (radius * scale * squeeze + 0.05 * scale, radius * scale)
        )
        canvas.ellipse_image(hub, centre, (radius * scale * squeeze * 0.5, radius * scale * 0.5))
    body = canvas.part(
        MOTORCYCLE, "car_paint", frame_tone, instance=instance, mapping=MAP_FRONT, plane=z
    )
    outline = [
        (-0.55, 0.45),
        (-0.1, 0.32),
        (0.35, 0.42),
        (0.62, 0.82),
        (0.3, 0.98),
        (-0.2, 0.86),
        (-0.75, 0.78),
    ]
    body_points = [point(a, b) for a, b in outline]
    if squeeze < 0.35:  # seen end-on: the body still has its width
        centre_u = sum(p[0] for p in body_points) / len(body_points)
        half = 0.3 * scale
        body_points = [
            (centre_u - half, point(0, 0.35)[1]),
            (centre_u + half, point(0, 0.35)[1]),
            (centre_u + half * 0.8, point(0, 0.95)[1]),
            (centre_u - half * 0.8, point(0, 0.95)[1]),
        ]
    canvas.polygon_image(body, body_points)
    seat = canvas.part(MOTORCYCLE, "tyre", instance=instance, mapping=MAP_FRONT, plane=z)
    canvas.line_image(seat, [point(-0.6, 0.86), point(-0.05, 0.9)], max(0.1 * scale, 1.0))
    bars = canvas.part(MOTORCYCLE, "metal", instance=instance, mapping=MAP_FRONT, plane=z)
    canvas.line_image(bars, [point(0.5, 0.8), point(0.45, 1.1)], max(0.05 * scale, 1.0))
    if squeeze < 0.5:
        canvas.line_image(
            bars,
            [
                (point(0.45, 1.1)[0] - 0.35 * scale, point(0.45, 1.1)[1]),
                (point(0.45, 1.1)[0] + 0.35 * scale, point(0.45, 1.1)[1]),
            ],
            max(0.04 * scale, 1.0),
        )
    return point(-0.35, 0.88) + (scale,)


def draw_rider(
    canvas: Canvas, x: float, z: float, klass: int, heading: float, ground: float
) -> None:
    """A rider on a bicycle or motorcycle: the vehicle and the rider share the position."""
    rng = canvas.rng
    vehicle = canvas.new_instance()
    rider = canvas.new_instance()
    seat_u, seat_v, scale = draw_two_wheeler(canvas, x, z, klass, heading, vehicle, ground)
    side_view = abs(math.cos(heading)) > 0.45
    _person(
        canvas,
        seat_u,
        seat_v,
        scale,
        rng.uniform(1.6, 1.9),
        RIDER,
        rider,
        z,
        side_view=side_view,
        phase=0.0,
        seated=True,
        helmet=klass == MOTORCYCLE or rng.random() < 0.3,
    )
    # Legs down to the pedals / footrests, drawn over the frame.
    leg = canvas.part(RIDER, "cloth_bottom", instance=rider, mapping=MAP_FRONT, plane=z)
    H = 1.75 * scale
    foot_v = seat_v + (0.5 if klass == BICYCLE else 0.4) * H
    for sign in (-1, 1):
        foot_u = seat_u + (sign * 0.1 * H if side_view else sign * 0.09 * H)
        canvas.line_image(
            leg,
            [(seat_u + (0.05 * H if side_view else sign * 0.05 * H), seat_v), (foot_u, foot_v)],
            0.065 * H,
        )


def _pole(
    canvas: Canvas, x: float, z: float, height: float, width: float, tone: np.ndarray | None = None
) -> int:
    """A vertical pole as a billboard; returns its part (so arms share its appearance)."""
    part = canvas.part(POLE, "metal", tone, face=FACE_FRONT, mapping=MAP_FRONT, plane=z)
    ground = 0.15
    _front_rectangle(canvas, part, x - width / 2, x + width / 2, ground, ground + height, z)
    return part


def draw_lamp_post(canvas: Canvas, x: float, z: float, sign: int) -> None:
    """A street lamp: a tall pole with an arm reaching over the road (towards -sign)."""
    rng = canvas.rng
    height = rng.uniform(6.0, 9.0)
    pole = _pole(canvas, x, z, height, rng.uniform(0.14, 0.24))
    arm_length = rng.uniform(1.0, 2.5)
    tip = (x - sign * arm_length, 0.15 + height + 0.3, z)
    p = canvas.camera.project(np.array([[x, 0.15 + height - 0.2, z], tip]))
    canvas.line_image(pole, [tuple(p[0]), tuple(p[1])], 0.12 * canvas.camera.scale(z))
    lamp = canvas.part(POLE, "light_housing", face=FACE_FRONT, mapping=MAP_FRONT, plane=z)
    _front_rectangle(canvas, lamp, tip[0] - 0.35, tip[0] + 0.35, tip[1] - 0.2, tip[1] + 0.05, z)


def _sign(canvas: Canvas, x: float, y: float, z: float, instance: int) -> None:
    """A traffic sign facing the camera, centred at (x, y, z): circle, triangle, square or
    octagon with a rim."""
    rng = canvas.rng
    scale = canvas.camera.scale(z)
    u, v = canvas.camera.project_point(x, y, z)
    size = rng.uniform(0.28, 0.42) * scale
    shape = rng.choice(["circle", "triangle", "square", "octagon", "rectangle"])
    face = canvas.part(
        TRAFFIC_SIGN, "sign_face", instance=instance, face=FACE_FRONT, mapping=MAP_FRONT, plane=z
    )
    rim = canvas.part(
        TRAFFIC_SIGN, "sign_rim", instance=instance, face=FACE_FRONT, mapping=MAP_FRONT, plane=z
    )
    if shape == "circle":
        canvas.ellipse_image(rim, (u, v), (size, size))
        canvas.ellipse_image(face, (u, v), (size * 0.75, size * 0.75))
    else:
        if shape == "triangle":
            angles = np.array([-90, 30, 150]) * np.pi / 180
            radius = size * 1.2
        elif shape == "octagon":
            angles = (np.arange(8) * 45 + 22.5) * np.pi / 180
            radius = size * 1.05
        else:
            angles = (np.arange(4) * 90 + 45) * np.pi / 180
            radius = size * 1.2
        stretch = 1.6 if shape == "rectangle" else 1.0
        outer = [(u + stretch * radius * math.cos(a), v + radius * math.sin(a)) for a in angles]
        inner = [
            (u + stretch * 0.72 * radius * math.cos(a), v + 0.72 * radius * math.sin(a))
            for a in angles
        ]
        canvas.polygon_image(rim, outer)
        canvas.polygon_image(face, inner)


def _traffic_light(canvas: Canvas, x: float, y: float, z: float, instance: int) -> None:
    """A traffic light housing (a box) with three lamps, one lit, facing the camera."""
    rng = canvas.rng
    width, height = rng.uniform(0.28, 0.38), rng.uniform(0.8, 1.0)
    housing = canvas.tone()
    _box(
        canvas,
        (x - width / 2, x + width / 2, y - height / 2, y + height / 2, z, z + 0.3),
        TRAFFIC_LIGHT,
        "light_housing",
        housing,
        instance,
    )
    lit = int(rng.integers(0, 3))
    scale = canvas.camera.scale(z)
    for index in range(3):
        cy = y + height / 2 - (index + 0.5) * height / 3
        u, v = canvas.camera.project_point(x, cy, z)
        if index == lit:
            tone = canvas.tone()
            tone[0] = (index + 0.5) / 3  # red, amber, green top to bottom
            lamp = canvas.part(
                TRAFFIC_LIGHT,
                "light_lamp",
                tone,
                instance=instance,
                face=FACE_EMISSIVE,
                mapping=MAP_FRONT,
                plane=z,
            )
        else:
            dark = housing.copy()
            dark[1] = 0.0  # the darkest brightness
            lamp = canvas.part(
                TRAFFIC_LIGHT, "light_housing", dark, instance=instance, mapping=MAP_FRONT, plane=z
            )
        r = width * 0.33 * scale
        canvas.ellipse_image(lamp, (u, v), (r, r))


def draw_tree(canvas: Canvas, x: float, z: float, height: float) -> None:
    """A tree: a trunk and a crown of overlapping ellipses, all labelled vegetation."""
    rng = canvas.rng
    if z < Z_NEAR + 1.0:
        return
    scale = canvas.camera.scale(z)
    u, v = canvas.camera.project_point(x, 0.15, z)
    trunk = canvas.part(VEGETATION, "bark", face=FACE_FRONT, mapping=MAP_FRONT, plane=z)
    trunk_width = rng.uniform(0.2, 0.45) * scale
    crown_base = rng.uniform(0.3, 0.45) * height
    canvas.polygon_image(
        trunk,
        [
            (u - trunk_width / 2, v),
            (u + trunk_width / 2, v),
            (u + trunk_width * 0.35, v - crown_base * scale * 1.1),
            (u - trunk_width * 0.35, v - crown_base * scale * 1.1),
        ],
    )
    tone = canvas.tone()
    radius = (height - crown_base) / 2
    centre_v = v - (crown_base + radius) * scale
    pixels = radius * scale
    # Clumps of leaves, some in shade; a far (small) crown needs only two.
    clumps = rng.random((6, 5))
    count = 2 if pixels < 8 else 3 + int(clumps[0, 4] * 4)
    for index in range(count):
        shade, size, du, dv, stretch = clumps[index]
        leaf_tone = tone.copy()
        leaf_tone[1] = min(max(tone[1] + 0.6 * shade - 0.3, 0.0), 1.0)
        part = canvas.part(
            VEGETATION, "foliage", leaf_tone, face=FACE_FRONT, mapping=MAP_FRONT, plane=z
        )
        r = pixels * (0.55 + 0.3 * size)
        centre = (u + (1.2 * du - 0.6) * pixels, centre_v + (dv - 0.5) * pixels)
        canvas.ellipse_image(part, centre, (r * (0.9 + 0.4 * stretch), r))
        if index == 0:
            canvas.ellipse_image(part, (u, centre_v), (pixels * 0.8, pixels * 0.8))


def draw_ego_vehicle(canvas: Canvas, fraction: float) -> None:
    """The ego vehicle's hood at the bottom, as in Cityscapes (labelled "ego vehicle", void)."""
    camera = canvas.camera
    part = canvas.part(
        EGO_VEHICLE, "ego_hood", face=FACE_FRONT, mapping=MAP_FRONT, plane=1.5, gradient=-0.5
    )
    top = camera.height * (1 - fraction)
    w, h = camera.width, camera.height
    points = [(0, h), (0, top + 0.5 * fraction * h)]
    for t in np.linspace(0, 1, 9):
        points.append((t * w, top + 0.5 * fraction * h * (2 * t - 1) ** 2))
    points += [(w, top + 0.5 * fraction * h), (w, h)]
    canvas.polygon_image(part, points)


def draw_walker_on_road(canvas: Canvas, x: float, z: float, instance: int) -> None:
    """A pedestrian crossing the road (on the zebra), seen from the side."""
    rng = canvas.rng
    camera = canvas.camera
    u, v = camera.project_point(x, 0.0, z)
    _person(
        canvas,
        u,
        v,
        camera.scale(z),
        rng.uniform(1.5, 1.95),
        PERSON,
        instance,
        z,
        side_view=True,
        phase=rng.uniform(-1, 1),
    )


def draw_sign_post(canvas: Canvas, x: float, z: float) -> None:
    """A short post with one or two traffic signs at (x, z)."""
    rng = canvas.rng
    height = rng.uniform(2.2, 3.2)
    _pole(canvas, x, z, height + 0.3, rng.uniform(0.06, 0.1))
    instance = canvas.new_instance()
    _sign(canvas, x, 0.15 + height, z, instance)
    if rng.random() < 0.35:  # a second sign below the first
        _sign(canvas, x, 0.15 + height - 0.8, z, canvas.new_instance())


def draw_light_post(
    canvas: Canvas, x: float, z: float, mast_arm_over: list[float] | None = None
) -> None:
    """Traffic lights on a post at (x, z): one light on a short post, or, with
    `mast_arm_over` (lane centres), a tall post whose arm carries one light over each lane."""
    rng = canvas.rng
    if mast_arm_over:
        height = rng.uniform(5.5, 7.0)
        pole = _pole(canvas, x, z, height, rng.uniform(0.2, 0.3))
        tip_x = min(mast_arm_over) - 1.0
        start = canvas.camera.project_point(x, height, z)
        end = canvas.camera.project_point(tip_x, height, z)
        canvas.line_image(pole, [start, end], 0.15 * canvas.camera.scale(z))
        for lane_x in mast_arm_over:
            _traffic_light(canvas, lane_x, height - 0.6, z, canvas.new_instance())
    else:
        height = rng.uniform(2.8, 3.8)
        _pole(canvas, x, z, height, rng.uniform(0.1, 0.16))
        _traffic_light(canvas, x, 0.15 + height + 0.2, z, canvas.new_instance())
    if rng.random() < 0.4:
        _sign(canvas, x, 2.2, z - 0.05, canvas.new_instance())
