"""Fuzz the LDAP proxy's reading of a client's stream (see fuzz/README.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    from bridge.ldap_proxy.framing import FramingError, complete_prefix, operation_tag, pdu_size
    from bridge.ldap_proxy.server import decode_request

LIMIT = 4096


def check(data: bytes) -> None:
    """Framing answers "more", a size, or FramingError; whole PDUs decode sanely or not at all."""
    try:
        size = pdu_size(data, 0, LIMIT)
    except FramingError:
        return
    if size is None:
        return
    assert 2 <= size <= LIMIT, size
    try:
        end = complete_prefix(data, LIMIT)
    except FramingError:
        end = size if size <= len(data) else 0  # a later PDU was bad: the first still stands
    assert end <= len(data)
    if size > len(data):
        return
    pdu = data[:size]
    tag = operation_tag(pdu)
    assert tag is None or 0 <= tag <= 0xFF
    try:
        message = decode_request(pdu)
    except Exception:  # ldaptor raises anything on bad input; the proxy catches it (drop)
        return
    if message is not None:
        assert 0 < message.id < 2**31


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
