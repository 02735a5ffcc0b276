-- Money: cached-input and reasoning tokens and the cost of each event; the operator's prices;
-- daily usage rollups written in the events' transaction.
-- Costs are integer pico-dollars (10^-12 USD) and rates integer micro-dollars per million
-- tokens: rate x tokens is exactly the cost, no rounding anywhere. cost_picousd NULL: unpriced.
ALTER TABLE request_events ADD COLUMN cached_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE request_events ADD COLUMN reasoning_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE request_events ADD COLUMN cost_picousd bigint;

CREATE TABLE prices (
    id                  bigserial PRIMARY KEY,
    model               text NOT NULL,
    -- '' is a price for every project (a key column cannot be NULL in a unique constraint)
    project_id          text NOT NULL DEFAULT '',
    effective_from      timestamptz NOT NULL,
    input_micros        bigint NOT NULL,
    cached_input_micros bigint,
    output_micros       bigint NOT NULL,
    reasoning_micros    bigint,
    cache_write_micros  bigint,
    created_at          timestamptz NOT NULL,
    UNIQUE (model, project_id, effective_from)
);

CREATE TABLE usage_rollups (
    day               date NOT NULL,
    project_id        text NOT NULL,
    token_id          text NOT NULL,
    model             text NOT NULL,
    requests          bigint NOT NULL DEFAULT 0,
    rejected          bigint NOT NULL DEFAULT 0,
    cache_hits        bigint NOT NULL DEFAULT 0,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cached_tokens     bigint NOT NULL DEFAULT 0,
    reasoning_tokens  bigint NOT NULL DEFAULT 0,
    total_tokens      bigint NOT NULL DEFAULT 0,
    cost_picousd      numeric(38, 0) NOT NULL DEFAULT 0,
    unpriced          bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (project_id, day, token_id, model)
);
CREATE INDEX usage_rollups_token_idx ON usage_rollups (token_id, day);
