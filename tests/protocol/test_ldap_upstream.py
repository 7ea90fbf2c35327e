"""The proxy's upstream link on a scripted directory: its own binds, the relay between them."""

from __future__ import annotations

from typing import Any

from ldaptor.protocols import pureber, pureldap
from ldaptor.protocols.ldap.ldapserver import BaseLDAPServer
from twisted.internet.testing import StringTransport

from bridge.ldap_proxy import ber
from bridge.ldap_proxy.framing import operation_tag
from bridge.ldap_proxy.upstream import MAX_MESSAGE_ID, Link


def link_on_transport() -> tuple[Link, StringTransport]:
    link = Link("ldap://dir")
    transport = StringTransport()
    link.makeConnection(transport)
    return link, transport


def sent_requests(transport: StringTransport) -> list[Any]:
    data, out = transport.value(), []
    while data:
        message, used = pureber.berDecodeObject(BaseLDAPServer.berdecoder, data)
        out.append(message)
        data = data[used:]
    transport.clear()
    return out


def bind_response(msg_id: int, code: int = 0) -> bytes:
    return pureldap.LDAPMessage(pureldap.LDAPBindResponse(resultCode=code), id=msg_id).toWire()


def search_done(msg_id: int) -> bytes:
    return pureldap.LDAPMessage(pureldap.LDAPSearchResultDone(resultCode=0), id=msg_id).toWire()


def test_own_requests_count_down_from_the_top_of_the_id_range() -> None:
    """The proxy's binds use IDs no client counting up from 1 will reach."""
    link, transport = link_on_transport()
    link.request(lambda i: ber.bind_request(i, "uid=a", "x"))
    link.dataReceived(bind_response(MAX_MESSAGE_ID))
    link.request(lambda i: ber.bind_request(i, "uid=b", "y"))
    ids = [m.id for m in sent_requests(transport)]
    assert ids == [MAX_MESSAGE_ID, MAX_MESSAGE_ID - 1]


def test_late_response_during_a_rebind_is_relayed_not_taken_for_the_bind() -> None:
    """A client's search answered after a rebind started goes to the relay, in order."""
    link, _transport = link_on_transport()
    answers: list[Any] = []
    link.request(lambda i: ber.bind_request(i, "uid=a", "x")).addCallback(answers.append)
    link.dataReceived(bind_response(MAX_MESSAGE_ID))
    relayed: list[bytes] = []
    link.relay(relayed.append, lambda: None)
    link.send(pureldap.LDAPMessage(pureldap.LDAPSearchRequest(baseObject="o=x"), id=2).toWire())
    link.request(lambda i: ber.bind_request(i, "uid=b", "y")).addCallback(answers.append)
    link.dataReceived(search_done(2) + bind_response(MAX_MESSAGE_ID - 1, 49))
    assert relayed == [search_done(2)]
    assert answers == [0, 49]


def test_relay_passes_whole_pdus_only() -> None:
    """Between binds, responses are passed on as whole PDUs, however the bytes arrive."""
    link, _transport = link_on_transport()
    relayed: list[bytes] = []
    link.relay(relayed.append, lambda: None)
    pdu = search_done(3)
    link.dataReceived(pdu[:4])
    assert relayed == []
    link.dataReceived(pdu[4:] + pdu)
    assert relayed == [pdu + pdu]


def test_operation_tag_reads_the_protocol_op() -> None:
    """The op tag is found after the message ID, whatever the lengths' encodings."""
    bind = pureldap.LDAPMessage(pureldap.LDAPBindRequest(dn="uid=a", auth="x"), id=300).toWire()
    unbind = pureldap.LDAPMessage(pureldap.LDAPUnbindRequest(), id=1).toWire()
    search = pureldap.LDAPMessage(
        pureldap.LDAPSearchRequest(baseObject="o=" + "x" * 300), id=7
    ).toWire()
    assert [operation_tag(p) for p in (bind, unbind, search)] == [0x60, 0x42, 0x63]
    assert operation_tag(b"\x30\x03\x04\x01\x00") is None  # no INTEGER message ID
    assert operation_tag(b"\x30\x03\x02\x01\x01") is None  # nothing after the ID
