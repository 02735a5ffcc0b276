-- A short log of token and project changes; every proxy worker polls it to drop cached lookups.
CREATE TABLE changes (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    ts        TEXT NOT NULL,
    kind      TEXT NOT NULL,
    target_id TEXT NOT NULL
);
CREATE INDEX changes_ts_idx ON changes (ts);
