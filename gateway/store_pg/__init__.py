"""The PostgreSQL store (PROTOCOL §12): the Store (store.py, stores.py, uow.py), the
end-of-day reader (eod.py), schema, lease and fencing, the turn's commit.

Only this package imports psycopg.  See docs/architecture.md "PostgreSQL store (design)".
"""
