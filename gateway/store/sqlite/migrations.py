"""The journal's SQLite schema: versioned migrations, frozen once released.

Index i brings the schema from version i to i+1 (``PRAGMA user_version``); a released
migration never changes (a database made by it is never migrated again): a change is a
new migration.  Applied by :func:`gateway.store.sqlite.connection.migrate`.
"""
from __future__ import annotations

from .eod import eod_line_sql

#: Versioned migrations: index i brings the schema from version i to i+1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE message (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('IN', 'OUT')),
        session TEXT NOT NULL,
        party TEXT,
        msg_type TEXT,
        msg_id TEXT,
        ref_id TEXT,
        envelope BLOB NOT NULL,
        xml BLOB NOT NULL
    );
    CREATE INDEX message_msg_id ON message (msg_id);
    CREATE TABLE seen_msg_id (
        sender TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        seen_at REAL NOT NULL,
        PRIMARY KEY (sender, msg_id)
    ) WITHOUT ROWID;
    CREATE INDEX seen_msg_id_at ON seen_msg_id (seen_at);
    CREATE TABLE record (
        origin TEXT NOT NULL,
        biz_type TEXT NOT NULL,
        biz_sn TEXT NOT NULL,
        receiver TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        state TEXT NOT NULL,
        trade_date TEXT NOT NULL,
        amount_fen INTEGER,
        result TEXT,
        response_xml BLOB,
        fund_acct TEXT,
        wallet_id TEXT,
        order_no TEXT,
        product_code TEXT,
        service_end TEXT,
        orig_type TEXT,
        orig_from TEXT,
        orig_biz_sn TEXT,
        bank_sn TEXT,
        sweep_ref TEXT,
        book_date TEXT,
        agreement_no TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (origin, biz_type, biz_sn)
    ) WITHOUT ROWID;
    CREATE INDEX record_msg ON record (receiver, msg_id);
    CREATE INDEX record_state ON record (state);
    CREATE INDEX record_wallet ON record (wallet_id, biz_type);
    CREATE INDEX record_orig ON record (orig_from, orig_type, orig_biz_sn);
    CREATE INDEX record_day ON record (trade_date, receiver);
    CREATE TABLE agreement (
        agreement_no TEXT UNIQUE,
        broker TEXT NOT NULL,
        bank TEXT NOT NULL,
        fund_acct TEXT NOT NULL,
        wallet_id TEXT NOT NULL,
        wallet_level TEXT NOT NULL,
        wallet_kind TEXT NOT NULL,
        status TEXT NOT NULL,
        sign_date TEXT NOT NULL,
        end_date TEXT,
        cust_name TEXT NOT NULL,
        id_type TEXT NOT NULL,
        id_no_sealed TEXT NOT NULL,
        phone_sealed TEXT,
        sign_biz_sn TEXT NOT NULL,
        PRIMARY KEY (broker, sign_biz_sn)
    );
    CREATE INDEX agreement_fund ON agreement (fund_acct, status);
    CREATE INDEX agreement_wallet ON agreement (wallet_id, status);
    CREATE TABLE reversal (
        origin TEXT NOT NULL,
        biz_type TEXT NOT NULL,
        biz_sn TEXT NOT NULL,
        receiver TEXT NOT NULL,
        reversal_sn TEXT NOT NULL,
        amount_fen INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        last_msg_id TEXT,
        result TEXT,
        PRIMARY KEY (origin, biz_type, biz_sn)
    ) WITHOUT ROWID;
    CREATE INDEX reversal_due ON reversal (state, next_at);
    """,
    # 2: records clustered by trade date (an end-of-day check reads one day's records as
    # one range of the table instead of an index probe per record: ~6x faster), the
    # idempotency key (From, Type, BizSn) kept unique by its own index, each record's
    # end-of-day line without Time (PROTOCOL §8, as `gateway eod export` writes it)
    # computed by SQLite on every insert and update, so the day's lines are read, never
    # rebuilt, when a file is reconciled (gateway/eod/fingerprint.py); and the stored
    # answer (~1 KB of XML) moved out of the record row into `response`, so a record
    # (~250 bytes) never spills into overflow pages of the clustered b-tree; the state and
    # original-reference indexes made partial (only open records, only records naming an
    # original: fewer index writes per relayed request).  Frozen SQL; the line's expression is
    # rendered from gateway/eod/mapping.py (its one definition) and pinned by a test
    # (tests/test_store.py): a change to the line is a new migration rebuilding ``record``.
    """
    CREATE TABLE response (id INTEGER PRIMARY KEY, xml BLOB NOT NULL);
    INSERT INTO response (id, xml)
        SELECT row_number() OVER (ORDER BY origin, biz_type, biz_sn), response_xml
        FROM record WHERE response_xml IS NOT NULL;
    CREATE TABLE record_v2 (
        origin TEXT NOT NULL,
        biz_type TEXT NOT NULL,
        biz_sn TEXT NOT NULL,
        receiver TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        state TEXT NOT NULL,
        trade_date TEXT NOT NULL,
        amount_fen INTEGER,
        result TEXT,
        response_id INTEGER,
        fund_acct TEXT,
        wallet_id TEXT,
        order_no TEXT,
        product_code TEXT,
        service_end TEXT,
        orig_type TEXT,
        orig_from TEXT,
        orig_biz_sn TEXT,
        bank_sn TEXT,
        sweep_ref TEXT,
        book_date TEXT,
        agreement_no TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        eod_line TEXT GENERATED ALWAYS AS (
            @EOD_LINE@
        ) STORED,
        PRIMARY KEY (trade_date, origin, biz_type, biz_sn)
    ) WITHOUT ROWID;
    INSERT INTO record_v2 (origin, biz_type, biz_sn, receiver, msg_id, content_hash, state,
        trade_date, amount_fen, result, response_id, fund_acct, wallet_id, order_no,
        product_code, service_end, orig_type, orig_from, orig_biz_sn, bank_sn, sweep_ref,
        book_date, agreement_no, created_at, updated_at)
    SELECT origin, biz_type, biz_sn, receiver, msg_id, content_hash, state,
        trade_date, amount_fen, result, CASE WHEN response_xml IS NOT NULL THEN row_number()
            OVER (PARTITION BY response_xml IS NULL ORDER BY origin, biz_type, biz_sn) END,
        fund_acct, wallet_id, order_no,
        product_code, service_end, orig_type, orig_from, orig_biz_sn, bank_sn, sweep_ref,
        book_date, agreement_no, created_at, updated_at FROM record;
    DROP TABLE record;
    ALTER TABLE record_v2 RENAME TO record;
    CREATE UNIQUE INDEX record_key ON record (origin, biz_type, biz_sn);
    CREATE INDEX record_msg ON record (receiver, msg_id);
    CREATE INDEX record_open ON record (state) WHERE state IN ('PENDING', 'REVERSING');
    CREATE INDEX record_wallet ON record (wallet_id, biz_type);
    CREATE INDEX record_orig ON record (orig_from, orig_type, orig_biz_sn)
        WHERE orig_biz_sn IS NOT NULL;
    """.replace("@EOD_LINE@", eod_line_sql()),
    # 3: alerts (PROTOCOL §10): each one journaled with its kind, severity, subject and time.
    """
    CREATE TABLE alert (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL,
        subject TEXT NOT NULL,
        text TEXT NOT NULL
    );
    CREATE INDEX message_reversal_answer ON message (ref_id, party)
        WHERE msg_type = 'XFER.REVERSE.RSP';
    ALTER TABLE reversal ADD COLUMN queued_at REAL;
    """,
    # 4: what the gateway sent again kept as state, not re-read from the evidence: each
    # attempt at one of its own reversals (§6: an answer to any attempt counts) and each
    # repeat it asked again of a receiver (its late answer settles the original record).
    # Before, both were found by parsing the XML of the evidence log.  The latest attempt
    # of every reversal is carried over; an answer to an earlier one sent before the
    # upgrade is not matched (a queued reversal is sent again and that answer counts).
    """
    CREATE TABLE reversal_attempt (
        receiver TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        origin TEXT NOT NULL,
        biz_type TEXT NOT NULL,
        biz_sn TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (receiver, msg_id)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO reversal_attempt (receiver, msg_id, origin, biz_type, biz_sn, at)
        SELECT receiver, last_msg_id, origin, biz_type, biz_sn, next_at FROM reversal
        WHERE last_msg_id IS NOT NULL;
    CREATE TABLE asked_again (
        receiver TEXT NOT NULL,
        origin TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        biz_type TEXT NOT NULL,
        biz_sn TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (receiver, origin, msg_id)
    ) WITHOUT ROWID;
    """,
    # 5: suspensions (PROTOCOL §11): business suspended with a party ('*': every party),
    # why and since when; kept across restarts until an operator resumes.
    """
    CREATE TABLE suspension (
        party TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        since REAL NOT NULL
    ) WITHOUT ROWID;
    """,
)
