"""Procedural renderer of the toy world: faces, objects and scenes in six styles.

Why procedural: the toy study needs millions of labelled (caption, image, mask) triples whose
ground truth is exact, so the detector/segmenter are trained on the same distribution the toy
diffusion model learns. Drawing happens with PIL at 2x on a transparent concept layer (its alpha
is the mask), composited onto a pre-rendered background bank, then box-downsampled (antialias).
Everything is driven by an explicit seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from resurgence.toyworld.concepts import ToyWorld

Style = Literal["portrait", "public_event", "sketch", "oil_painting", "official_photo", "photo"]
STYLES: tuple[str, ...] = ("portrait", "public_event", "sketch", "oil_painting", "official_photo", "photo")
FigureKind = Literal["face", "object", "ground"]

RGBA = tuple[int, int, int, int]

# --------------------------------------------------------------------------------------------
# Face traits: coarse, high-contrast values so that they survive 64x64 (and the sketch filter:
# colours of one trait are spread in luminance where possible).
# --------------------------------------------------------------------------------------------
SKIN = {"pale": (250, 222, 196), "tan": (224, 170, 118), "brown": (160, 104, 64), "dark": (92, 58, 38)}
HAIR = {
    "black": (22, 18, 18),
    "brown": (112, 64, 28),
    "blonde": (242, 208, 96),
    "red": (206, 66, 24),
    "grey": (196, 196, 204),
}
EYES = {"brown": (90, 50, 20), "blue": (40, 110, 230), "green": (40, 170, 60)}
SHIRT = {
    "red": (210, 30, 40),
    "blue": (30, 70, 200),
    "green": (30, 150, 60),
    "yellow": (245, 210, 30),
    "white": (240, 240, 240),
    "black": (30, 30, 34),
    "purple": (130, 40, 170),
}
TRAIT_VALUES: dict[str, tuple[str, ...]] = {
    "gender": ("male", "female"),
    "face": ("round", "oval", "square"),
    "skin": tuple(SKIN),
    "hair_colour": tuple(HAIR),
    "hair_style": ("short", "long", "curly", "bun", "bald", "spiky"),
    "facial_hair": ("none", "moustache", "beard"),
    "eyes": tuple(EYES),
    "accessory": ("none", "glasses", "sunglasses", "hat", "earrings", "headband"),
    "shirt": tuple(SHIRT),
}
TRAIT_KEYS: tuple[str, ...] = tuple(TRAIT_VALUES)

# Scenes a free caption can name, and the background bank each maps to.
SCENES: dict[str, str] = {
    "in a field": "field",
    "on the beach": "beach",
    "on the street": "street",
    "in the snow": "snow",
    "at night": "night",
    "in a room": "room",
    "by the lake": "lake",
    "under a cloudy sky": "cloudy",
}


@dataclass(frozen=True)
class Figure:
    """One drawn concept. ``traits`` are the face traits, or ``(("drawing", key),)`` for objects."""

    name: str
    kind: FigureKind
    traits: tuple[tuple[str, str], ...] = ()

    def trait(self, key: str) -> str:
        for k, v in self.traits:
            if k == key:
                return v
        raise KeyError(key)


@dataclass(frozen=True)
class RenderSpec:
    """Everything ``render`` needs, fully resolved (no world lookup), so rendering is a pure function."""

    style: Style
    figures: tuple[Figure, ...]
    scene: str | None = None  # background bank key; None = the style's / object's default
    layout: Literal["single", "pair", "above", "triple"] = "single"
    caption: str = ""

    @property
    def concepts(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.figures)


# --------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------
def _c(rgb: Sequence[int]) -> RGBA:
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]), 255)


def _jit(rng: random.Random, rgb: Sequence[int], amt: int = 14) -> RGBA:
    """Small per-channel jitter: varies instances without ever moving a class into another's palette."""
    return (
        max(0, min(255, rgb[0] + rng.randint(-amt, amt))),
        max(0, min(255, rgb[1] + rng.randint(-amt, amt))),
        max(0, min(255, rgb[2] + rng.randint(-amt, amt))),
        255,
    )


def _shade(rgb: Sequence[int], k: float) -> RGBA:
    return (min(255, int(rgb[0] * k)), min(255, int(rgb[1] * k)), min(255, int(rgb[2] * k)), 255)


class Pen:
    """Draws in a local frame (unit = ``s`` canvas pixels, origin ``(cx, cy)``, optional mirror)."""

    __slots__ = ("d", "cx", "cy", "s", "fx", "S")

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, cy: float, s: float, flip: bool, S: int):
        self.d, self.cx, self.cy, self.s, self.fx, self.S = draw, cx, cy, s, (-1.0 if flip else 1.0), S

    def p(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + self.fx * self.s * x, self.cy + self.s * y)

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        ax, ay = self.p(x0, y0)
        bx, by = self.p(x1, y1)
        return (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))

    def ell(
        self,
        x: float,
        y: float,
        rx: float,
        ry: float,
        fill: RGBA | None,
        outline: RGBA | None = None,
        w: float = 0.0,
    ) -> None:
        self.d.ellipse(
            self.box(x - rx, y - ry, x + rx, y + ry),
            fill=fill,
            outline=outline,
            width=max(1, round(w * self.s)) if outline else 1,
        )

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: RGBA, r: float = 0.0) -> None:
        if r > 0:
            self.d.rounded_rectangle(self.box(x0, y0, x1, y1), radius=max(1, int(r * self.s)), fill=fill)
        else:
            self.d.rectangle(self.box(x0, y0, x1, y1), fill=fill)

    def poly(self, pts: Sequence[tuple[float, float]], fill: RGBA) -> None:
        self.d.polygon([self.p(x, y) for x, y in pts], fill=fill)

    def line(self, pts: Sequence[tuple[float, float]], fill: RGBA, w: float) -> None:
        self.d.line([self.p(x, y) for x, y in pts], fill=fill, width=max(1, round(w * self.s)))

    def chord(self, x: float, y: float, rx: float, ry: float, a0: float, a1: float, fill: RGBA) -> None:
        if self.fx < 0:
            a0, a1 = 180 - a1, 180 - a0
        self.d.chord(self.box(x - rx, y - ry, x + rx, y + ry), a0, a1, fill=fill)


# --------------------------------------------------------------------------------------------
# Faces
# --------------------------------------------------------------------------------------------
GLASS = _c((15, 15, 15))
WHITE = _c((250, 250, 250))
BLACK = _c((10, 10, 10))


