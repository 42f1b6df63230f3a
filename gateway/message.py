"""PROTOCOL §4 XML messages: safe parse, XSD validation, typed access, building.

Parsing happens once per message with a hardened lxml parser (no DTD, no
entities, no network, no comment or PI inside ``Msg``; libxml2's default depth
limit of 256 applies) and one compiled XSD.  Values are checked as parsed, never
in the bytes: a character reference is its character.  A :class:`Message` keeps
the exact bytes received, because the MAC and the signature cover them and the
journal keeps them as evidence.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from lxml import etree

from . import catalog
from .errors import SchemaInvalid, UnknownMessageType, XmlMalformed
from .schema import load_schema

NS = "urn:sbdx:1"
_NS_PREFIX = "{" + NS + "}"
_NS_LEN = len(_NS_PREFIX)
XML_DECL = b'<?xml version="1.0" encoding="UTF-8"?>\n'

#: Body values: text, or a list of records (CtsQueryRsp/Agreement, XferQueryRsp/Record).
BodyValue = str | list[dict[str, str]]


def _safe_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        collect_ids=False,
        # kept, so that one inside Msg can be refused (E110, :func:`check_no_markup`)
        remove_comments=False,
        remove_pis=False,
    )


_PARSER = _safe_parser()


@dataclass(frozen=True, slots=True)
class Head:
    """The ``<Head>`` of §4. ``ref_id`` only on responses."""

    type: str
    msg_id: str
    from_party: str
    to_party: str
    time: str
    trade_date: str | None = None
    ref_id: str | None = None
    ver: str = "1.0"


@dataclass(frozen=True, slots=True)
class Message:
    """A validated message: head, body values and the exact xml bytes."""

    head: Head
    body: Mapping[str, BodyValue]
    xml: bytes = field(repr=False)

    @property
    def type(self) -> str:
        return self.head.type

    @property
    def kind(self) -> catalog.Kind:
        return catalog.kind_of(self.head.type)

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.body.get(name, default)
        return value if isinstance(value, str) or value is None else default


def _local(tag: str) -> str:
    return tag[_NS_LEN:] if tag.startswith(_NS_PREFIX) else tag


#: Byte-order marks of the encodings §4 rules out (UTF-32 first: it starts like UTF-16LE).
_FOREIGN_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"),
                 (b"\xfe\xff", "UTF-16"), (b"\xff\xfe", "UTF-16"))
UTF8_BOM = b"\xef\xbb\xbf"
_DECLARED_ENCODING = re.compile(rb"<\?xml\s[^>]*?\bencoding\s*=\s*[\"']([^\"']*)[\"']")


def check_utf8(xml: bytes) -> None:
    """§4 "UTF-8": refuse (E110) any other BOM, bytes that are not UTF-8, a NUL (how
    BOM-less UTF-16/32 looks) and a declared encoding other than UTF-8.  A UTF-8 BOM
    is allowed (docs/protocol.md); the bytes are checked, never rewritten."""
    for bom, name in _FOREIGN_BOMS:
        if xml.startswith(bom):
            raise XmlMalformed(f"messages are UTF-8 (§4), not {name}")
    if b"\x00" in xml:
        raise XmlMalformed("NUL byte: messages are UTF-8 (§4), not UTF-16/UTF-32")
    if not xml.isascii():
        try:
            xml.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise XmlMalformed(f"not UTF-8 (§4): bad byte at offset {exc.start}") from None
    body = xml[len(UTF8_BOM):] if xml.startswith(UTF8_BOM) else xml
    if body.startswith(b"<?xml"):
        declared = _DECLARED_ENCODING.match(body[:body.find(b"?>") + 2])
        if declared and declared.group(1).upper() != b"UTF-8":
            name = declared.group(1).decode("ascii", "replace")[:20]
            raise XmlMalformed(f"messages are UTF-8 (§4), not {name!r}")


def _check_no_dtd(root: etree._Element) -> None:
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None or docinfo.doctype:
        raise XmlMalformed("DOCTYPE/ENTITY declarations are not allowed")
    encoding = docinfo.encoding
    if encoding is not None and encoding.upper() != "UTF-8":
        raise XmlMalformed(f"messages are UTF-8 (§4), not {encoding}")


def parse_xml(xml: bytes) -> etree._Element:
    """Well-formed UTF-8 without a DTD (E110).  The byte search for DOCTYPE/ENTITY is
    sound because the bytes are UTF-8 by then; the parsed tree is checked again."""
    check_utf8(xml)
    if b"<!DOCTYPE" in xml or b"<!ENTITY" in xml:
        raise XmlMalformed("DOCTYPE/ENTITY declarations are not allowed")
    try:
        root = etree.fromstring(xml, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise XmlMalformed(f"not well-formed: {exc.msg}") from None
    if root is None:
        raise XmlMalformed("empty document")
    _check_no_dtd(root)
    return root


_HEAD_TAG, _TYPE_TAG = f"{_NS_PREFIX}Head", f"{_NS_PREFIX}Type"


def _head_type(root: etree._Element) -> str | None:
    """Head/Type before validation (a direct walk: ~3× cheaper than ``find``)."""
    for child in root:
        if child.tag == _HEAD_TAG:
            for node in child:
                if node.tag == _TYPE_TAG:
                    return node.text or ""
            return None
    return None


def readable_path(node: etree._Element) -> str:
    """``Msg/Body/XferOutReq/Amount`` for an element (index added when repeated)."""
    parts: list[str] = []
    while node is not None:
        name = _local(node.tag) if isinstance(node.tag, str) else "?"
        parent = node.getparent()
        if parent is not None:
            same = [c for c in parent if c.tag == node.tag]
            if len(same) > 1:
                name += f"[{same.index(node) + 1}]"
        parts.append(name)
        node = parent
    return "/".join(reversed(parts))


def _schema_error_text(root: etree._Element, entry: Any) -> str:
    message = entry.message.replace(_NS_PREFIX, "")
    try:
        hits = root.getroottree().xpath(entry.path) if entry.path else []
    except etree.XPathError:
        hits = []
    where = readable_path(hits[0]) if hits else f"line {entry.line}"
    return f"{where}: {message}"


def validate(root: etree._Element) -> None:
    """XSD validation (E111 with the path of the first offending element)."""
    schema = load_schema()
    try:
        valid = schema.validate(root)
    except etree.Error as exc:  # e.g. XMLSchemaValidateError on an entity node: E111, not S900
        raise SchemaInvalid(f"schema validation failed: {str(exc)[:200]}") from None
    if not valid:
        entry = schema.error_log[0]
        raise SchemaInvalid(_schema_error_text(root, entry))


def head_text(root: etree._Element, name: str) -> str | None:
    """Head/``name``'s whole text, or None when absent or when it holds anything but
    text (a comment or PI splitting it: its ``.text`` would be only the first part)."""
    node = root.find(f"{_NS_PREFIX}Head/{_NS_PREFIX}{name}")
    if node is None or len(node):
        return None
    text: str | None = node.text
    return text


def read_msg_id(root: etree._Element) -> str | None:
    """Best effort MsgId of a (possibly invalid) document, for SYS.ERROR RefMsgId."""
    text = head_text(root, "MsgId")
    if text and len(text) <= 32 and text.isascii() and text.isalnum():
        return text
    return None


def read_from(root: etree._Element) -> str | None:
    """Best effort, validated-looking From of a (possibly invalid) document."""
    text = head_text(root, "From")
    if text and 2 <= len(text) <= 12 and text.isascii() and text.isalnum() and text.isupper():
        return text
    return None


def check_no_markup(xml: bytes, root: etree._Element) -> None:
    """§4: no comment or processing instruction inside ``Msg`` (E110).  A value split by
    one reads differently in different parsers (``<WalletId>00711308<!---->12093028
    </WalletId>`` is one wallet to a parser that drops comments, ``00711308`` to one that
    keeps them).  Outside the root element they carry no value and are let be.  The byte
    search only skips the tree walk: with no DTD, hence no entities, a comment or PI node
    exists only where its markup is in the bytes (``<?`` past the declaration)."""
    if b"<!--" not in xml and xml.find(b"<?", 6) < 0:
        return
    for node in root.iter(etree.Comment, etree.ProcessingInstruction):
        what = "comment" if isinstance(node, etree._Comment) else "processing instruction"
        parent = node.getparent()
        where = readable_path(parent) if parent is not None else "Msg"
        raise XmlMalformed(f"{where}: a {what} inside Msg is not allowed (§4)",
                           ref_msg_id=read_msg_id(root))


def parse_message(xml: bytes) -> Message:
    """Parse and validate ``xml``; raise E110/E111/E112 with a clear text."""
    root = parse_xml(xml)
    check_no_markup(xml, root)
    if root.tag != _NS_PREFIX + "Msg":
        raise SchemaInvalid(f"{_local(root.tag)}: root element must be Msg in namespace {NS}")
    msg_type = _head_type(root)
    if msg_type is not None and msg_type not in catalog.BODY_BY_TYPE:
        raise UnknownMessageType(f"unknown message type {msg_type[:40]!r}",
                                 ref_msg_id=read_msg_id(root))
    try:
        validate(root)
    except SchemaInvalid as exc:
        exc.ref_msg_id = read_msg_id(root)
        raise
    head_el, body_el = root[0], root[1]
    head = _read_head(head_el)
    child = body_el[0]
    expected = catalog.BODY_BY_TYPE[head.type]
    if _local(child.tag) != expected:
        raise SchemaInvalid(
            f"Msg/Body/{_local(child.tag)}: does not match Type {head.type} (expected {expected})",
            ref_msg_id=head.msg_id,
        )
    body = _read_body(child)
    _check_leap_days(head, body, expected)
    return Message(head=head, body=body, xml=xml)


#: Elements of the XSD types ``Date`` and ``DateTime`` (schemas/types.xsd).
DATE_ELEMENTS = frozenset({"TradeDate", "ServiceEnd", "BookDate", "SignDate", "EndDate",
                           "Time"})


def _check_leap_days(head: Head, body: Mapping[str, BodyValue], body_el: str) -> None:
    """The XSD patterns know the days of each month but not leap years: February 29 of
    another year is E111.  Read from the parsed values (a character reference such as
    ``2027-02-2&#57;`` is ``2027-02-29``), never from the bytes; the XSD puts dates in
    the Head, the Body element's children and its records' children, all read here."""
    _check_date("Msg/Head/Time", head.time, head.msg_id)
    _check_date("Msg/Head/TradeDate", head.trade_date, head.msg_id)
    for name, value in body.items():
        if isinstance(value, list):
            for n, record in enumerate(value, 1):
                for field_name in DATE_ELEMENTS.intersection(record):
                    _check_date(f"Msg/Body/{body_el}/{name}[{n}]/{field_name}",
                                record[field_name], head.msg_id)
        elif name in DATE_ELEMENTS:
            _check_date(f"Msg/Body/{body_el}/{name}", value, head.msg_id)


def _check_date(path: str, text: str | None, msg_id: str) -> None:
    if text and text[4:10] == "-02-29" and not _leap(int(text[:4])):
        raise SchemaInvalid(f"{path}: {text[:10]} is not a calendar date", ref_msg_id=msg_id)


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _read_head(head_el: etree._Element) -> Head:
    n = _NS_LEN  # validated: every element is in the namespace
    values = {c.tag[n:]: c.text or "" for c in head_el}
    return Head(
        ver=values["Ver"],
        type=values["Type"],
        msg_id=values["MsgId"],
        ref_id=values.get("RefId"),
        from_party=values["From"],
        to_party=values["To"],
        time=values["Time"],
        trade_date=values.get("TradeDate"),
    )


def _read_body(body: etree._Element) -> dict[str, BodyValue]:
    out: dict[str, BodyValue] = {}
    n = _NS_LEN  # validated: every element is in the namespace
    for child in body:
        name = child.tag[n:]
        if len(child):
            records = out.setdefault(name, [])
            assert isinstance(records, list)
            records.append({c.tag[n:]: c.text or "" for c in child})
        else:
            out[name] = child.text or ""
    return out


# --- building -----------------------------------------------------------------
def _element(name: str, value: Any, encrypted: tuple[str, ...]) -> str:
    if isinstance(value, list):
        return "".join(
            f"<{name}>" + "".join(_element(k, v, ()) for k, v in rec.items()) + f"</{name}>"
            for rec in value
        )
    if value is None:
        return ""
    attr = ' enc="A256GCM"' if name in encrypted else ""
    return f"<{name}{attr}>{escape(str(value))}</{name}>"


def build_xml(head: Head, body: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> bytes:
    """Serialise a message; ``body`` items in schema order, ``None`` values omitted.

    The result is not validated here: tests validate every builder output
    against the XSD, and peers validate what they receive.
    """
    if head.type not in catalog.BODY_BY_TYPE:
        raise UnknownMessageType(f"cannot build unknown type {head.type!r}")
    items = body.items() if isinstance(body, Mapping) else body
    body_el = catalog.BODY_BY_TYPE[head.type]
    encrypted = catalog.ENCRYPTED_FIELDS.get(body_el, ())
    head_parts = [
        ("Ver", head.ver), ("Type", head.type), ("MsgId", head.msg_id), ("RefId", head.ref_id),
        ("From", head.from_party), ("To", head.to_party), ("Time", head.time),
        ("TradeDate", head.trade_date),
    ]
    text = (
        f'<Msg xmlns="{NS}"><Head>'
        + "".join(_element(k, v, ()) for k, v in head_parts)
        + f"</Head><Body><{body_el}>"
        + "".join(_element(k, v, encrypted) for k, v in items)
        + f"</{body_el}></Body></Msg>\n"
    )
    return XML_DECL + text.encode("utf-8")


def replace_texts(xml: bytes, replacements: Mapping[str, str]) -> bytes:
    """Return ``xml`` with the Body fields named in ``replacements`` given new text.

    Used to re-encrypt IdNo/Phone for the next hop and to fill BookDate; a
    field not present is appended at the end of the Body element (callers only
    fill trailing fields).  Everything else stays as received; the document is
    re-serialised by lxml.
    """
    root = parse_xml(xml)
    body = root[1][0]
    todo = dict(replacements)
    for child in body:
        name = _local(child.tag)
        if name in todo:
            child.text = todo.pop(name)
    for name, text in todo.items():
        etree.SubElement(body, _NS_PREFIX + name).text = text
    body_bytes: bytes = etree.tostring(root, encoding="UTF-8")
    return XML_DECL + body_bytes + b"\n"
