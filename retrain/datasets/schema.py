"""The row schemas TRL sees, and the check every row passes before it leaves.

TRL infers a dataset's format from its first row only, so a build never returns (and an export
never writes) a table unless its Arrow types are exactly these and every row passes the value
checks below (vectorised with pyarrow.compute).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feedback.errors import CarecycleError

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)
IDS = pa.list_(pa.string())

KTO_SCHEMA = pa.schema(
    [("prompt", MESSAGES), ("completion", MESSAGES), ("label", pa.bool_()), ("message_ids", IDS)]
)
DPO_SCHEMA = pa.schema(
    [("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES), ("source", pa.string()), ("message_ids", IDS)]
)
SCHEMAS = {"kto": KTO_SCHEMA, "dpo": DPO_SCHEMA}
DPO_SOURCES = ("correction", "sibling", "sampled")


class DatasetValidationError(CarecycleError):
    """Rows that TRL would misread; a bug in the builder or a hand-made table."""


ROLES = pa.array(["system", "user", "assistant"])


def _rows_with(array: pa.ListArray, element_ok: pa.Array) -> pa.Array:
    """Per row: every element is ok (``element_ok`` runs over ``array.values``)."""
    start, end = array.offsets[0].as_py(), array.offsets[-1].as_py()
    bad = ~pc.fill_null(element_ok, False).to_numpy(zero_copy_only=False)[start:end]
    ok = np.ones(len(array), dtype=bool)
    ok[pc.list_parent_indices(array).to_numpy()[bad]] = False
    return pa.array(ok)


def _role_at(array: pa.ListArray, index: pa.Array) -> pa.Array:
    roles = pc.struct_field(array.values, "role")
    return pc.take(roles, pc.max_element_wise(index, 0)) if len(roles) else pa.nulls(len(index), pa.string())


def _messages_ok(array: pa.ListArray) -> pa.Array:
    values = array.values
    role_ok = pc.is_in(pc.struct_field(values, "role"), value_set=ROLES)
    element_ok = pc.and_(role_ok, pc.is_valid(pc.struct_field(values, "content")))
    return pc.and_(pc.greater(pc.list_value_length(array), 0), _rows_with(array, element_ok))


def _ends_with_user(array: pa.ListArray) -> pa.Array:
    last = pc.subtract(array.offsets[1:], 1)
    return pc.and_(pc.greater(pc.list_value_length(array), 0), pc.equal(_role_at(array, last), "user"))


def _one_answer(array: pa.ListArray) -> pa.Array:
    first = array.offsets[:-1]
    contents = pc.struct_field(array.values, "content")
    content = pc.take(contents, pc.max_element_wise(first, 0)) if len(contents) else pa.nulls(len(array))
    one = pc.equal(pc.list_value_length(array), 1)
    return pc.and_(pc.and_(one, pc.equal(_role_at(array, first), "assistant")), pc.is_valid(content))


def _ids_ok(array: pa.ListArray) -> pa.Array:
    return pc.and_(pc.greater(pc.list_value_length(array), 0), _rows_with(array, pc.is_valid(array.values)))


COMMON_CHECKS = {
    "prompt must be a non-empty list of system/user/assistant messages with text": ("prompt", _messages_ok),
    "prompt must end with a user message": ("prompt", _ends_with_user),
    "message_ids must list at least one id, and no null": ("message_ids", _ids_ok),
}
CHECKS = {
    "kto": {
        **COMMON_CHECKS,
        "completion must be one assistant message with text": ("completion", _one_answer),
        "label must be true or false": ("label", pc.is_valid),
    },
    "dpo": {
        **COMMON_CHECKS,
        "chosen must be one assistant message with text": ("chosen", _one_answer),
        "rejected must be one assistant message with text": ("rejected", _one_answer),
        "source must be correction, sibling or sampled": ("source", lambda a: pc.is_in(a, pa.array(DPO_SOURCES))),
    },
}


def kind_of(table: pa.Table) -> str:
    """'kto' or 'dpo', from the column names (never from the rows)."""
    names = set(table.column_names)
    for kind, schema in SCHEMAS.items():
        if set(schema.names) == names:
            return kind
    raise DatasetValidationError(
        f"columns {sorted(names)} are neither KTO's {KTO_SCHEMA.names} nor DPO's {DPO_SCHEMA.names}"
    )


def _same_type(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Type equality that ignores the name of a list's child field ('item', 'l', ...)."""
    if pa.types.is_list(expected):
        return pa.types.is_list(actual) and _same_type(actual.value_type, expected.value_type)
    if pa.types.is_struct(expected):
        return (
            pa.types.is_struct(actual)
            and [f.name for f in actual] == [f.name for f in expected]
            and all(_same_type(a.type, e.type) for a, e in zip(actual, expected))
        )
    return actual.equals(expected)


def to_table(rows: pa.Table | list[dict], kind: str) -> pa.Table:
    """Rows as an Arrow table of exactly the ``kind`` schema (dicts are typed, not inferred)."""
    schema = SCHEMAS[kind]
    if isinstance(rows, list):
        try:
            return pa.Table.from_pylist(rows, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise DatasetValidationError(f"{kind} rows do not fit the {kind} schema: {exc}") from exc
    bad = [
        f"{f.name}: {rows.schema.field(f.name).type} (expected {f.type})"
        for f in schema
        if f.name in rows.column_names and not _same_type(rows.schema.field(f.name).type, f.type)
    ]
    if rows.column_names != schema.names or bad:
        raise DatasetValidationError(
            f"{kind} rows must have columns {schema.names} with their types; got {rows.column_names}"
            + (f"; wrong types: {'; '.join(bad)}" if bad else "")
        )
    return rows.cast(schema)


def validate_table(table: pa.Table | list[dict], kind: str) -> pa.Table:
    """The rows as a table typed exactly; DatasetValidationError naming each failed check,
    how many rows fail it and the first one. Vectorised: one pass per check."""
    table = to_table(table, kind)
    failures = []
    for name, (column, check) in CHECKS[kind].items():
        ok = pc.fill_null(check(table.column(column).combine_chunks()), False)
        bad = len(ok) - pc.sum(ok).as_py() if len(ok) else 0
        if bad:
            first = pc.index(ok, False).as_py()
            failures.append(f"{name}: {bad} rows (first: row {first})")
    if failures:
        raise DatasetValidationError(f"{kind} rows fail validation: " + "; ".join(failures))
    return table