def draw_face(
    pen: Pen, traits: dict[str, str], rng: random.Random, body: float = 1.0, suit: bool = False
) -> None:
    """Head and shoulders; ``body`` stretches the torso downwards (public events show more of it)."""
    male = traits["gender"] == "male"
    skin = _jit(rng, SKIN[traits["skin"]], 6)
    hair = _jit(rng, HAIR[traits["hair_colour"]], 8)
    shirt = _jit(rng, SHIRT[traits["shirt"]], 10)
    style = traits["hair_style"]
    # torso
    sw = 2.05 if male else 1.7
    if suit:
        jacket = _jit(rng, (34, 38, 58), 6)
        pen.ell(0, 2.35, sw, 1.15 + 0.3 * body, jacket)
        pen.rect(-sw, 2.3, sw, 2.3 + 1.6 * body, jacket)
        pen.poly([(-0.55, 1.3), (0.55, 1.3), (0, 2.6)], shirt)
    else:
        pen.ell(0, 2.3, sw, 1.15, shirt)
        pen.rect(-sw, 2.3, sw, 2.3 + 1.6 * body, shirt)
    nw = 0.36 if male else 0.28
    pen.rect(-nw, 0.55, nw, 1.45, skin)
    # hair behind the head
    if style == "long":
        pen.rect(-1.12, -0.6, 1.12, 1.55, hair, r=0.4)
    elif style == "curly":
        for k in range(10):
            a = np.pi * (0.9 + 1.2 * k / 9)
            pen.ell(1.0 * np.cos(a), -0.1 + 0.95 * np.sin(a), 0.42, 0.42, hair)
        pen.ell(-0.95, 0.55, 0.4, 0.45, hair)
        pen.ell(0.95, 0.55, 0.4, 0.45, hair)
    elif style == "bun":
        pen.ell(0, -1.22, 0.45, 0.4, hair)
    # ears
    pen.ell(-0.86, 0.05, 0.17, 0.24, skin)
    pen.ell(0.86, 0.05, 0.17, 0.24, skin)
    # head
    shape = traits["face"]
    if shape == "round":
        pen.ell(0, 0, 0.9, 0.92, skin)
    elif shape == "oval":
        pen.ell(0, 0.02, 0.7, 1.05, skin)
    else:
        pen.rect(-0.84, -0.95, 0.84, 0.98, skin, r=0.22)
    # hair on top
    if style in ("short", "spiky", "long", "bun"):
        pen.chord(0, -0.28, 0.95, 0.8, 180, 360, hair)
    elif style == "curly":
        for x in (-0.6, -0.2, 0.2, 0.6):
            pen.ell(x, -0.8, 0.33, 0.3, hair)
    if style == "spiky":
        for x in (-0.65, -0.25, 0.15, 0.55):
            pen.poly([(x - 0.2, -0.85), (x + 0.2, -0.85), (x + 0.05, -1.5)], hair)
    if style == "long":
        pen.rect(-0.95, -0.45, -0.62, 1.2, hair)
        pen.rect(0.62, -0.45, 0.95, 1.2, hair)
    # eyes
    eye = _c(EYES[traits["eyes"]])
    for x in (-0.33, 0.33):
        pen.ell(x, 0.02, 0.2, 0.13, WHITE)
        pen.ell(x, 0.02, 0.11, 0.11, eye)
        pen.ell(x, 0.02, 0.045, 0.045, BLACK)
    brow = hair if style != "bald" else _shade(skin, 0.6)
    bw = 0.1 if male else 0.055
    pen.line([(-0.5, -0.22), (-0.17, -0.25)], brow, bw)
    pen.line([(0.17, -0.25), (0.5, -0.22)], brow, bw)
    pen.line([(0.0, 0.1), (-0.07, 0.33), (0.05, 0.35)], _shade(skin, 0.7), 0.05)
    # facial hair / mouth
    fh = traits["facial_hair"]
    if fh == "beard":
        pen.poly(
            [(-0.8, 0.2), (-0.55, 0.8), (0, 1.05), (0.55, 0.8), (0.8, 0.2), (0.45, 0.45), (-0.45, 0.45)], hair
        )
    if fh in ("moustache", "beard"):
        pen.ell(0, 0.47, 0.32, 0.08, hair)
    if male:
        pen.line([(-0.2, 0.62), (0.2, 0.62)], _shade(skin, 0.45), 0.06)
    else:
        pen.ell(0, 0.6, 0.22, 0.085, _c((200, 30, 60)))
    # accessory
    acc = traits["accessory"]
    if acc == "glasses":
        pen.ell(-0.33, 0.02, 0.26, 0.2, None, GLASS, 0.07)
        pen.ell(0.33, 0.02, 0.26, 0.2, None, GLASS, 0.07)
        pen.line([(-0.08, 0.0), (0.08, 0.0)], GLASS, 0.06)
    elif acc == "sunglasses":
        pen.ell(-0.33, 0.03, 0.28, 0.19, GLASS)
        pen.ell(0.33, 0.03, 0.28, 0.19, GLASS)
        pen.line([(-0.1, 0.0), (0.1, 0.0)], GLASS, 0.07)
    elif acc == "hat":
        hat = _c((120, 20, 30))
        pen.rect(-1.25, -0.78, 1.25, -0.6, hat, r=0.08)
        pen.rect(-0.75, -1.55, 0.75, -0.7, hat, r=0.12)
        if style == "bun":  # keep the bun visible: it sits on the crown of the hat
            pen.ell(0, -1.7, 0.4, 0.32, hair)
        elif style == "long":  # and long hair falls below the brim
            pen.rect(-1.12, -0.6, -0.85, 1.3, hair)
            pen.rect(0.85, -0.6, 1.12, 1.3, hair)
    elif acc == "earrings":
        gold = _c((255, 200, 0))
        pen.ell(-0.88, 0.38, 0.12, 0.12, gold)
        pen.ell(0.88, 0.38, 0.12, 0.12, gold)
    elif acc == "headband":
        pen.rect(-0.92, -0.62, 0.92, -0.42, _c((250, 40, 200)))


# --------------------------------------------------------------------------------------------
# Objects: one drawing per class; local frame spans about [-1, 1] on both axes.
# --------------------------------------------------------------------------------------------
def _pick(rng: random.Random, palettes: Sequence[Sequence[int]]) -> Sequence[int]:
    return palettes[rng.randrange(len(palettes))]


def _airplane(p: Pen, r: random.Random) -> None:
    body = _jit(r, _pick(r, [(235, 235, 240), (200, 205, 215)]), 8)
    acc = _jit(r, _pick(r, [(200, 30, 30), (30, 60, 180)]), 10)
    p.poly([(-0.1, -0.05), (0.25, -0.05), (-0.05, -0.95), (-0.3, -0.95)], _shade(body, 0.85))
    p.poly([(-0.1, 0.05), (0.25, 0.05), (-0.05, 0.95), (-0.3, 0.95)], _shade(body, 0.85))
    p.poly([(-0.85, -0.02), (-0.65, -0.02), (-0.85, -0.4), (-1.0, -0.4)], acc)
    p.poly([(-0.85, 0.02), (-0.65, 0.02), (-0.85, 0.4), (-1.0, 0.4)], acc)
    p.ell(0, 0, 1.0, 0.14, body)
    p.line([(-0.7, 0), (0.6, 0)], acc, 0.05)
    p.ell(0.8, -0.0, 0.1, 0.07, _c((60, 90, 140)))


def _wheel(p: Pen, x: float, y: float, rad: float) -> None:
    p.ell(x, y, rad, rad, _c((25, 25, 25)))
    p.ell(x, y, rad * 0.45, rad * 0.45, _c((170, 170, 175)))


def _automobile(p: Pen, r: random.Random) -> None:
    col = _jit(r, _pick(r, [(200, 20, 30), (20, 60, 190), (230, 200, 20), (190, 190, 200)]), 10)
    p.poly([(-0.55, -0.05), (-0.35, -0.45), (0.35, -0.45), (0.6, -0.05)], col)
    p.poly([(-0.45, -0.08), (-0.3, -0.38), (-0.02, -0.38), (-0.02, -0.08)], _c((150, 200, 240)))
    p.poly([(0.04, -0.08), (0.04, -0.38), (0.3, -0.38), (0.48, -0.08)], _c((150, 200, 240)))
    p.rect(-1.0, -0.1, 1.0, 0.35, col, r=0.12)
    p.ell(0.93, 0.05, 0.06, 0.06, _c((255, 240, 150)))
    _wheel(p, -0.58, 0.35, 0.22)
    _wheel(p, 0.58, 0.35, 0.22)


def _bird(p: Pen, r: random.Random) -> None:
    col = _jit(r, _pick(r, [(40, 110, 220), (220, 40, 40), (240, 200, 30)]), 12)
    p.poly([(-0.45, 0.05), (-1.0, -0.15), (-1.0, 0.3)], _shade(col, 0.7))
    p.ell(-0.05, 0.1, 0.55, 0.38, col)
    p.ell(0.5, -0.3, 0.27, 0.27, col)
    p.poly([(0.72, -0.36), (1.0, -0.26), (0.72, -0.2)], _c((250, 150, 20)))
    p.ell(-0.1, 0.05, 0.35, 0.2, _shade(col, 0.65))
    p.ell(0.58, -0.36, 0.055, 0.055, BLACK)
    p.line([(-0.1, 0.45), (-0.15, 0.8)], _c((120, 80, 30)), 0.05)
    p.line([(0.1, 0.45), (0.12, 0.8)], _c((120, 80, 30)), 0.05)


def _cat(p: Pen, r: random.Random) -> None:
    col = _jit(r, _pick(r, [(235, 140, 50), (130, 130, 135), (60, 55, 55)]), 10)
    p.ell(0, 0.45, 0.6, 0.55, col)
    p.line([(0.5, 0.85), (0.95, 0.5), (0.85, 0.1)], col, 0.12)
    p.poly([(-0.55, -0.55), (-0.5, -1.0), (-0.15, -0.7)], col)
    p.poly([(0.55, -0.55), (0.5, -1.0), (0.15, -0.7)], col)
    p.ell(0, -0.35, 0.55, 0.45, col)
    p.poly([(-0.48, -0.62), (-0.46, -0.88), (-0.25, -0.7)], _c((240, 160, 170)))
    p.poly([(0.48, -0.62), (0.46, -0.88), (0.25, -0.7)], _c((240, 160, 170)))
    for x in (-0.22, 0.22):
        p.ell(x, -0.4, 0.12, 0.1, _c((120, 220, 60)))
        p.ell(x, -0.4, 0.03, 0.08, BLACK)
    p.poly([(-0.07, -0.22), (0.07, -0.22), (0, -0.14)], _c((240, 120, 140)))
    wh = _c((245, 245, 245))
    for dy in (-0.16, -0.08):
        p.line([(-0.15, dy), (-0.7, dy - 0.05)], wh, 0.025)
        p.line([(0.15, dy), (0.7, dy - 0.05)], wh, 0.025)


