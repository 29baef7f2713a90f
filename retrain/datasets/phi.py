"""PHI scrubbing: typed placeholders for names, contacts, addresses, dates and record numbers.

Two layers, applied in order:

1. ``RULES`` — regular expressions written in the common subset of RE2 (DuckDB's engine) and
   Python's ``re``, so the bulk of the text is scrubbed inside DuckDB (``scrub_sql``) and a
   single string gives the same result in Python (``scrub_text``).
2. scrubadub (offline, no model downloads): phonenumbers-validated phone numbers in
   international formats, username/password pairs, card numbers, social security numbers
   written with spaces, Twitter-style handles. It is slow (about a millisecond a text), so in
   bulk it only sees the texts that, after the regexes, still hold something it could catch
   (``LIBRARY_HINT``).

Known gaps: a name with no cue around it ("John Smith called") stays — names are caught after
a title (Dr., Mrs.), "my name is", "patient:", a relation ("my son Jake") or a sign-off;
street addresses only in the US shape (number, capitalised words, a street suffix); national
phone formats other than North America's. See tests/test_phi.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import duckdb
import pyarrow as pa

from feedback.errors import CarecycleError


@dataclass(frozen=True)
class Rule:
    kind: str  # the placeholder's type, e.g. "PHONE"
    pattern: str  # RE2- and Python-compatible
    replacement: str  # may use \1 to keep a cue ("my name is ")


_MONTH = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|December"
    r"|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)\.?"
)
_DATE = (
    r"(?:\d{4}-\d{1,2}-\d{1,2}\b|\d{1,2}[/.-]\d{1,2}[/.-]\d{4}\b|\d{1,2}/\d{1,2}/\d{2}\b"
    rf"|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH},?\s+\d{{4}}\b)"
)
_NAME = r"[A-Z](?:[a-z]*'?[A-Z])?[a-z]+(?:-[A-Z][a-z]+)?"  # Smith, O'Brien, McDonald, Smith-Jones
_NAMES = rf"{_NAME}(?:\s+{_NAME}){{0,2}}"
_STREET_WORD = r"(?:[A-Z][a-z]*\.?|\d+(?:st|nd|rd|th))"
_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl"
    r"|Terrace|Way|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq)\b\.?"
)
_STATE = (
    r"(?:AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV"
    r"|NH|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY)"
)
_RELATION = (
    r"wife|husband|partner|son|daughter|mother|mom|mum|father|dad|brother|sister|child|baby"
    r"|grandmother|grandma|grandfather|grandpa|aunt|uncle|friend|neighbou?r|boyfriend"
    r"|girlfriend|doctor|nurse|gp|therapist|patient"
)

RULES: tuple[Rule, ...] = (
    Rule("EMAIL", r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b", "[EMAIL]"),
    Rule(
        "MRN",
        r"((?i:\bMRN|\bmedical\s+record(?:\s+(?:number|no\.?|#))?|\b(?:record|chart|hospital|patient)"
        r"\s+(?:number|no\.?|#|id))\s*(?:[:#]|is)?\s*)[A-Za-z]{0,3}-?\d[\d-]{3,}\d",
        r"\1[MRN]",
    ),
    Rule(
        "DOB",
        rf"((?i:\bDOB\b|\bD\.O\.B\.?|\bdate\s+of\s+birth|\bbirth\s*date|\bbirthday|\bborn(?:\s+on)?)"
        rf"\s*(?:[:=]|is|was)?\s*){_DATE}",
        r"\1[DOB]",
    ),
    Rule("SSN", r"\b\d{3}-\d{2}-\d{4}\b", "[SSN]"),
    Rule("CARD", r"\b\d{4}[ -]\d{4}[ -]\d{4}[ -]\d{1,7}\b", "[CARD]"),
    Rule("PHONE", r"(?:\+1[\s.-]?)?(?:\(\d{3}\)\s?|\b\d{3}[\s.-])\d{3}[\s.-]\d{4}\b", "[PHONE]"),
    Rule("PHONE", r"\+\d{1,3}[\s.-]?\(?\d{1,4}\)?(?:[\s.-]?\d{2,4}){2,4}\b", "[PHONE]"),
    Rule(
        "ADDRESS",
        rf"\b\d{{1,6}}(?:\s+{_STREET_WORD}){{1,4}}\s+{_SUFFIX}"
        r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|#)\.?\s*[A-Za-z0-9-]+)?"
        rf"(?:,\s*{_NAME}(?:\s+{_NAME})*)?(?:,?\s+{_STATE}\s+\d{{5}}(?:-\d{{4}})?\b)?",
        "[ADDRESS]",
    ),
    Rule("ADDRESS", r"\b(?i:P\.?\s?O\.?\s+Box)\s+\d+", "[ADDRESS]"),
    Rule("ADDRESS", rf"\b{_NAME}(?:\s+{_NAME})*,\s*{_STATE}\s+\d{{5}}(?:-\d{{4}})?\b", "[ADDRESS]"),
    Rule("DATE", _DATE, "[DATE]"),
    Rule("ID", r"\b\d{7,}\b", "[ID]"),
    Rule("NAME", rf"(\b(?:Dr|Mr|Mrs|Ms|Mx|Miss|Prof)\.?\s+){_NAMES}", r"\1[NAME]"),
    Rule(
        "NAME",
        rf"((?i:\bmy\s+name\s+is|\bi\s+am\s+called|\bname\s*:|\bpatient\s*:|\bsigned\s*:?)\s*){_NAMES}",
        r"\1[NAME]",
    ),
    Rule("NAME", rf"((?i:\bmy\s+(?:{_RELATION})),?\s+){_NAMES}", r"\1[NAME]"),
    Rule(
        "NAME",
        rf"((?i:\b(?:thanks|thank\s+you|regards|best\s+wishes|sincerely|cheers))[,!.]?\s+){_NAMES}\s*$",
        r"\1[NAME]",
    ),
)

# what scrubadub could still find after the rules: 7+ digits in a row with separators (phone
# numbers in other formats, SSNs with spaces), an @ (handles), a credential cue
LIBRARY_HINT = r"@|\d(?:[\s().-]{0,3}\d){6}|(?i:password|passwd|username|login)\s*[:=]"

_LIBRARY_TYPES = {
    "phone": "PHONE",
    "email": "EMAIL",
    "social_security_number": "SSN",
    "credit_card": "CARD",
    "credential": "CREDENTIAL",
    "twitter": "HANDLE",
}


class PhiLibraryMissing(CarecycleError):
    """scrubadub is not installed and the build asked for it."""


# -- Python ---------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _compiled() -> tuple[tuple[re.Pattern, str], ...]:
    # ASCII: \b and \d as RE2 reads them
    return tuple((re.compile(rule.pattern, re.ASCII), rule.replacement) for rule in RULES)


def scrub_rules(text: str) -> str:
    for pattern, replacement in _compiled():
        text = pattern.sub(replacement, text)
    return text


@lru_cache(maxsize=1)
def _scrubber():
    try:
        import scrubadub
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise PhiLibraryMissing(
            "PHI scrubbing needs the scrubadub package (pip install 'scrubadub>=2.0.1,<3'), "
            "or build with phi_library=False to use the regular expressions alone"
        ) from exc
    # not its date-of-birth detector: dateparser takes ~40 ms a text, and caught nothing the
    # DOB rule misses in our tests
    return scrubadub.Scrubber(detector_list=list(_LIBRARY_TYPES), locale="en_US")


def scrub_library(text: str) -> str:
    """scrubadub's findings replaced by typed placeholders, right to left."""
    spans = sorted(
        ((f.beg, f.end, _LIBRARY_TYPES.get(f.detector_name, f.type.upper())) for f in _scrubber().iter_filth(text)),
        reverse=True,
    )
    last = len(text) + 1
    for beg, end, kind in spans:
        if end <= last:  # skip overlaps
            text = f"{text[:beg]}[{kind}]{text[end:]}"
            last = beg
    return text


