"""The enrollment QR code in a terminal, legible on light and dark themes alike.

A terminal draws block characters in its foreground colour: light on a dark theme,
dark on a light one, so a code drawn with the theme's colours comes out inverted on one
of them (and many phone scanners then read nothing). Each line therefore sets its own
colours, black on bright white, and two rows of modules share a line (the half blocks),
with the four-module quiet zone the standard asks for.
"""

from __future__ import annotations

import segno

BLACK_ON_WHITE = "\x1b[30;107m"
RESET = "\x1b[0m"
_CHARS = {(True, True): "█", (True, False): "▀", (False, True): "▄", (False, False): " "}


def terminal_qr(text: str) -> str:
    """`text` as a QR code (error correction M) for a terminal, ending in a newline."""
    rows = [
        [bool(module) for module in row]
        for row in segno.make(text, error="m").matrix_iter(border=4)
    ]
    if len(rows) % 2:
        rows.append([False] * len(rows[0]))  # light: the quiet zone goes on
    lines = [
        BLACK_ON_WHITE + "".join(_CHARS[pair] for pair in zip(top, bottom, strict=True)) + RESET
        for top, bottom in zip(rows[0::2], rows[1::2], strict=True)
    ]
    return "\n".join(lines) + "\n"