def _quadruped(p: Pen, body: RGBA, leg: float, legw: float, bw: float = 0.72, bh: float = 0.32) -> None:
    for x in (-0.55, -0.35, 0.35, 0.55):
        p.rect(x - legw, 0.0, x + legw, 0.15 + leg, body)
    p.ell(0, 0, bw, bh, body)


def _deer(p: Pen, r: random.Random) -> None:
    col = _jit(r, (190, 130, 70), 10)
    _quadruped(p, col, 0.75, 0.05, 0.65, 0.28)
    p.poly([(0.4, -0.15), (0.62, -0.7), (0.8, -0.65), (0.65, -0.05)], col)
    p.ell(0.8, -0.72, 0.22, 0.13, col)
    p.ell(-0.68, -0.12, 0.08, 0.1, WHITE)
    ant = _c((90, 60, 30))
    p.line([(0.7, -0.82), (0.55, -1.15), (0.4, -1.3)], ant, 0.05)
    p.line([(0.55, -1.15), (0.7, -1.35)], ant, 0.05)
    p.line([(0.8, -0.82), (0.9, -1.15), (1.05, -1.3)], ant, 0.05)
    p.line([(0.9, -1.15), (0.8, -1.35)], ant, 0.05)
    for y in (-0.1, 0.05):
        p.ell(-0.2 + y, y, 0.05, 0.05, _c((240, 220, 200)))
    p.ell(0.88, -0.75, 0.04, 0.04, BLACK)


def _dog(p: Pen, r: random.Random) -> None:
    col = _jit(r, _pick(r, [(150, 95, 45), (225, 180, 100), (50, 45, 45)]), 10)
    _quadruped(p, col, 0.4, 0.09, 0.7, 0.33)
    p.line([(-0.65, -0.1), (-0.95, -0.55)], col, 0.1)
    p.ell(0.7, -0.38, 0.33, 0.3, col)
    p.ell(1.0, -0.3, 0.2, 0.14, col)
    p.ell(1.15, -0.33, 0.07, 0.06, BLACK)
    p.ell(0.55, -0.25, 0.13, 0.3, _shade(col, 0.6))
    p.ell(0.78, -0.48, 0.05, 0.05, BLACK)
    p.rect(0.42, -0.12, 0.65, -0.02, _c((220, 30, 40)))


def _frog(p: Pen, r: random.Random) -> None:
    col = _jit(r, (70, 190, 50), 12)
    p.ell(-0.75, 0.55, 0.35, 0.18, col)
    p.ell(0.75, 0.55, 0.35, 0.18, col)
    p.ell(0, 0.15, 0.85, 0.55, col)
    p.ell(0, 0.35, 0.55, 0.3, _c((210, 230, 140)))
    for x in (-0.45, 0.45):
        p.ell(x, -0.4, 0.25, 0.25, col)
        p.ell(x, -0.42, 0.15, 0.15, _c((250, 230, 60)))
        p.ell(x, -0.42, 0.07, 0.12, BLACK)
    p.line([(-0.45, 0.05), (0, 0.15), (0.45, 0.05)], _c((30, 80, 20)), 0.05)


def _horse(p: Pen, r: random.Random) -> None:
    col = _jit(r, _pick(r, [(120, 60, 25), (70, 40, 20)]), 8)
    mane = _c((20, 15, 10))
    _quadruped(p, col, 0.85, 0.075, 0.75, 0.33)
    p.line([(-0.7, -0.1), (-0.95, 0.5)], mane, 0.12)
    p.poly([(0.35, -0.2), (0.6, -0.85), (0.85, -0.78), (0.72, -0.05)], col)
    p.poly([(0.6, -0.9), (1.05, -0.45), (1.18, -0.55), (0.82, -1.0)], col)
    p.line([(0.38, -0.25), (0.62, -0.9)], mane, 0.1)
    p.poly([(0.72, -0.98), (0.78, -1.15), (0.85, -0.98)], col)
    p.ell(0.82, -0.78, 0.04, 0.04, BLACK)


def _ship(p: Pen, r: random.Random) -> None:
    hull = _jit(r, _pick(r, [(30, 30, 40), (150, 20, 20), (20, 40, 90)]), 8)
    p.poly([(-1.0, 0.0), (1.05, 0.0), (0.8, 0.42), (-0.85, 0.42)], hull)
    p.rect(-0.95, 0.0, 1.0, 0.08, WHITE)
    p.rect(-0.55, -0.4, 0.45, 0.0, _c((240, 240, 235)))
    p.rect(-0.35, -0.62, 0.25, -0.4, _c((230, 230, 225)))
    for x in (-0.45, -0.25, -0.05, 0.15, 0.35):
        p.rect(x, -0.28, x + 0.1, -0.18, _c((60, 90, 130)))
    p.rect(0.0, -0.95, 0.18, -0.62, _jit(r, (230, 140, 20), 10))


def _truck(p: Pen, r: random.Random) -> None:
    cab = _jit(r, _pick(r, [(30, 90, 200), (200, 40, 30), (40, 140, 60)]), 10)
    p.rect(-1.0, -0.7, 0.35, 0.3, _jit(r, (225, 225, 220), 8))
    p.rect(0.42, -0.45, 1.0, 0.3, cab, r=0.08)
    p.rect(0.55, -0.38, 0.9, -0.1, _c((150, 200, 240)))
    p.rect(-1.0, 0.25, 1.0, 0.38, _c((60, 60, 60)))
    for x in (-0.72, -0.35, 0.7):
        _wheel(p, x, 0.4, 0.2)


def _fish_body(p: Pen, col: RGBA, length: float, height: float, tail: RGBA) -> None:
    p.poly([(-length + 0.15, 0), (-1.0, -height), (-1.0, height)], tail)
    p.ell(0.05, 0, length, height, col)


def _trout(p: Pen, r: random.Random) -> None:
    col = _jit(r, (120, 140, 70), 10)
    _fish_body(p, col, 0.85, 0.26, _shade(col, 0.8))
    p.rect(-0.6, -0.03, 0.6, 0.07, _c((235, 110, 130)))
    for k in range(9):
        p.ell(-0.55 + 0.13 * k, -0.14 + 0.05 * (k % 2), 0.03, 0.03, _c((40, 40, 25)))
    p.ell(0.68, -0.06, 0.05, 0.05, BLACK)


def _ray(p: Pen, r: random.Random) -> None:
    col = _jit(r, (150, 165, 185), 10)
    p.line([(-0.3, 0), (-1.05, 0.05)], _shade(col, 0.6), 0.06)
    p.poly([(0.6, 0), (0.0, -0.85), (-0.45, 0), (0.0, 0.85)], col)
    for x, y in ((0.0, -0.4), (0.0, 0.4), (-0.15, 0.0), (0.15, -0.15), (0.15, 0.15)):
        p.ell(x, y, 0.06, 0.06, _c((60, 70, 95)))
    p.ell(0.3, -0.12, 0.05, 0.05, BLACK)
    p.ell(0.3, 0.12, 0.05, 0.05, BLACK)


def _bee(p: Pen, r: random.Random) -> None:
    wing = _c((215, 235, 250))
    p.ell(-0.1, -0.55, 0.35, 0.28, wing)
    p.ell(0.25, -0.5, 0.28, 0.22, wing)
    p.ell(0, 0.05, 0.75, 0.45, _jit(r, (250, 200, 20), 8))
    for x in (-0.35, 0.0, 0.35):
        p.rect(x - 0.08, -0.4, x + 0.08, 0.48, BLACK)
    p.ell(0.78, 0.0, 0.26, 0.26, BLACK)
    p.poly([(-0.75, 0.0), (-1.0, 0.05), (-0.75, 0.12)], BLACK)


def _stem(p: Pen, top: float, leaf: bool = True) -> None:
    g = _c((40, 140, 40))
    p.rect(-0.05, top, 0.05, 1.0, g)
    if leaf:
        p.ell(-0.25, 0.55, 0.25, 0.09, g)
        p.ell(0.25, 0.35, 0.25, 0.09, g)


def _rose(p: Pen, r: random.Random) -> None:
    _stem(p, 0.0)
    col = _jit(r, (205, 20, 40), 10)
    p.ell(0, -0.45, 0.5, 0.45, _shade(col, 0.75))
    p.ell(0, -0.45, 0.36, 0.33, col)
    p.ell(0.03, -0.47, 0.22, 0.2, _shade(col, 0.7))
    p.ell(0.04, -0.48, 0.1, 0.09, col)


