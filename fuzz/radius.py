"""Fuzz the RADIUS codec: datagrams in, replies out (see fuzz/README.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports():
    from bridge.radius import codec
    from bridge.radius.codec import MALFORMED_CAUSES, MalformedPacket

SECRET = b"fuzzing-shared-secret"


def check(data: bytes) -> None:
    """Decoding fails only as MalformedPacket; a request decoded always gets a good reply."""
    try:
        request = codec.decode_request(data, SECRET)
    except MalformedPacket as exc:
        if exc.cause not in MALFORMED_CAUSES:
            raise AssertionError(f"undocumented cause {exc.cause!r}") from exc
        return
    for code, state in (
        (codec.ACCESS_ACCEPT, None),
        (codec.ACCESS_REJECT, None),
        (codec.ACCESS_CHALLENGE, b"s" * 16),
    ):
        if code not in codec._REPLY_CODES[request.code]:
            continue
        message = "14 days left to set up MFA at https://mfa.example.org/" * 4
        reply = codec.encode_reply(request, SECRET, code, reply_message=message, state=state)
        assert len(reply) <= codec.MAX_PACKET_LENGTH
        assert reply[1] == request.identifier
        assert reply[0] == code


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
