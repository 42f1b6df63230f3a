"""The PostgreSQL store (PROTOCOL §12): schema, lease and fencing, the turn's commit.

Only this package imports psycopg.  See docs/architecture.md "PostgreSQL store (design)".
"""
