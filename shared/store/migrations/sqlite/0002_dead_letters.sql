-- Stream entries the dispatcher could not record, kept with their raw payload and the error.
CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_key  TEXT NOT NULL,
    entry_id    TEXT NOT NULL,
    event_id    TEXT NOT NULL DEFAULT '',
    reason      TEXT NOT NULL,
    error       TEXT NOT NULL,
    deliveries  INTEGER NOT NULL,
    consumer    TEXT NOT NULL,
    payload     BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    replayed_at TEXT
);
-- A dead letter written twice (the dispatcher died between commit and XACK) is one row.
CREATE UNIQUE INDEX dead_letters_entry_idx ON dead_letters (stream_key, entry_id);
CREATE INDEX dead_letters_open_idx ON dead_letters (reason, id) WHERE replayed_at IS NULL;
