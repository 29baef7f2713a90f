"""The record: DuckDB schema and migrations, the single-writer store, named queries."""
