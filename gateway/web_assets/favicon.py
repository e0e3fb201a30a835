"""Write gateway/static/favicon.ico: a 32x32 white envelope on the council's dark blue, as one PNG
inside an ICO container (every browser since 2009 reads PNG icons). Run by hand after changing
it, then commit the .ico; the standard library only, and byte for byte the same each run.

    python gateway/web_assets/favicon.py

Not GOV.UK's crown, which a council must not use (see build.py); browsers ask for /favicon.ico
on every page, and a 404 there filled the server's log and the browser tests' console.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

SIZE = 32
BLUE = (0x1D, 0x3F, 0x6E, 0xFF)
WHITE = (0xFF, 0xFF, 0xFF, 0xFF)
OUT = Path(__file__).resolve().parent.parent / "static" / "favicon.ico"


def _pixel(x: int, y: int) -> tuple[int, int, int, int]:
    """The envelope: a white outline from (5, 9) to (26, 22), and its flap's two diagonals."""
    left, top, right, bottom = 5, 9, 26, 22
    inside = left <= x <= right and top <= y <= bottom
    edge = inside and (x in (left, left + 1, right - 1, right) or y in (top, top + 1, bottom - 1, bottom))
    middle = (left + right) / 2
    flap = inside and y <= top + 8 and abs(abs(x - middle) - (top + 8 - y) * (middle - left) / 8) < 1.1
    return WHITE if edge or flap else BLUE


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png() -> bytes:
    rows = b"".join(b"\x00" + b"".join(bytes(_pixel(x, y)) for x in range(SIZE)) for y in range(SIZE))
    header = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows, 9)) + _chunk(b"IEND", b"")
    )


def ico() -> bytes:
    image = png()
    # ICONDIR (reserved, type 1 = icon, one image), then its ICONDIRENTRY, then the PNG.
    directory = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", SIZE, SIZE, 0, 0, 1, 32, len(image), 6 + 16)
    return directory + entry + image


def main() -> int:
    OUT.write_bytes(ico())
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
