"""Image grids with optional captions, for qualitative figures (erased vs. resurged samples)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from resurgence.io import atomic_path


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    if not text:
        return 0, 0
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return x1 - x0, y1 - y0


def make_grid(
    images: Sequence[Image.Image],
    rows: int,
    cols: int,
    labels: Sequence[str] | None = None,
    *,
    col_labels: Sequence[str] | None = None,
    cell_labels: Sequence[str] | None = None,
    pad: int = 2,
    font_size: int = 12,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Tile ``images`` row-major into a ``rows x cols`` grid.

    ``labels`` caption the rows (one per row, in a left margin: e.g. concepts or model states),
    ``col_labels`` the columns (top margin), ``cell_labels`` each image (drawn under it). Cells
    take the size of the first image; others are resized to it so a grid never misaligns.
    """
    if len(images) > rows * cols:
        raise ValueError(f"{len(images)} images do not fit a {rows}x{cols} grid")
    if not images:
        raise ValueError("no images")
    for name, lab, n in (
        ("labels", labels, rows),
        ("col_labels", col_labels, cols),
        ("cell_labels", cell_labels, len(images)),
    ):
        if lab is not None and len(lab) != n:
            raise ValueError(f"{name} has {len(lab)} entries, expected {n}")
    w, h = images[0].size
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = _text_size(probe, "Ag", font)[1] + 2 * pad

    row_labels = labels
    cap_h = line_h if cell_labels is not None else 0
    top = line_h if col_labels is not None else 0
    left = max((_text_size(probe, s, font)[0] for s in row_labels), default=0) + 2 * pad if row_labels else 0
    cell_w, cell_h = w + pad, h + cap_h + pad
    grid = Image.new("RGB", (left + cols * cell_w + pad, top + rows * cell_h + pad), background)
    draw = ImageDraw.Draw(grid)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        x, y = left + pad + c * cell_w, top + pad + r * cell_h
        tile = img.convert("RGB")
        if tile.size != (w, h):
            tile = tile.resize((w, h))
        grid.paste(tile, (x, y))
        if cell_labels is not None:
            draw.text((x, y + h + pad // 2), str(cell_labels[i]), fill=(0, 0, 0), font=font)
    for c, s in enumerate(col_labels or []):
        draw.text((left + pad + c * cell_w, pad // 2), str(s), fill=(0, 0, 0), font=font)
    for r, s in enumerate(row_labels or []):
        draw.text((pad, top + pad + r * cell_h + h // 2 - line_h // 2), str(s), fill=(0, 0, 0), font=font)
    return grid


def save_grid(
    images: Sequence[Image.Image],
    path: str | os.PathLike,
    rows: int,
    cols: int,
    labels: Sequence[str] | None = None,
    *,
    col_labels: Sequence[str] | None = None,
    cell_labels: Sequence[str] | None = None,
    pad: int = 2,
    font_size: int = 12,
) -> Image.Image:
    """`make_grid` written atomically as PNG; returns the grid image."""
    grid = make_grid(
        images,
        rows,
        cols,
        labels,
        col_labels=col_labels,
        cell_labels=cell_labels,
        pad=pad,
        font_size=font_size,
    )
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return grid