def _lobster(p: Pen, r: random.Random) -> None:
    col = _jit(r, (200, 40, 25), 10)
    for k in range(5):
        p.ell(-0.55 + 0.22 * k, 0, 0.16, 0.2 - 0.01 * (4 - k), col)
    p.poly([(-0.65, 0), (-1.0, -0.25), (-1.0, 0.25)], col)
    p.ell(0.55, 0, 0.3, 0.22, col)
    p.line([(0.7, -0.1), (0.95, -0.45)], col, 0.06)
    p.line([(0.7, 0.1), (0.95, 0.45)], col, 0.06)
    p.ell(1.0, -0.55, 0.2, 0.13, col)
    p.ell(1.0, 0.55, 0.2, 0.13, col)
    p.line([(0.85, -0.05), (1.1, -0.2), (1.2, -0.1)], _shade(col, 0.8), 0.03)
    p.line([(0.85, 0.05), (1.1, 0.2), (1.2, 0.1)], _shade(col, 0.8), 0.03)


def _crab(p: Pen, r: random.Random) -> None:
    col = _jit(r, (235, 100, 20), 10)
    for k in range(3):
        y = 0.05 + 0.15 * k
        p.line([(-0.5, y), (-0.95, y + 0.3)], col, 0.06)
        p.line([(0.5, y), (0.95, y + 0.3)], col, 0.06)
    p.line([(-0.5, -0.1), (-0.8, -0.55)], col, 0.08)
    p.line([(0.5, -0.1), (0.8, -0.55)], col, 0.08)
    p.ell(-0.8, -0.7, 0.2, 0.2, col)
    p.ell(0.8, -0.7, 0.2, 0.2, col)
    p.ell(0, 0.1, 0.65, 0.38, col)
    for x in (-0.15, 0.15):
        p.line([(x, -0.2), (x, -0.42)], col, 0.04)
        p.ell(x, -0.45, 0.06, 0.06, BLACK)


def _tree(p: Pen, crown: RGBA, r: random.Random) -> None:
    p.rect(-0.13, 0.0, 0.13, 1.0, _jit(r, (100, 65, 30), 8))
    for x, y, rad in (
        (0, -0.45, 0.5),
        (-0.42, -0.1, 0.38),
        (0.42, -0.1, 0.38),
        (-0.3, -0.7, 0.33),
        (0.32, -0.68, 0.33),
        (0, -0.05, 0.35),
    ):
        p.ell(x, y, rad, rad, crown)


def _oak_tree(p: Pen, r: random.Random) -> None:
    _tree(p, _jit(r, (60, 150, 50), 10), r)


def _maple_tree(p: Pen, r: random.Random) -> None:
    _tree(p, _jit(r, _pick(r, [(215, 60, 25), (235, 130, 20)]), 10), r)


def _pine_tree(p: Pen, r: random.Random) -> None:
    p.rect(-0.09, 0.6, 0.09, 1.0, _jit(r, (100, 65, 30), 8))
    g = _jit(r, (20, 90, 45), 8)
    for k, (y, w) in enumerate(((0.65, 0.65), (0.2, 0.5), (-0.25, 0.36))):
        p.poly([(-w, y), (w, y), (0, y - 0.6 - 0.05 * k)], g)


def _willow_tree(p: Pen, r: random.Random) -> None:
    p.rect(-0.1, -0.3, 0.1, 1.0, _jit(r, (100, 70, 35), 8))
    g = _jit(r, (150, 195, 70), 10)
    p.ell(0, -0.55, 0.7, 0.3, g)
    for k in range(8):
        x = -0.75 + 0.21 * k
        p.line([(x * 0.8, -0.5), (x, 0.55 + 0.1 * (k % 2))], g, 0.08)


def _aquarium_fish(p: Pen, r: random.Random) -> None:
    col = _jit(r, (250, 120, 10), 8)
    _fish_body(p, col, 0.7, 0.45, col)
    for x in (-0.3, 0.3):
        p.rect(x - 0.08, -0.42, x + 0.08, 0.42, WHITE)
    p.ell(0.5, -0.1, 0.08, 0.08, BLACK)


def _tulip(p: Pen, r: random.Random) -> None:
    _stem(p, -0.2, leaf=False)
    g = _c((40, 140, 40))
    p.poly([(0, 0.95), (-0.35, 0.1), (-0.05, 0.6)], g)
    col = _jit(r, _pick(r, [(240, 60, 150), (250, 210, 30)]), 8)
    p.poly(
        [
            (-0.35, -0.9),
            (-0.17, -0.6),
            (0, -0.95),
            (0.17, -0.6),
            (0.35, -0.9),
            (0.35, -0.45),
            (0.2, -0.2),
            (-0.2, -0.2),
            (-0.35, -0.45),
        ],
        col,
    )


def _orchid(p: Pen, r: random.Random) -> None:
    p.line([(0, 1.0), (0.1, 0.3), (-0.05, -0.2)], _c((60, 110, 40)), 0.05)
    col = _jit(r, (190, 60, 200), 10)
    for a in range(5):
        ang = np.pi * (-0.5 + 0.4 * a)
        p.ell(0.45 * np.cos(ang), -0.45 + 0.45 * np.sin(ang), 0.3, 0.3, col)
    p.ell(0, -0.45, 0.22, 0.22, _c((250, 240, 250)))
    p.ell(0, -0.4, 0.1, 0.12, _c((250, 220, 40)))


def _sunflower(p: Pen, r: random.Random) -> None:
    p.rect(-0.07, 0.0, 0.07, 1.0, _c((50, 130, 40)))
    col = _jit(r, (250, 210, 20), 8)
    for a in range(12):
        ang = 2 * np.pi * a / 12
        p.ell(0.5 * np.cos(ang), -0.35 + 0.5 * np.sin(ang), 0.2, 0.2, col)
    p.ell(0, -0.35, 0.38, 0.38, _c((90, 50, 20)))


