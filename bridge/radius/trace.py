"""What `--debug` shows of a RADIUS packet: its attributes by name, nothing secret.

Built only when the trace is on (`logs.debugging()`): the names come from the shipped
dictionary, text and numbers are shown as they are, and every attribute that carries a
secret (User-Password, CHAP-Password, Tunnel-Password, the MPPE keys) is shown by its
length alone. EAP-Message is summarised (code, identifier, type); no EAP payload, which
may hold an inner password inside TLS, is ever printed.
"""

from __future__ import annotations

import ipaddress
import struct

from twisted.logger import Logger

from bridge.eap.packets import Code, method_name
from bridge.radius.codec import DICTIONARY

log = Logger(namespace="bridge.radius")

_HIDDEN = frozenset({2, 3, 69, (311, 16), (311, 17)})  # passwords and keys
_EAP_MESSAGE = 79
_VENDOR_SPECIFIC = 26
_LIMIT = 64  # characters of a value shown
_CODES = {
    1: "Access-Request",
    2: "Access-Accept",
    3: "Access-Reject",
    11: "Access-Challenge",
    12: "Status-Server",
}


def trace(event: str, addr: tuple[str, int], packet: bytes) -> None:
    """`--debug`: a packet in or out (`event` radius.request or radius.reply), its
    attributes by name, secrets hidden."""
    log.debug(
        event + " client={client} id={id} {code}: {attributes}",
        client=f"{addr[0]}:{addr[1]}",
        id=packet[1],
        code=_CODES.get(packet[0], f"code {packet[0]}"),
        attributes="; ".join(describe(packet)),
    )


def describe(packet: bytes) -> list[str]:
    """`Name = value` for each attribute of a RADIUS packet (request or reply)."""
    out = []
    eap = b""
    offset = 20
    while offset + 2 <= len(packet):
        kind, length = packet[offset], packet[offset + 1]
        if length < 2:
            break
        value = packet[offset + 2 : offset + length]
        offset += length
        if kind == _EAP_MESSAGE:
            eap += value
            continue
        if kind == _VENDOR_SPECIFIC and len(value) >= 6:
            vendor = struct.unpack("!I", value[:4])[0]
            out.append(_one((vendor, value[4]), value[6 : 4 + value[5]]))
        else:
            out.append(_one(kind, value))
    if eap:
        out.append(f"EAP-Message = {describe_eap(eap)}")
    return out


def _one(key: int | tuple[int, int], value: bytes) -> str:
    if DICTIONARY.attrindex.HasBackward(key):
        name = DICTIONARY.attrindex.GetBackward(key)
        kind = DICTIONARY.attributes[name].type
    else:
        name, kind = f"Attr-{key}", "octets"
    if key in _HIDDEN:
        return f"{name} = <{len(value)} octets, hidden>"
    return f"{name} = {_value(kind, value)}"


def _value(kind: str, value: bytes) -> str:
    if kind == "string":
        text = value.decode("utf-8", "replace")
        return repr(text[:_LIMIT] + ("..." if len(text) > _LIMIT else ""))
    if kind in ("integer", "date") and len(value) == 4:
        return str(struct.unpack("!I", value)[0])
    if kind == "ipaddr" and len(value) == 4:
        return str(ipaddress.IPv4Address(value))
    shown = value[: _LIMIT // 2].hex()
    return f"0x{shown}{'...' if len(value) > _LIMIT // 2 else ''}"


def describe_eap(raw: bytes) -> str:
    """An EAP packet's code, identifier, method and length: never its data."""
    if len(raw) < 4:
        return f"<{len(raw)} octets>"
    try:
        code = Code(raw[0]).name
    except ValueError:
        code = str(raw[0])
    kind = f" {method_name(raw[4])}" if len(raw) > 4 else ""
    return f"{code} id={raw[1]}{kind} ({len(raw)} octets)"
