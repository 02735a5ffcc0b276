-- Money: cached-input and reasoning tokens and the cost of each event; the operator's prices;
-- daily usage rollups written in the events' transaction.
-- Costs are integer pico-dollars (10^-12 USD) and rates integer micro-dollars per million
-- tokens: rate x tokens is exactly the cost, no rounding anywhere. cost_picousd NULL: unpriced.
ALTER TABLE request_events ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_events ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_events ADD COLUMN cost_picousd INTEGER;

CREATE TABLE prices (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    model               TEXT NOT NULL,
    project_id          TEXT NOT NULL DEFAULT '',
    effective_from      TEXT NOT NULL,
    input_micros        INTEGER NOT NULL,
    cached_input_micros INTEGER,
    output_micros       INTEGER NOT NULL,
    reasoning_micros    INTEGER,
    cache_write_micros  INTEGER,
    created_at          TEXT NOT NULL,
    UNIQUE (model, project_id, effective_from)
);

CREATE TABLE usage_rollups (
    day               TEXT NOT NULL,
    project_id        TEXT NOT NULL,
    token_id          TEXT NOT NULL,
    model             TEXT NOT NULL,
    requests          INTEGER NOT NULL DEFAULT 0,
    rejected          INTEGER NOT NULL DEFAULT 0,
    cache_hits        INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens     INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens  INTEGER NOT NULL DEFAULT 0,
    total_tokens      INTEGER NOT NULL DEFAULT 0,
    cost_picousd      INTEGER NOT NULL DEFAULT 0,
    unpriced          INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (project_id, day, token_id, model)
);
CREATE INDEX usage_rollups_token_idx ON usage_rollups (token_id, day);