def _plain(p: Pen, r: random.Random) -> None:
    S = p.S
    h = S * r.uniform(0.45, 0.6)
    col = _jit(r, _pick(r, [(150, 190, 70), (200, 190, 90)]), 10)
    p.d.polygon([(0, h), (S, h - S * r.uniform(-0.04, 0.04)), (S, S), (0, S)], fill=col)
    dark = _shade(col, 0.85)
    for k in range(6):
        y = h + (S - h) * (k + 1) / 7
        p.d.line([(0, y), (S, y + r.uniform(-2, 2))], fill=dark, width=max(1, S // 64))


def _bowl(p: Pen, r: random.Random) -> None:
    col = _jit(r, _pick(r, [(60, 110, 200), (235, 235, 230), (200, 80, 60)]), 10)
    p.chord(0, -0.1, 0.95, 0.75, 0, 180, col)
    p.ell(0, -0.1, 0.95, 0.2, _shade(col, 0.75))
    p.ell(0, -0.1, 0.82, 0.13, _c((250, 240, 220)))
    p.rect(-0.3, 0.6, 0.3, 0.72, _shade(col, 0.8))


def _mountain(p: Pen, r: random.Random) -> None:
    col = _jit(r, (110, 110, 125), 10)
    p.poly([(-1.0, 0.8), (-0.45, -0.2), (0.1, 0.8)], _shade(col, 0.8))
    p.poly([(-0.7, 0.8), (0.1, -0.9), (1.0, 0.8)], col)
    p.poly([(-0.13, -0.42), (0.1, -0.9), (0.33, -0.42), (0.2, -0.5), (0.1, -0.38), (0.0, -0.5)], WHITE)


def _house(p: Pen, r: random.Random) -> None:
    wall = _jit(r, _pick(r, [(230, 210, 170), (190, 80, 60), (240, 240, 235)]), 8)
    p.rect(-0.7, -0.15, 0.7, 0.9, wall)
    p.poly([(-0.88, -0.1), (0, -0.85), (0.88, -0.1)], _jit(r, (120, 40, 30), 10))
    p.rect(-0.15, 0.35, 0.15, 0.9, _c((100, 60, 30)))
    for x in (-0.45, 0.45):
        p.rect(x - 0.15, 0.05, x + 0.15, 0.35, _c((150, 200, 240)))


def _motorcycle(p: Pen, r: random.Random) -> None:
    col = _jit(r, _pick(r, [(210, 30, 30), (30, 30, 30), (30, 80, 200)]), 10)
    for x in (-0.65, 0.65):
        p.ell(x, 0.35, 0.33, 0.33, _c((20, 20, 20)))
        p.ell(x, 0.35, 0.2, 0.2, _c((200, 200, 205)))
        p.ell(x, 0.35, 0.08, 0.08, _c((60, 60, 60)))
    grey = _c((120, 120, 125))
    p.line([(-0.65, 0.35), (-0.1, 0.0), (0.45, -0.1), (0.65, 0.35)], grey, 0.07)
    p.ell(0.0, -0.15, 0.32, 0.15, col)
    p.rect(-0.6, -0.15, -0.15, -0.03, _c((20, 20, 20)), r=0.05)
    p.line([(0.45, -0.1), (0.55, -0.45), (0.4, -0.5)], grey, 0.06)


def _mushroom(p: Pen, r: random.Random) -> None:
    p.rect(-0.2, -0.15, 0.2, 0.9, _c((240, 235, 220)), r=0.1)
    col = _jit(r, (210, 30, 25), 10)
    p.chord(0, 0.0, 0.9, 0.8, 180, 360, col)
    for x, y in ((-0.5, -0.2), (0.0, -0.55), (0.45, -0.3), (-0.2, -0.35), (0.25, -0.12)):
        p.ell(x, y, 0.09, 0.08, WHITE)


def _streetcar(p: Pen, r: random.Random) -> None:
    col = _jit(r, _pick(r, [(240, 190, 20), (40, 140, 80), (200, 40, 40)]), 10)
    grey = _c((50, 50, 50))
    p.line([(-0.2, -0.45), (0.05, -0.85), (0.3, -0.45)], grey, 0.04)
    p.line([(-0.15, -0.85), (0.25, -0.85)], grey, 0.04)
    p.rect(-1.0, -0.45, 1.0, 0.35, col, r=0.15)
    for k in range(6):
        x = -0.85 + 0.3 * k
        p.rect(x, -0.3, x + 0.2, -0.05, _c((170, 215, 245)))
    p.rect(-1.0, 0.12, 1.0, 0.2, WHITE)
    for x in (-0.7, -0.5, 0.5, 0.7):
        p.ell(x, 0.4, 0.09, 0.09, grey)


def _seal(p: Pen, r: random.Random) -> None:
    col = _jit(r, (105, 105, 110), 10)
    p.poly([(-0.55, 0.25), (-1.0, 0.15), (-1.0, 0.45)], _shade(col, 0.8))
    p.ell(-0.05, 0.2, 0.65, 0.3, col)
    p.poly([(0.25, 0.0), (0.45, -0.5), (0.7, -0.35), (0.55, 0.15)], col)
    p.ell(0.6, -0.5, 0.25, 0.2, col)
    p.ell(0.2, 0.45, 0.2, 0.08, _shade(col, 0.75))
    p.ell(0.62, -0.55, 0.05, 0.05, BLACK)
    p.ell(0.83, -0.45, 0.05, 0.04, BLACK)


def _orange(p: Pen, r: random.Random) -> None:
    col = _jit(r, (250, 140, 10), 6)
    p.ell(0, 0.1, 0.75, 0.72, col)
    p.ell(-0.25, -0.15, 0.18, 0.13, _c((255, 190, 90)))
    p.ell(0.2, -0.65, 0.28, 0.1, _c((40, 140, 40)))
    p.rect(-0.03, -0.72, 0.03, -0.55, _c((90, 60, 20)))


def _cup(p: Pen, r: random.Random) -> None:
    col = _jit(r, _pick(r, [(245, 245, 240), (80, 150, 220), (230, 90, 120)]), 8)
    p.ell(0, 0.75, 0.95, 0.17, _shade(col, 0.85))
    p.ell(0.52, 0.05, 0.3, 0.3, None, col, 0.1)
    p.rect(-0.5, -0.55, 0.55, 0.7, col, r=0.12)
    p.ell(0.02, -0.55, 0.52, 0.1, _c((110, 60, 30)))


def _flatfish(p: Pen, r: random.Random) -> None:
    col = _jit(r, (165, 130, 85), 10)
    p.poly([(-0.7, 0), (-1.0, -0.25), (-1.0, 0.25)], _shade(col, 0.85))
    p.ell(0.05, 0, 0.8, 0.55, _shade(col, 0.8))
    p.ell(0.05, 0, 0.7, 0.45, col)
    for x, y in ((-0.3, -0.15), (0.1, 0.2), (-0.1, -0.3), (0.3, -0.05), (-0.4, 0.2)):
        p.ell(x, y, 0.07, 0.07, _c((230, 120, 40)))
    p.ell(0.55, -0.2, 0.06, 0.06, BLACK)
    p.ell(0.6, -0.05, 0.06, 0.06, BLACK)


def _shark(p: Pen, r: random.Random) -> None:
    col = _jit(r, (100, 115, 135), 8)
    p.poly([(-0.7, 0), (-1.05, -0.45), (-0.9, 0.0), (-1.05, 0.35)], col)
    p.poly([(-0.15, -0.2), (0.1, -0.75), (0.25, -0.2)], col)
    p.ell(0.05, 0, 0.9, 0.24, col)
    p.chord(0.05, 0.0, 0.85, 0.22, 0, 180, _c((235, 235, 240)))
    p.poly([(0.05, 0.15), (-0.15, 0.5), (0.25, 0.15)], col)
    p.ell(0.68, -0.07, 0.04, 0.04, BLACK)


def _hamster(p: Pen, r: random.Random) -> None:
    col = _jit(r, (225, 155, 70), 8)
    p.ell(-0.45, -0.55, 0.17, 0.17, col)
    p.ell(0.45, -0.55, 0.17, 0.17, col)
    p.ell(0, 0.05, 0.78, 0.68, col)
    p.ell(0, 0.35, 0.48, 0.35, _c((250, 240, 225)))
    p.ell(-0.25, -0.15, 0.07, 0.07, BLACK)
    p.ell(0.25, -0.15, 0.07, 0.07, BLACK)
    p.ell(0, 0.02, 0.07, 0.05, _c((240, 130, 150)))


def _tiger(p: Pen, r: random.Random) -> None:
    col = _jit(r, (235, 125, 20), 8)
    _quadruped(p, col, 0.45, 0.1, 0.8, 0.32)
    p.line([(-0.75, 0.0), (-1.05, -0.3)], col, 0.1)
    p.ell(0.8, -0.3, 0.32, 0.28, col)
    p.ell(0.65, -0.58, 0.09, 0.09, col)
    p.ell(0.95, -0.58, 0.09, 0.09, col)
    for k in range(6):
        x = -0.55 + 0.2 * k
        p.line([(x, -0.3), (x + 0.08, 0.25)], BLACK, 0.06)
    p.line([(0.72, -0.5), (0.75, -0.35)], BLACK, 0.04)
    p.ell(0.95, -0.33, 0.05, 0.05, BLACK)
    p.ell(1.05, -0.2, 0.12, 0.08, WHITE)


def _tank(p: Pen, r: random.Random) -> None:
    col = _jit(r, (85, 100, 45), 8)
    p.rect(-0.2, -0.35, 1.05, -0.25, col)
    p.rect(-1.0, 0.1, 1.0, 0.55, _c((50, 50, 45)), r=0.22)
    for x in (-0.7, -0.35, 0.0, 0.35, 0.7):
        p.ell(x, 0.33, 0.13, 0.13, _c((110, 110, 100)))
    p.poly([(-0.95, 0.1), (-0.8, -0.15), (0.8, -0.15), (0.95, 0.1)], col)
    p.rect(-0.45, -0.5, 0.25, -0.13, col, r=0.1)


def _turtle(p: Pen, r: random.Random) -> None:
    skin = _jit(r, (150, 170, 90), 8)
    p.ell(0.8, 0.1, 0.22, 0.16, skin)
    p.rect(-0.55, 0.1, -0.35, 0.42, skin)
    p.rect(0.3, 0.1, 0.5, 0.42, skin)
    shell = _jit(r, (50, 110, 45), 8)
    p.chord(0, 0.25, 0.75, 0.7, 180, 360, shell)
    dark = _shade(shell, 0.65)
    for x in (-0.4, 0.0, 0.4):
        p.ell(x, -0.1, 0.15, 0.12, dark)
    p.rect(-0.75, 0.2, 0.75, 0.3, _c((200, 180, 110)))
    p.ell(0.88, 0.05, 0.035, 0.035, BLACK)


def _cloud(p: Pen, r: random.Random) -> None:
    col = _jit(r, (250, 250, 252), 4)
    for x, y, rad in ((-0.55, 0.15, 0.35), (-0.15, -0.1, 0.45), (0.3, -0.05, 0.4), (0.65, 0.15, 0.3)):
        p.ell(x, y, rad, rad * 0.85, col)
    p.rect(-0.85, 0.1, 0.9, 0.38, col, r=0.14)


def _road(p: Pen, r: random.Random) -> None:
    S = p.S
    h = S * r.uniform(0.38, 0.5)
    mid = S * (0.5 + r.uniform(-0.08, 0.08))
    grey = _jit(r, (80, 80, 85), 8)
    p.d.polygon([(mid - S * 0.05, h), (mid + S * 0.05, h), (S * 0.95, S), (S * 0.05, S)], fill=grey)
    y = h
    while y < S:
        t = (y - h) / (S - h)
        dy = S * (0.03 + 0.07 * t)
        p.d.rectangle(
            [mid - 1 - 2 * t * S / 64, y, mid + 1 + 2 * t * S / 64, min(S, y + dy)], fill=_c((245, 210, 30))
        )
        y += 2 * dy


def _elephant(p: Pen, r: random.Random) -> None:
    col = _jit(r, (140, 140, 145), 8)
    _quadruped(p, col, 0.45, 0.16, 0.78, 0.42)
    p.ell(0.75, -0.3, 0.35, 0.35, col)
    p.line([(0.95, -0.25), (1.1, 0.2), (1.05, 0.55)], col, 0.15)
    p.ell(0.5, -0.2, 0.3, 0.38, _shade(col, 0.8))
    p.line([(0.85, -0.05), (1.0, 0.1)], WHITE, 0.06)
    p.ell(0.85, -0.4, 0.04, 0.04, BLACK)


def _rocket(p: Pen, r: random.Random) -> None:
    red = _jit(r, (220, 35, 35), 10)
    p.poly([(-0.18, 0.55), (0.0, 1.05), (0.18, 0.55)], _c((255, 170, 30)))
    p.poly([(-0.25, 0.2), (-0.55, 0.65), (-0.25, 0.55)], red)
    p.poly([(0.25, 0.2), (0.55, 0.65), (0.25, 0.55)], red)
    p.rect(-0.25, -0.5, 0.25, 0.6, _c((240, 240, 245)))
    p.poly([(-0.25, -0.5), (0.0, -1.0), (0.25, -0.5)], red)
    p.ell(0, -0.15, 0.12, 0.12, _c((70, 140, 220)))


def _raccoon(p: Pen, r: random.Random) -> None:
    col = _jit(r, (125, 120, 115), 8)
    _quadruped(p, col, 0.35, 0.1, 0.65, 0.32)
    for k in range(4):
        x = -0.75 - 0.12 * k
        p.ell(x, -0.05 - 0.1 * k, 0.1, 0.1, col if k % 2 == 0 else BLACK)
    p.ell(0.68, -0.3, 0.3, 0.26, col)
    p.poly([(0.5, -0.5), (0.55, -0.72), (0.65, -0.52)], col)
    p.poly([(0.75, -0.52), (0.85, -0.72), (0.9, -0.5)], col)
    p.rect(0.45, -0.38, 0.95, -0.22, BLACK, r=0.06)
    p.ell(0.72, -0.3, 0.05, 0.05, WHITE)
    p.ell(0.95, -0.2, 0.1, 0.08, _c((230, 230, 225)))


# Generic "an object" pool: plain geometric things that are no named class.
_GENERIC_COLOURS = [(60, 90, 220), (150, 60, 190), (30, 170, 170), (220, 50, 160), (150, 150, 150)]


def _cube(p: Pen, r: random.Random) -> None:
    c = _jit(r, _pick(r, _GENERIC_COLOURS), 10)
    p.poly([(-0.6, -0.3), (0.0, -0.65), (0.6, -0.3), (0.0, 0.05)], _shade(c, 1.25))
    p.poly([(-0.6, -0.3), (0.0, 0.05), (0.0, 0.8), (-0.6, 0.45)], c)
    p.poly([(0.6, -0.3), (0.0, 0.05), (0.0, 0.8), (0.6, 0.45)], _shade(c, 0.7))


def _ball(p: Pen, r: random.Random) -> None:
    c = _jit(r, _pick(r, _GENERIC_COLOURS), 10)
    p.ell(0, 0, 0.7, 0.7, c)
    p.ell(-0.25, -0.25, 0.2, 0.2, _shade(c, 1.5))


def _cone(p: Pen, r: random.Random) -> None:
    c = _jit(r, _pick(r, _GENERIC_COLOURS), 10)
    p.ell(0, 0.6, 0.55, 0.15, _shade(c, 0.7))
    p.poly([(-0.55, 0.6), (0.0, -0.8), (0.55, 0.6)], c)


def _ring(p: Pen, r: random.Random) -> None:
    c = _jit(r, _pick(r, _GENERIC_COLOURS), 10)
    p.ell(0, 0, 0.7, 0.7, None, c, 0.25)


def _cylinder(p: Pen, r: random.Random) -> None:
    c = _jit(r, _pick(r, _GENERIC_COLOURS), 10)
    p.ell(0, 0.55, 0.45, 0.14, _shade(c, 0.7))
    p.rect(-0.45, -0.55, 0.45, 0.55, c)
    p.ell(0, -0.55, 0.45, 0.14, _shade(c, 1.3))


Drawer = Callable[[Pen, random.Random], None]
OBJECT_DRAWERS: dict[str, Drawer] = {
    "airplane": _airplane,
    "automobile": _automobile,
    "bird": _bird,
    "cat": _cat,
    "deer": _deer,
    "dog": _dog,
    "frog": _frog,
    "horse": _horse,
    "ship": _ship,
    "truck": _truck,
    "trout": _trout,
    "ray": _ray,
    "bee": _bee,
    "rose": _rose,
    "lobster": _lobster,
    "oak tree": _oak_tree,
    "aquarium fish": _aquarium_fish,
    "tulip": _tulip,
    "plain": _plain,
    "bowl": _bowl,
    "pine tree": _pine_tree,
    "mountain": _mountain,
    "house": _house,
    "crab": _crab,
    "willow tree": _willow_tree,
    "motorcycle": _motorcycle,
    "mushroom": _mushroom,
    "streetcar": _streetcar,
    "maple tree": _maple_tree,
    "seal": _seal,
    "orange": _orange,
    "cup": _cup,
    "flatfish": _flatfish,
    "sunflower": _sunflower,
    "shark": _shark,
    "hamster": _hamster,
    "tiger": _tiger,
    "tank": _tank,
    "turtle": _turtle,
    "cloud": _cloud,
    "orchid": _orchid,
    "road": _road,
    "elephant": _elephant,
    "rocket": _rocket,
    "raccoon": _raccoon,
}
GENERIC_DRAWERS: dict[str, Drawer] = {
    "cube": _cube,
    "ball": _ball,
    "cone": _cone,
    "ring": _ring,
    "cylinder": _cylinder,
}
# Classes that are landscapes, not things: drawn full-frame, never placed in multi-object captions.
LANDSCAPES: frozenset[str] = frozenset({"plain", "road", "mountain", "cloud"})
# Default backgrounds per class (a loose CIFAR-like correlation; others fall back to any photo scene).
OBJECT_SCENES: dict[str, tuple[str, ...]] = {
    "airplane": ("sky", "cloudy"),
    "ship": ("water", "lake"),
    "bird": ("sky", "field", "studio"),
    "trout": ("underwater",),
    "ray": ("seabed",),
    "aquarium fish": ("underwater",),
    "flatfish": ("seabed",),
    "shark": ("underwater",),
    "seal": ("snow", "beach"),
    "crab": ("beach", "seabed"),
    "lobster": ("seabed", "studio"),
    "plain": ("sky",),
    "road": ("field",),
    "mountain": ("sky", "cloudy"),
    "cloud": ("sky",),
    "rocket": ("night", "sky"),
    "turtle": ("beach", "field"),
    "frog": ("field", "lake"),
}
PHOTO_SCENES: tuple[str, ...] = (
    "field",
    "beach",
    "street",
    "snow",
    "night",
    "room",
    "lake",
    "cloudy",
    "studio",
)


# --------------------------------------------------------------------------------------------
# Backgrounds: a bank of pre-rendered variants per kind (rendering them per image would be slow).
# --------------------------------------------------------------------------------------------
_N_VARIANTS = 12


def _smooth_noise(rng: np.random.Generator, S: int, cells: int) -> np.ndarray:
    low = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray((low * 255).astype(np.uint8)).resize((S, S), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _vgrad(S: int, top: Sequence[float], bottom: Sequence[float]) -> np.ndarray:
    t = np.linspace(0, 1, S, dtype=np.float32)[:, None, None]
    return (np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t) * np.ones(
        (1, S, 1), np.float32
    )


def _landscape(rng: np.random.Generator, S: int, sky_top, sky_bot, ground, horizon, tex: float = 0.15):
    img = _vgrad(S, sky_top, sky_bot)
    h = int(S * horizon)
    noise = _smooth_noise(rng, S, 16)
    g = np.asarray(ground, np.float32) * (1 - tex + 2 * tex * noise[..., None])
    img[h:] = g[h:] * np.linspace(0.9, 1.1, S - h, dtype=np.float32)[:, None, None]
    mask = np.zeros((S, S), bool)
    mask[h:] = True
    return img, mask


def _make_background(kind: str, rng: np.random.Generator, S: int) -> tuple[np.ndarray, np.ndarray]:
    u = rng.uniform
    ground = np.zeros((S, S), bool)
    if kind == "plain":  # portrait studio: muted solid colour, soft gradient
        base = rng.uniform(90, 220, 3)
        img = _vgrad(S, base * 1.1, base * 0.8)
    elif kind == "studio":
        base = np.full(3, u(170, 235)) + rng.uniform(-15, 15, 3)
        img = _vgrad(S, base, base * 0.85)
    elif kind == "flag":
        palettes = [
            ((200, 30, 40), (245, 245, 245), (30, 60, 160)),
            ((20, 120, 60), (245, 245, 245), (210, 40, 40)),
            ((30, 60, 160), (250, 210, 30), (30, 60, 160)),
            ((210, 40, 40), (250, 210, 30), (20, 20, 20)),
        ]
        cols = palettes[rng.integers(len(palettes))]
        img = np.zeros((S, S, 3), np.float32)
        vertical = rng.random() < 0.5
        for k in range(3):
            sl = slice(k * S // 3, (k + 1) * S // 3)
            if vertical:
                img[:, sl] = cols[k]
            else:
                img[sl] = cols[k]
        wave = 0.85 + 0.15 * np.sin(np.linspace(0, u(4, 9), S, dtype=np.float32) + u(0, 6))
        img *= wave[None, :, None]
    elif kind == "crowd":
        img = _vgrad(S, rng.uniform(150, 230, 3), rng.uniform(90, 160, 3))
        pil = Image.fromarray(img.astype(np.uint8))
        d = ImageDraw.Draw(pil)
        for _ in range(int(rng.integers(14, 22))):
            x, y = u(0, S), u(0.45 * S, 1.05 * S)
            rad = u(0.04, 0.07) * S
            body = tuple(int(v) for v in rng.integers(30, 240, 3))
            skin = SKIN[list(SKIN)[rng.integers(len(SKIN))]]
            d.ellipse([x - 1.6 * rad, y + 0.8 * rad, x + 1.6 * rad, y + 4 * rad], fill=body)
            d.ellipse([x - rad, y - rad, x + rad, y + rad], fill=tuple(int(v * 0.9) for v in skin))
        img = np.asarray(pil, np.float32)
        img = 0.75 * img + 0.25 * img.mean(axis=(0, 1), keepdims=True)  # pushed back: out of focus
    elif kind == "paper":
        img = np.full((S, S, 3), 240.0, np.float32) * (0.95 + 0.05 * _smooth_noise(rng, S, 32)[..., None])
    elif kind == "oil":
        base = rng.uniform(40, 130, 3) * np.array([1.1, 0.9, 0.7])
        img = _vgrad(S, base * 1.2, base * 0.7)
    elif kind == "field":
        img, ground = _landscape(rng, S, (90, 150, 235), (180, 215, 245), (80, 160, 60), u(0.45, 0.65))
    elif kind == "beach":
        img, ground = _landscape(rng, S, (80, 160, 240), (170, 210, 245), (230, 210, 150), u(0.5, 0.65))
        h = int(S * u(0.35, 0.45))
        img[h : h + S // 10] = (40, 110, 190)
    elif kind == "street":
        img, ground = _landscape(rng, S, (170, 175, 185), (210, 210, 215), (95, 95, 100), u(0.5, 0.65))
        for _ in range(4):  # buildings
            x0, w, top = int(u(0, S)), int(u(0.1, 0.25) * S), int(u(0.1, 0.4) * S)
            img[top : int(S * 0.55), x0 : x0 + w] = rng.uniform(110, 200, 3)
    elif kind == "snow":
        img, ground = _landscape(
            rng, S, (150, 175, 210), (215, 225, 240), (245, 248, 252), u(0.45, 0.6), 0.05
        )
    elif kind == "night":
        img, ground = _landscape(rng, S, (5, 10, 40), (30, 40, 90), (30, 40, 30), u(0.6, 0.75))
        for _ in range(25):
            y, x = int(u(0, 0.55) * S), int(u(0, S - 2))
            img[y : y + 2, x : x + 2] = 240
    elif kind == "room":
        img, ground = _landscape(
            rng, S, rng.uniform(180, 235, 3), rng.uniform(150, 210, 3), (150, 100, 60), u(0.55, 0.7)
        )
    elif kind == "lake":
        img, ground = _landscape(rng, S, (110, 170, 240), (190, 220, 245), (50, 100, 160), u(0.4, 0.55), 0.1)
        img[int(S * 0.3) : int(S * 0.4)] *= np.array([0.6, 0.9, 0.6], np.float32)  # far shore trees
    elif kind == "cloudy":
        img = _vgrad(S, (130, 135, 145), (190, 195, 200)) * (0.9 + 0.2 * _smooth_noise(rng, S, 6)[..., None])
        h = int(S * u(0.65, 0.8))
        img[h:] = (90, 120, 70)
        ground[h:] = True
    elif kind == "sky":
        img = _vgrad(S, (50, 120, 230), (170, 210, 250))
    elif kind == "water":
        img, ground = _landscape(rng, S, (110, 170, 240), (200, 225, 245), (30, 80, 150), u(0.45, 0.6), 0.25)
    elif kind == "underwater":
        img = _vgrad(S, (40, 150, 190), (10, 50, 110)) * (0.9 + 0.2 * _smooth_noise(rng, S, 8)[..., None])
    elif kind == "seabed":
        img = _vgrad(S, (200, 185, 140), (160, 140, 100)) * (
            0.85 + 0.3 * _smooth_noise(rng, S, 20)[..., None]
        )
    elif kind == "ground":  # the "ground" mapping concept: bare earth, nothing on it
        img, ground = _landscape(
            rng,
            S,
            (120, 170, 230),
            (190, 215, 240),
            rng.uniform(100, 150, 3) * np.array([1.0, 0.8, 0.6]),
            u(0.12, 0.3),
            0.35,
        )
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    return np.clip(img, 0, 255).astype(np.uint8), ground


@lru_cache(maxsize=64)
def background_bank(kind: str, S: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """``_N_VARIANTS`` deterministic variants of a background kind at canvas size ``S``."""
    seed = sum(ord(ch) * 31**i for i, ch in enumerate(kind)) % (2**31)
    rng = np.random.default_rng([seed, S])
    return tuple(_make_background(kind, rng, S) for _ in range(_N_VARIANTS))


@lru_cache(maxsize=64)
def _pil_bank(kind: str, S: int) -> tuple[tuple[Image.Image, np.ndarray], ...]:
    """The bank as PIL images, mirrored copies included: per image we only ``copy()`` (a memcpy)."""
    out = []
    for img, ground in background_bank(kind, S):
        out.append((Image.fromarray(img), ground[::2, ::2].copy()))
        out.append((Image.fromarray(np.ascontiguousarray(img[:, ::-1])), ground[::2, ::-2].copy()))
    return tuple(out)


@lru_cache(maxsize=8)
def _texture(S: int) -> np.ndarray:
    """A 2S x 2S brush/paper texture; random crops of it give per-image texture for free."""
    rng = np.random.default_rng(12345)
    fine = rng.random((2 * S, 2 * S)).astype(np.float32)
    streaks = _smooth_noise(rng, 2 * S, S // 4)
    return (0.5 * fine + 0.5 * streaks).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Style filters (applied at output size; the mask is untouched)
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _exposure_table(percent: int) -> list[int]:
    return [min(255, int(v * percent / 100.0)) for v in range(256)] * 3


def _sketch(img: np.ndarray, rng: random.Random) -> np.ndarray:
    L = img.astype(np.float32) @ np.array([0.299 / 255, 0.587 / 255, 0.114 / 255], np.float32)
    e = np.zeros_like(L)
    e[:, 1:] = np.abs(L[:, 1:] - L[:, :-1])
    e[1:, :] = np.maximum(e[1:, :], np.abs(L[1:, :] - L[:-1, :]))
    ink = np.clip((e - 0.05) * 5.0, 0.0, 1.0)
    shade = 0.55 + 0.45 * np.round(L * 4) / 4  # pencil hatching: few tone levels
    H = L.shape[0]
    t = _texture(H)
    oy, ox = rng.randrange(H), rng.randrange(H)
    grain = 0.93 + 0.07 * t[oy : oy + H, ox : ox + H]
    v = np.clip(250.0 * shade * (1.0 - 0.9 * ink) * grain, 0, 255)
    return np.repeat(v[..., None], 3, axis=2).astype(np.uint8)


def _oil(img: np.ndarray, rng: random.Random) -> np.ndarray:
    soft = img.astype(np.float32)
    mean = (soft @ _THIRDS)[..., None]
    f = mean + 1.35 * (soft - mean)  # saturated pigments
    f = np.round(f * np.float32(1 / 40.0)) * np.float32(40.0)  # posterised: flat brush strokes
    H = f.shape[0]
    t = _texture(H)
    oy, ox = rng.randrange(H), rng.randrange(H)
    f *= (0.82 + 0.3 * t[oy : oy + H, ox : ox + H])[..., None]
    f += _VARNISH  # warm varnish
    return np.clip(f, 0, 255).astype(np.uint8)


_VARNISH = np.array([12.0, 6.0, -10.0], np.float32)
_THIRDS = np.full(3, 1 / 3, np.float32)


# --------------------------------------------------------------------------------------------
# Layout and rendering
# --------------------------------------------------------------------------------------------
FACE_GEOMETRY: dict[str, tuple[float, float, float, float, float]] = {
    # style: (head radius min, max (fraction of canvas), centre-x jitter, centre-y, torso stretch)
    "portrait": (0.17, 0.21, 0.06, 0.40, 1.0),
    "sketch": (0.17, 0.21, 0.06, 0.40, 1.0),
    "oil_painting": (0.16, 0.20, 0.05, 0.40, 1.0),
    "official_photo": (0.14, 0.16, 0.01, 0.38, 1.0),
    "public_event": (0.085, 0.11, 0.18, 0.42, 3.0),
    "photo": (0.12, 0.18, 0.15, 0.45, 1.5),
}
STYLE_BACKGROUND: dict[str, str] = {
    "portrait": "plain",
    "sketch": "paper",
    "oil_painting": "oil",
    "official_photo": "flag",
    "public_event": "crowd",
}


def _object_slots(layout: str, n: int, rng: random.Random, S: int) -> list[tuple[float, float, float]]:
    """(cx, cy, half-size) per figure; multi-object layouts shrink the objects so they do not overlap."""
    j = lambda a: a + rng.uniform(-0.03, 0.03)  # noqa: E731
    if n == 1:
        s = rng.uniform(0.27, 0.4)
        return [(S * (0.5 + rng.uniform(-0.1, 0.1)), S * (0.52 + rng.uniform(-0.08, 0.08)), S * s)]
    if layout == "above" and n == 2:
        return [(S * j(0.5), S * j(0.25), S * 0.16), (S * j(0.5), S * j(0.68), S * rng.uniform(0.2, 0.25))]
    if n == 2:
        return [
            (S * j(0.27), S * j(0.55), S * rng.uniform(0.19, 0.23)),
            (S * j(0.73), S * j(0.55), S * rng.uniform(0.19, 0.23)),
        ]
    xs = [0.18 + 0.64 * k / (n - 1) for k in range(n)]
    return [(S * j(x), S * j(0.55 + 0.08 * (k % 2)), S * rng.uniform(0.13, 0.15)) for k, x in enumerate(xs)]


def _draw_figure(
    layer: Image.Image,
    fig: Figure,
    style: str,
    slot: tuple[float, float, float] | None,
    rng: random.Random,
    S: int,
) -> None:
    d = ImageDraw.Draw(layer)
    flip = rng.random() < 0.5
    if fig.kind == "face":
        rmin, rmax, jx, cy, body = FACE_GEOMETRY[style]
        if slot is None:
            rad = S * rng.uniform(rmin, rmax)
            cx, cyy = S * (0.5 + rng.uniform(-jx, jx)), S * (cy + rng.uniform(-0.03, 0.03))
        else:
            cx, cyy, half = slot
            rad, body = half * 0.45, 2.0
            cyy -= half * 0.35
        draw_face(
            Pen(d, cx, cyy, rad, flip, S), dict(fig.traits), rng, body=body, suit=style == "official_photo"
        )
        return
    key = fig.trait("drawing")
    drawer = OBJECT_DRAWERS.get(key) or GENERIC_DRAWERS[key]
    cx, cy, half = slot if slot is not None else _object_slots("single", 1, rng, S)[0]
    drawer(Pen(d, cx, cy, half, flip, S), rng)


def _background_kind(spec: RenderSpec, rng: random.Random) -> str:
    if spec.scene is not None:
        return spec.scene
    if spec.style in STYLE_BACKGROUND:
        return STYLE_BACKGROUND[spec.style]
    first = spec.figures[0] if spec.figures else None
    if first is not None and first.kind == "object":
        pref = OBJECT_SCENES.get(first.trait("drawing"))
        if pref and rng.random() < 0.75:
            return pref[rng.randrange(len(pref))]
    return PHOTO_SCENES[rng.randrange(len(PHOTO_SCENES))]


def render_masks(spec: RenderSpec, seed: int, size: int = 64) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render ``spec``; return the uint8 image and one bool mask per figure (same order)."""
    rng = random.Random(seed)
    S = 2 * size
    kind = "ground" if any(f.kind == "ground" for f in spec.figures) else _background_kind(spec, rng)
    bank = _pil_bank(kind, S)
    bg, ground_small = bank[rng.randrange(len(bank))]
    canvas = bg.copy()
    exposure = rng.uniform(0.88, 1.12)

    drawn = [f for f in spec.figures if f.kind != "ground"]
    n_obj = len(drawn)
    slots: list[tuple[float, float, float] | None] = (
        [None] * n_obj if n_obj <= 1 else list(_object_slots(spec.layout, n_obj, rng, S))
    )
    masks: list[np.ndarray] = []
    layers_alpha: list[Image.Image] = []
    for fig, slot in zip(drawn, slots, strict=True):
        layer = Image.new("RGBA", (S, S), (0, 0, 0, 0))
        _draw_figure(layer, fig, spec.style, slot, rng, S)
        alpha = layer.getchannel("A")
        canvas.paste(layer, (0, 0), alpha)
        layers_alpha.append(alpha)
    # global exposure jitter, as between photos (a PIL lookup table: cheaper than numpy)
    img = np.asarray(canvas.reduce(2).point(_exposure_table(round(exposure * 100))))
    # later figures occlude earlier ones: a figure's mask is what remains visible of it
    visible: list[np.ndarray] = []
    for alpha in reversed(layers_alpha):
        m = np.asarray(alpha.reduce(2)) >= 128
        for v in visible:
            m = m & ~v
        visible.append(m)
    visible_iter = iter(reversed(visible))
    for f in spec.figures:
        masks.append(ground_small.copy() if f.kind == "ground" else next(visible_iter))
    if spec.style == "sketch":
        img = _sketch(img, rng)
    elif spec.style == "oil_painting":
        img = _oil(img, rng)
    return np.array(img, copy=True), masks  # writable (PIL-backed arrays are read-only)


def render(spec: RenderSpec, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Render ``spec`` deterministically from ``seed``: (uint8 HxWx3 image, bool HxW union mask)."""
    img, masks = render_masks(spec, seed, size)
    union = np.zeros((size, size), bool)
    for m in masks:
        union |= m
    return img, union


def render_prompt(world: ToyWorld, prompt: str, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Render a prompt the world knows (templates, mapping phrases, free captions); ValueError otherwise."""
    return render(world.spec_for_prompt(prompt, seed), seed, size)


def contact_sheet(
    world: ToyWorld, n_identities: int = 6, seed: int = 0, size: int = 64, pad: int = 2
) -> np.ndarray:
    """A uint8 grid for eyeballing the world: identities x (5 templates + photo), then every object.

    Rows of identities start with the first near-alike pair, so one can check the twins differ.
    """
    a, b = world.near_pairs[0]
    idents = [world.identities[a], world.identities[b]]
    idents += [c for c in world.identities if c not in idents][: max(0, n_identities - 2)]
    cells: list[list[np.ndarray]] = []
    for i, c in enumerate(idents):
        specs = [world.spec_for_prompt(p, seed) for p in world.eval_prompts(c)]
        specs.append(RenderSpec("photo", (Figure(c.name, "face", c.traits),)))
        cells.append([render(s, seed + 31 * i + j, size)[0] for j, s in enumerate(specs)])
    ncol = len(cells[0]) if cells else 6
    extra = [world.spec_for_prompt(f"a photo of the {o.name}", seed) for o in world.objects]
    extra += [
        world.spec_for_prompt(p, seed) for ph in world.mapping_phrases for p in world.mapping_prompts(ph)[:1]
    ]
    extra += [world.spec_for_prompt(p, seed) for p in world.free_captions(ncol, seed)]
    flat = [render(s, seed + k, size)[0] for k, s in enumerate(extra)]
    cells += [flat[k : k + ncol] for k in range(0, len(flat), ncol)]
    step = size + pad
    sheet = np.full((len(cells) * step, ncol * step, 3), 255, np.uint8)
    for r, row in enumerate(cells):
        for col, im in enumerate(row):
            sheet[r * step : r * step + size, col * step : col * step + size] = im
    return sheet