def scrub_text(text: str, library: bool = True) -> str:
    """One text through both layers: what ``scrub_table`` does to each row."""
    text = scrub_rules(text)
    if library and re.search(LIBRARY_HINT, text, re.ASCII):
        text = scrub_library(text)
    return text


# -- SQL ------------------------------------------------------------------------------------
def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


ANY_RULE = "|".join(f"(?:{rule.pattern})" for rule in RULES)


def chain_sql(expr: str) -> str:
    """A SQL expression applying every rule, one after the other, to ``expr``."""
    for rule in RULES:
        expr = f"regexp_replace({expr}, {_literal(rule.pattern)}, {_literal(rule.replacement)}, 'g')"
    return expr


def scrub_sql(expr: str) -> str:
    """``chain_sql`` behind one pass of all the rules together (RE2 matches an alternation in
    one scan): most texts hold nothing, and skip the chain."""
    return f"CASE WHEN regexp_matches({expr}, {_literal(ANY_RULE)}) THEN {chain_sql(expr)} ELSE {expr} END"


def scrub_table(
    con: duckdb.DuckDBPyConnection, source: str, target: str, library: bool = True, also_flag: str | None = None
) -> dict[str, int]:
    """``target``: ``source`` (a ``text`` column and any others, ``key`` among them) with the
    text scrubbed, plus ``flagged``: whether the raw text matched a rule, the library hint or
    ``also_flag`` (a pattern the caller wants checked in the same single scan of every text),
    and ``by_rules``: whether a rule changed it. The rules run on flagged texts only, then the
    library on those the hint still marks."""
    flag = "|".join(f"(?:{p})" for p in (ANY_RULE, LIBRARY_HINT, also_flag) if p)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {target} AS
        SELECT * EXCLUDE (raw), flagged AND regexp_matches(raw, {_literal(ANY_RULE)}) AS by_rules
        FROM (SELECT * REPLACE (CASE WHEN flagged THEN {chain_sql('text')} ELSE text END AS text), text AS raw
              FROM (SELECT *, regexp_matches(text, {_literal(flag)}) AS flagged FROM {source}))
    """)
    texts, changed = con.execute(f"SELECT count(*), count(*) FILTER (by_rules) FROM {target}").fetchall()[0]
    report = {"texts": texts, "changed_by_rules": changed, "library_checked": 0, "changed_by_library": 0}
    if library:
        hinted = con.execute(
            f"SELECT key, text FROM {target} WHERE flagged AND regexp_matches(text, {_literal(LIBRARY_HINT)})"
        ).fetchall()
        updates = [(key, new) for key, text in hinted if (new := scrub_library(text)) != text]
        report.update(library_checked=len(hinted), changed_by_library=len(updates))
        if updates:
            keys, new_texts = zip(*updates)
            con.register("_phi_library", pa.table({"key": list(keys), "text": list(new_texts)}))
            con.execute(f"UPDATE {target} s SET text = l.text FROM _phi_library l WHERE s.key = l.key")
            con.unregister("_phi_library")
    return report
