"""The terminal QR code scans on light and dark terminals (zbarimg reads a rendering)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bridge.qr import terminal_qr
from tests.conftest import require_binary

URI = "otpauth://totp/ACME:alice?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=ACME"
THEMES = {"light": (0, 255), "dark": (230, 30)}  # (foreground, background) grey levels
SGR = re.compile(r"\x1b\[([0-9;]*)m")
PIECES = re.compile(r"(\x1b\[[0-9;]*m)")  # split keeping the escape sequences
FOREGROUNDS = {"30": 0, "37": 192, "97": 255}
BACKGROUNDS = {"40": 0, "47": 192, "107": 255}


def render(text: str, theme: str, scale: int = 6) -> bytes:
    """`text` as a terminal with `theme` shows it, as a PGM image: each character a cell
    one module wide and two high (its upper and lower half), a margin of background."""
    default_fg, default_bg = THEMES[theme]
    rows: list[list[int]] = []
    for line in text.splitlines():
        fg, bg = default_fg, default_bg
        top: list[int] = []
        bottom: list[int] = []
        for token in PIECES.split(line):
            if (match := SGR.fullmatch(token)) is not None:
                for code in match.group(1).split(";"):
                    if code in ("", "0"):
                        fg, bg = default_fg, default_bg
                    elif code in FOREGROUNDS:
                        fg = FOREGROUNDS[code]
                    elif code in BACKGROUNDS:
                        bg = BACKGROUNDS[code]
                continue
            for char in token:
                top.append(fg if char in "█▀" else bg)
                bottom.append(fg if char in "█▄" else bg)
        rows += [top, bottom]
    width = max(len(row) for row in rows) + 8
    framed = [[default_bg] * 4 + row + [default_bg] * (width - 4 - len(row)) for row in rows]
    blank = [default_bg] * width
    pixels = b"".join(
        bytes(value for value in row for _ in range(scale)) * scale
        for row in [blank] * 4 + framed + [blank] * 4
    )
    return f"P5 {width * scale} {(len(rows) + 8) * scale} 255\n".encode() + pixels


@pytest.mark.parametrize("theme", sorted(THEMES))
def test_the_enrollment_code_scans_on_light_and_dark_terminals(theme: str, tmp_path: Path) -> None:
    zbarimg = require_binary("zbarimg")
    image = tmp_path / f"{theme}.pgm"
    image.write_bytes(render(terminal_qr(URI), theme))
    read = subprocess.run(
        [zbarimg, "--quiet", "--raw", str(image)], capture_output=True, text=True, check=False
    )
    assert read.stdout.strip() == URI, read.stderr


def test_the_theme_colours_alone_would_fail_on_one_of_them(tmp_path: Path) -> None:
    """The check can fail: the same modules in the theme's own colours (no SGR), as a
    plain block rendering prints them, do not scan on the light terminal."""
    zbarimg = require_binary("zbarimg")
    plain = SGR.sub("", terminal_qr(URI)).translate(str.maketrans("█▀▄ ", " ▄▀█"))
    image = tmp_path / "plain-light.pgm"
    image.write_bytes(render(plain, "light"))
    read = subprocess.run(
        [zbarimg, "--quiet", "--raw", str(image)], capture_output=True, text=True, check=False
    )
    assert read.stdout.strip() != URI
