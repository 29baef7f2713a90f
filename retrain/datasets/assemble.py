"""Row assembly: skeleton rows (lists of text positions) become TRL message lists.

SQL decides every row — which texts, in which order, with which label and provenance — and
hands back lists of ``texts.idx``. Turning those into ``[{"role", "content"}, ...]`` is a
gather, done here with Arrow ``take`` (no Python loop over rows): DuckDB building the same
nested lists was the slowest step of a build (about 20 s of 70 for 1M answers).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from retrain.datasets.schema import MESSAGE


class TextStore:
    """The ``texts`` table as Arrow arrays indexed by ``idx``."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.roles = pa.array([], pa.string())
        self.texts = pa.array([], pa.string())
        self.extend(con)

    def extend(self, con: duckdb.DuckDBPyConnection) -> None:
        """Load the texts added since (the ``text_idx`` sequence makes idx dense: 0..n-1)."""
        start = len(self.texts)
        table = con.sql(f"SELECT idx, role, text FROM texts WHERE idx >= {start}").to_arrow_table()
        expected = pa.array(range(start, start + len(table)), pa.int64())
        if len(table) and not pc.all(pc.equal(table.column("idx"), expected)).as_py():
            table = table.take(pc.sort_indices(table.column("idx")))
            if not pc.all(pc.equal(table.column("idx"), expected)).as_py():
                raise RuntimeError("texts.idx is not dense: the text_idx sequence was bypassed")
        self.roles = pa.concat_arrays([self.roles, table.column("role").combine_chunks()])
        self.texts = pa.concat_arrays([self.texts, table.column("text").combine_chunks()])

    def messages(self, idx_lists: pa.ChunkedArray | pa.ListArray) -> pa.ListArray:
        """A list<struct<role, content>> column from a list<int64> column of text positions."""
        lists = idx_lists.combine_chunks() if isinstance(idx_lists, pa.ChunkedArray) else idx_lists
        flat = lists.flatten()
        items = pa.StructArray.from_arrays(
            [self.roles.take(flat), self.texts.take(flat)], fields=list(MESSAGE)
        )
        offsets = pc.subtract(lists.offsets, lists.offsets[0])
        return pa.ListArray.from_arrays(offsets, items)


def assemble(store: TextStore, skeleton: pa.Table, message_columns: dict[str, str]) -> pa.Table:
    """``skeleton`` with each ``idx column -> message column`` of ``message_columns`` replaced."""
    columns = {}
    for name in skeleton.column_names:
        target = message_columns.get(name)
        if target is None:
            columns[name] = skeleton.column(name)
        else:
            columns[target] = store.messages(skeleton.column(name))
    return pa.table(columns)
