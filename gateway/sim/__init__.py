"""Reference bank and broker peers (``gateway sim bank|broker``) for demos, tests
and benchmarks: real keys, real sessions, real SQLite ledgers."""
