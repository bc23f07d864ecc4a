"""The pre-flight check of an XML file: refused for instructure_csv, entities refused.

Every rule has a test that fails if the rule breaks; files are written into tmp_path.
"""

from __future__ import annotations

import pytest

from sisdropd.preflight import XML_IMPORT_TYPES, check_path
from tests.unit.preflight_helpers import messages, only, returns_within, write

IMS = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<!DOCTYPE enterprise SYSTEM "ims_epv1p1.dtd">\n'
    "<enterprise>\n  <person><sourcedid><id>1</id></sourcedid></person>\n</enterprise>\n"
)


def test_xml_with_instructure_csv_is_refused(tmp_path):
    report = check_path(write(tmp_path, "people.xml", IMS))
    assert report.kind == "xml"
    message = only(report.problems).message
    assert "instructure_csv" in message and "nothing imported" in message and "ims_xml" in message


def test_xml_with_ims_xml_well_formed_is_ok(tmp_path):
    assert XML_IMPORT_TYPES == frozenset({"ims_xml"})
    report = check_path(write(tmp_path, "people.xml", IMS), import_type="ims_xml")
    assert report.ok, messages(report.problems)


def test_big_xml_is_parsed_in_chunks(tmp_path):
    body = "".join(
        f"<person><id>{i}</id><name>Person number {i}</name></person>\n" for i in range(20000)
    )
    path = write(tmp_path, "big.xml", f"<enterprise>\n{body}</enterprise>\n")
    assert check_path(path, import_type="ims_xml").ok
    broken = write(tmp_path, "broken.xml", f"<enterprise>\n{body}</enterprise")
    assert only(check_path(broken, import_type="ims_xml").problems).line == 20002


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>
"""


def test_billion_laughs_is_refused(tmp_path):
    path = write(tmp_path, "lol.xml", BILLION_LAUGHS)
    report = returns_within(5, check_path, path, import_type="ims_xml")
    problem = only(report.problems)
    assert problem.line == 3 and "entity declarations are refused" in problem.message


@pytest.mark.parametrize(
    "doc",
    [
        '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
        '<!DOCTYPE r [<!ENTITY % p SYSTEM "http://example.invalid/p.dtd"> %p;]><r/>',
        '<!DOCTYPE r [<!ENTITY u SYSTEM "x" NDATA png>]><r/>',
    ],
    ids=["external-general", "external-parameter", "unparsed"],
)
def test_external_entities_are_refused(tmp_path, doc):
    report = check_path(write(tmp_path, "x.xml", doc), import_type="ims_xml")
    assert "entity declarations are refused" in only(report.problems).message


def test_entities_of_an_external_dtd_are_never_read(tmp_path):
    write(tmp_path, "ext.dtd", '<!ENTITY secret "SECRET">')
    doc = '<!DOCTYPE r SYSTEM "ext.dtd"><r>&secret;</r>'
    problem = only(check_path(write(tmp_path, "x.xml", doc), import_type="ims_xml").problems)
    assert "never read" in problem.message and "SECRET" not in problem.message


def test_malformed_xml_names_its_line(tmp_path):
    path = write(tmp_path, "x.xml", "<enterprise>\n<person>\n</persn>\n</enterprise>\n")
    problem = only(check_path(path, import_type="ims_xml").problems)
    assert problem.line == 3 and "not well-formed XML: mismatched tag" in problem.message
