"""The XML check: refused unless the import type reads XML, then well-formed and entity-free.

Stock Canvas reads no XML (reference section 10): its instructure_csv import accepts an
XML upload and ends ``imported`` with nothing imported. For an XML import type the file is
streamed through expat with every entity declaration refused (no billion laughs, no
external entities).
"""

from __future__ import annotations

from collections.abc import Iterable
from xml.parsers import expat

from sisdropd.preflight.report import Builder

XML_IMPORT_TYPES: frozenset[str] = frozenset({"ims_xml"})
"""Import types that read XML. Stock Canvas has none: its only type, instructure_csv, reads
CSV alone and ends an XML upload ``imported`` with nothing imported."""


class _Refused(Exception):
    """An XML construct we refuse to parse further."""


def check_xml(blocks: Iterable[bytes], build: Builder, import_type: str) -> None:
    """Refuse XML for import types that read none (``blocks`` untouched); else check the
    file, whose consecutive ``blocks`` are consumed one at a time, is well-formed, with
    every entity declaration refused (no billion laughs, no external entities)."""
    if import_type not in XML_IMPORT_TYPES:
        build.problem(
            None,
            f"is XML, but import type {import_type!r} reads no XML: stock Canvas's "
            "instructure_csv import would accept it and end 'imported' with nothing imported; "
            "set [import] import_type to an XML type (ims_xml) to send XML",
        )
        return
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def refuse_declaration(name: str, *_: object) -> None:
        raise _Refused(f"declares the entity {name!r}: entity declarations are refused")

    def refuse_skipped(name: str, is_parameter: int) -> None:
        raise _Refused(
            f"uses the entity {name!r}, declared only in a DTD that is never read: refused"
        )

    parser.EntityDeclHandler = refuse_declaration
    parser.UnparsedEntityDeclHandler = refuse_declaration
    parser.SkippedEntityHandler = refuse_skipped
    parser.ExternalEntityRefHandler = lambda *_: 0  # 0: expat stops with an error
    try:
        for block in blocks:
            parser.Parse(block, False)
        parser.Parse(b"", True)
    except _Refused as e:
        build.problem(parser.CurrentLineNumber, str(e))
    except expat.ExpatError as e:
        if e.code == expat.errors.codes[expat.errors.XML_ERROR_EXTERNAL_ENTITY_HANDLING]:
            build.problem(e.lineno, "refers to an external entity: external entities are refused")
        else:
            reason = expat.ErrorString(e.code)
            build.problem(e.lineno, f"is not well-formed XML: {reason} (column {e.offset + 1})")
