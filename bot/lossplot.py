"""A loss-curve picture as PNG bytes, with no drawing library: a pixel canvas, lines, a 3×5 digit font, zlib.

``loss_curve_png(train, held_out)`` draws the training loss per step (blue line) and the held-out loss at each
evaluation (orange line with dots) over one step axis, with the loss range on the left and the steps below.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Sequence

Point = tuple[float, float]  # (step, loss)
Color = tuple[int, int, int]

WIDTH = 640
HEIGHT = 360
WHITE: Color = (255, 255, 255)
AXIS: Color = (60, 60, 60)
GRID: Color = (225, 225, 225)
TRAIN: Color = (31, 119, 180)
HELD_OUT: Color = (255, 127, 14)

# 3×5 glyphs, one string of 15 pixels per character, row by row
_GLYPHS = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001010010010",
    "8": "111101111101111",
    "9": "111101111001111",
    ".": "000000000000010",
    "-": "000000111000000",
    "k": "100101110101101",
    "A": "010101111101101",
    "D": "110101101101110",
    "E": "111100110100111",
    "G": "011100101101011",
    "H": "101101111101101",
    "I": "111010010010111",
    "L": "100100100100111",
    "N": "110101101101101",
    "O": "010101101101010",
    "P": "110101110100100",
    "R": "110101110101101",
    "S": "011100010001110",
    "T": "111010010010010",
    "U": "101101101101111",
}
_SCALE = 2  # each glyph pixel is 2×2


class Canvas:
    """An RGB picture in memory."""

    def __init__(self, width: int, height: int, background: Color = WHITE) -> None:
        self.width = width
        self.height = height
        self._rows = [bytearray(bytes(background) * width) for _ in range(height)]

    def dot(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            self._rows[y][3 * x : 3 * x + 3] = bytes(color)

    def box(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        for y in range(max(0, y0), min(self.height, y1 + 1)):
            for x in range(max(0, x0), min(self.width, x1 + 1)):
                self._rows[y][3 * x : 3 * x + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color, width: int = 1) -> None:
        """Bresenham, ``width`` pixels thick."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        error = dx + dy
        half = width // 2
        while True:
            self.box(x0 - half, y0 - half, x0 - half + width - 1, y0 - half + width - 1, color)
            if x0 == x1 and y0 == y1:
                return
            doubled = 2 * error
            if doubled >= dy:
                error += dy
                x0 += sx
            if doubled <= dx:
                error += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: Color = AXIS) -> None:
        """Digits, '.', '-', 'k' and the capitals of the captions; others (a space) leave a gap."""
        for i, char in enumerate(text):
            glyph = _GLYPHS.get(char)
            if glyph is None:
                continue
            left = x + i * 4 * _SCALE
            for n, bit in enumerate(glyph):
                if bit == "1":
                    gx, gy = left + (n % 3) * _SCALE, y + (n // 3) * _SCALE
                    self.box(gx, gy, gx + _SCALE - 1, gy + _SCALE - 1, color)

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(row) for row in self._rows)  # filter type 0 on every row
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)  # 8-bit RGB
        return (
            b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw, 9))
            + _chunk(b"IEND", b"")
        )


def text_width(text: str) -> int:
    return len(text) * 4 * _SCALE


def loss_curve_png(
    train: Sequence[Point], held_out: Sequence[Point] = (), *, width: int = WIDTH, height: int = HEIGHT
) -> bytes:
    """The picture of one run's losses; an empty run gives the bare axes."""
    canvas = Canvas(width, height)
    left, right, top, bottom = 70, width - 20, 40, height - 40
    points = [*train, *held_out]
    finite = [(s, v) for s, v in points if math.isfinite(v)]
    low = min((v for _, v in finite), default=0.0)
    high = max((v for _, v in finite), default=1.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    pad = (high - low) * 0.05
    low, high = max(0.0, low - pad) if low >= 0 else low - pad, high + pad
    last_step = max((s for s, _ in points), default=1.0) or 1.0

    def x_of(step: float) -> int:
        return left + round((right - left) * step / last_step)

    def y_of(loss: float) -> int:
        return bottom - round((bottom - top) * (loss - low) / (high - low))

    _draw_axes(canvas, left, right, top, bottom, low, high, last_step)
    _draw_series(canvas, [(x_of(s), y_of(v)) for s, v in train if math.isfinite(v)], TRAIN, dots=False)
    _draw_series(canvas, [(x_of(s), y_of(v)) for s, v in held_out if math.isfinite(v)], HELD_OUT, dots=True)
    _draw_legend(canvas, left, top)
    return canvas.png()


def _draw_axes(
    canvas: Canvas, left: int, right: int, top: int, bottom: int, low: float, high: float, last_step: float
) -> None:
    ticks = 5
    for i in range(ticks + 1):
        y = bottom - round((bottom - top) * i / ticks)
        canvas.line(left, y, right, y, GRID)
        label = _number(low + (high - low) * i / ticks)
        canvas.text(left - 8 - text_width(label), y - 5, label)
        x = left + round((right - left) * i / ticks)
        canvas.line(x, top, x, bottom, GRID)
        step = _number(last_step * i / ticks, integer=True)
        canvas.text(x - text_width(step) // 2, bottom + 8, step)
    canvas.line(left, top, left, bottom, AXIS, 2)
    canvas.line(left, bottom, right, bottom, AXIS, 2)
    canvas.text(right - text_width("STEPS"), bottom + 22, "STEPS")


def _draw_series(canvas: Canvas, pixels: Sequence[tuple[int, int]], color: Color, *, dots: bool) -> None:
    for (x0, y0), (x1, y1) in itertools.pairwise(pixels):
        canvas.line(x0, y0, x1, y1, color, 2)
    if dots or len(pixels) == 1:
        for x, y in pixels:
            canvas.box(x - 3, y - 3, x + 3, y + 3, color)


def _draw_legend(canvas: Canvas, left: int, top: int) -> None:
    """Two colour keys above the plot: a line for training, a dotted line for held-out."""
    y = top - 22
    canvas.line(left, y, left + 30, y, TRAIN, 3)
    canvas.text(left + 38, y - 5, "TRAINING LOSS")
    second = left + 38 + text_width("TRAINING LOSS") + 30
    canvas.line(second, y, second + 30, y, HELD_OUT, 3)
    canvas.box(second + 12, y - 3, second + 18, y + 3, HELD_OUT)
    canvas.text(second + 38, y - 5, "HELD-OUT LOSS")


def _number(value: float, *, integer: bool = False) -> str:
    if integer:
        whole = round(value)
        return f"{whole // 1000}k" if whole >= 10_000 else str(whole)
    if abs(value) >= 100:
        return str(round(value))
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG (its IHDR), for tests and checks; ValueError when it is not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)
