"""Warehouse: hourly Parquet tables from the landing metadata, the DuckDB daily summary, their checks."""
