"""PHI scrubbing: what it catches, what it leaves alone, and what it is known to miss.

Each case runs through the Python path (one string) and the SQL path (DuckDB's RE2, what a
build uses in bulk): both must give the same text.
"""

from __future__ import annotations

import duckdb
import pytest

from retrain.datasets.phi import scrub_rules, scrub_sql, scrub_table, scrub_text

CAUGHT = [
    # names: after a cue
    ("My name is John Smith and I have a rash.", "My name is [NAME] and I have a rash."),
    ("Dr. Alice Jones said to rest.", "Dr. [NAME] said to rest."),
    ("Mrs. O'Brien and Mr McDonald came.", "Mrs. [NAME] and Mr [NAME] came."),
    ("My son Jake has a fever.", "My son [NAME] has a fever."),
    ("Patient: Maria Lopez-Garcia, 54.", "Patient: [NAME], 54."),
    ("Any advice? Thanks,\nMaria", "Any advice? Thanks,\n[NAME]"),
    # phone numbers
    ("Call me at 415-555-0132.", "Call me at [PHONE]."),
    ("Call (415) 555-0132 or 415.555.0133", "Call [PHONE] or [PHONE]"),
    ("My number is +1 415 555 0132", "My number is [PHONE]"),
    ("In London: +44 20 7946 0958.", "In London: [PHONE]."),
    # e-mail
    ("Write to jane.doe+clinic@example.co.uk please", "Write to [EMAIL] please"),
    # street addresses
    ("I live at 42 Oak Street, Springfield, IL 62704.", "I live at [ADDRESS]."),
    ("Send it to 350 5th Avenue, Apt 4B", "Send it to [ADDRESS]"),
    ("PO Box 1234 is my address", "[ADDRESS] is my address"),
    ("We moved to Portland, OR 97201 last year.", "We moved to [ADDRESS] last year."),
    # dates of birth and other full dates
    ("DOB: 03/14/1962", "DOB: [DOB]"),
    ("I was born on March 14, 1962.", "I was born on [DOB]."),
    ("date of birth 1962-03-14", "date of birth [DOB]"),
    ("Seen on 12/05/2024 and 5 June 2023.", "Seen on [DATE] and [DATE]."),
    # record numbers and other identifiers
    ("MRN 1234567", "MRN [MRN]"),
    ("Medical record number: AB-778899", "Medical record number: [MRN]"),
    ("patient id 44556677", "patient id [MRN]"),
    ("SSN 123-45-6789", "SSN [SSN]"),
    ("Card 4111 1111 1111 1111 expired", "Card [CARD] expired"),
    ("Insurance 884422119933", "Insurance [ID]"),
]

LEFT_ALONE = [
    "Take 500 mg ibuprofen every 6 hours, at most 3 days.",
    "Blood pressure 120/80, pulse 72, temperature 38.5 C.",
    "I am 54 years old and have had diabetes since 2019.",
    "Miss a dose? Take it when you remember. May I help? Will it hurt?",
    "MS and ALS are neurological conditions; see a Dr. soon.",
    "The WHO recommends 150 minutes of activity a week.",
    "Platelets 150000 per microlitre is normal.",
]

# Known gaps, pinned so that a change in coverage is noticed (move a case to CAUGHT when fixed)
MISSED = [
    "John Smith called about his results.",  # a bare name with no cue
    "I live on Rue de Rivoli 12 in Paris.",  # non-US address shapes
    "Ring 020 7946 0958 tomorrow.",  # national phone formats outside North America
    "I was born on the fourteenth of March.",  # a date in words with no digits
]


@pytest.fixture(scope="module")
def con():
    connection = duckdb.connect(":memory:")
    yield connection
    connection.close()


def sql_scrub(con, text: str) -> str:
    return con.execute(f"SELECT {scrub_sql('x')} FROM (SELECT ?::VARCHAR AS x)", [text]).fetchall()[0][0]


@pytest.mark.parametrize(("text", "expected"), CAUGHT)
def test_caught_in_python_and_sql(con, text, expected):
    assert scrub_rules(text) == expected
    assert sql_scrub(con, text) == expected


@pytest.mark.parametrize("text", LEFT_ALONE)
def test_medical_text_is_left_alone(con, text):
    assert scrub_text(text) == text
    assert sql_scrub(con, text) == text


@pytest.mark.parametrize("text", MISSED)
def test_known_gaps(con, text):
    assert scrub_text(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # what only the library finds, after the rules
        ("username: jdoe\npassword: hunter2", "[CREDENTIAL]"),
        ("Follow me @janedoe_health", "Follow me [HANDLE]"),
        ("SSN 123 45 6789", "SSN [SSN]"),
    ],
)
def test_library_layer(text, expected):
    assert scrub_text(text) == expected
    assert scrub_text(text, library=False) == text


def test_scrub_table_counts_each_layer(con):
    con.execute("CREATE OR REPLACE TEMP TABLE raw (key TEXT, text TEXT)")
    con.execute(
        "INSERT INTO raw VALUES ('a', 'Call 415-555-0132'), ('b', 'no phi here'), ('c', 'SSN 123 45 6789')"
    )
    report = scrub_table(con, "raw", "clean")
    assert dict(con.execute("SELECT key, text FROM clean").fetchall()) == {
        "a": "Call [PHONE]", "b": "no phi here", "c": "SSN [SSN]",
    }
    assert report == {"texts": 3, "changed_by_rules": 1, "library_checked": 1, "changed_by_library": 1}
