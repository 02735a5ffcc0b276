-- Stream entries the dispatcher could not record, kept with their raw payload and the error.
CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    stream_key  text NOT NULL,
    entry_id    text NOT NULL,
    event_id    text NOT NULL DEFAULT '',
    reason      text NOT NULL,
    error       text NOT NULL,
    deliveries  integer NOT NULL,
    consumer    text NOT NULL,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL,
    replayed_at timestamptz
);
-- A dead letter written twice (the dispatcher died between commit and XACK) is one row.
CREATE UNIQUE INDEX dead_letters_entry_idx ON dead_letters (stream_key, entry_id);
CREATE INDEX dead_letters_open_idx ON dead_letters (reason, id) WHERE replayed_at IS NULL;
