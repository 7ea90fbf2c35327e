"""PEAPv0's inner conversation: EAP-Identity, then EAP-GTC, then the Result TLV.

Microsoft's PEAPv0 (draft-kamath-pppext-peapv0) sends the inner EAP packets without
their code, identifier and length: only the type and its data travel in the tunnel.
The Result TLV (an EAP-Extensions packet, type 33) is the exception and goes whole.
GTC carries the password in clear, which is what a check by directory bind needs
(MS-CHAPv2 cannot be checked that way).
"""

from __future__ import annotations

import struct

from bridge.eap.packets import Code, EapError, EapPacket, Type, method_name, parse

EXTENSIONS = 33  # the EAP type of PEAP's TLVs
RESULT_TLV = 3
MANDATORY = 0x8000
SUCCESS = 1
FAILURE = 2
PROMPT = b"Password followed by the 6-digit code"


def identity_request() -> bytes:
    """The inner EAP-Request/Identity, header removed."""
    return bytes((Type.IDENTITY,))


def gtc_request(prompt: bytes = PROMPT) -> bytes:
    """The inner EAP-Request/GTC with its prompt, header removed."""
    return bytes((Type.GTC,)) + prompt


def read_inner(data: bytes, expected: int) -> bytes:
    """The data of the peer's inner response of type `expected` (header removed).

    A Nak instead (the peer does not do GTC) is an `EapError` naming what it asked for.
    """
    if not data:
        raise EapError("empty inner response")
    if data[0] == Type.NAK:
        asked = ",".join(method_name(t) for t in data[1:]) or "none"
        raise EapError(f"inner method refused by the peer, which asked for {asked}")
    if data[0] != expected:
        raise EapError(f"inner response of type {data[0]}, {expected} expected")
    return bytes(data[1:])


def result_request(identifier: int, success: bool) -> bytes:
    """The Result TLV in a whole EAP-Request/Extensions packet."""
    tlv = struct.pack("!HHH", MANDATORY | RESULT_TLV, 2, SUCCESS if success else FAILURE)
    return EapPacket(Code.REQUEST, identifier, EXTENSIONS, tlv).to_bytes()


def read_result(data: bytes) -> bool:
    """Whether the peer's Result TLV (a whole EAP-Response/Extensions) says success."""
    packet = parse(data)
    if packet.code is not Code.RESPONSE or packet.type != EXTENSIONS:
        raise EapError("no Result TLV in the peer's answer")
    body = packet.data
    while len(body) >= 4:
        kind, length = struct.unpack_from("!HH", body)
        value = body[4 : 4 + length]
        if len(value) != length:
            raise EapError("truncated TLV")
        if kind & 0x3FFF == RESULT_TLV and length == 2:
            return int.from_bytes(value, "big") == SUCCESS
        body = body[4 + length :]
    raise EapError("no Result TLV in the peer's answer")
