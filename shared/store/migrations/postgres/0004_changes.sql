-- A short log of token and project changes; every proxy worker polls it to drop cached lookups.
CREATE TABLE changes (
    id        bigserial PRIMARY KEY,
    ts        timestamptz NOT NULL,
    kind      text NOT NULL,
    target_id text NOT NULL
);
CREATE INDEX changes_ts_idx ON changes (ts);
