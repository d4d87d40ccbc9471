"""The loss-curve PNG: a valid PNG (signature, chunk CRCs, zlib data), its size, and lines where the losses are."""

from __future__ import annotations

import struct
import zlib

import pytest

from bot.lossplot import HELD_OUT, TRAIN, WHITE, loss_curve_png, png_size


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB PNG with filter 0, checking every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, color, _, _, _ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, color) == (8, 2)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 1 + 3 * width
    assert len(raw) == stride * height
    rows = [raw[y * stride : (y + 1) * stride] for y in range(height)]
    assert all(row[0] == 0 for row in rows)
    return width, height, [row[1:] for row in rows]


def pixels_of(rows: list[bytes], color: tuple[int, int, int]) -> list[tuple[int, int]]:
    wanted = bytes(color)
    return [
        (x, y) for y, row in enumerate(rows) for x in range(len(row) // 3) if row[3 * x : 3 * x + 3] == wanted
    ]


def test_a_falling_training_loss_is_drawn_from_top_left_to_bottom_right() -> None:
    train = [(float(step), 3.0 / step) for step in range(1, 61)]
    held_out = [(0.0, 3.2), (30.0, 0.9), (60.0, 0.6)]

    data = loss_curve_png(train, held_out)

    width, height, rows = decode_png(data)
    assert (width, height) == png_size(data) == (640, 360)
    blue = [p for p in pixels_of(rows, TRAIN) if p[1] > 30]  # below the legend
    orange = [p for p in pixels_of(rows, HELD_OUT) if p[1] > 30]
    assert len(blue) > 300 and len(orange) > 100
    first, last = min(blue), max(blue)
    assert first[0] < 100 and last[0] > 580, "the line spans the steps"
    assert first[1] < 80 and last[1] > 280, "high loss at the top, low loss at the bottom"
    assert max(x for x, _ in orange) > 580 and min(x for x, _ in orange) < 80
    assert len(pixels_of(rows, WHITE)) > width * height // 2


def test_bare_axes_and_a_custom_size() -> None:
    data = loss_curve_png([], [], width=320, height=200)
    width, height, rows = decode_png(data)
    assert (width, height) == (320, 200)
    assert not pixels_of(rows, TRAIN)[1:] or all(y < 30 for _, y in pixels_of(rows, TRAIN))  # only the legend


def test_a_flat_or_single_point_curve_still_draws() -> None:
    _, _, rows = decode_png(loss_curve_png([(1.0, 2.0)], [(0.0, 2.0)]))
    assert [p for p in pixels_of(rows, TRAIN) if p[1] > 30]


def test_png_size_refuses_what_is_not_a_png() -> None:
    with pytest.raises(ValueError):
        png_size(b"GIF89a" + bytes(30))
