-- Model scopes: the models a token or a project may use, as comma-separated exact names and
-- globs ('gpt-4o-mini,gpt-4.1-*'); NULL allows every model.
ALTER TABLE tokens ADD COLUMN models TEXT;
ALTER TABLE projects ADD COLUMN models TEXT;

-- Budgets: spend reserved before a request is forwarded and settled after it, per owner
-- (token or project id), window ('5h', '1d@calendar', '1m' for tokens per minute) and bucket.
CREATE TABLE budget_buckets (
    owner_id        text NOT NULL,
    window_key      text NOT NULL,
    bucket_start    timestamptz NOT NULL,
    reserved_picos  numeric(38, 0) NOT NULL DEFAULT 0,
    spent_picos     numeric(38, 0) NOT NULL DEFAULT 0,
    reserved_tokens bigint NOT NULL DEFAULT 0,
    spent_tokens    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (owner_id, window_key, bucket_start)
);

-- A token's or a project's budget: dollars (exact decimal text) and/or tokens over a window
-- ('5h', '1d', '1mo'; rolling unless budget_calendar), 'hard' (refused) or 'soft' (flagged);
-- and a token's tokens per minute. NULL: none.
ALTER TABLE tokens ADD COLUMN budget_usd TEXT;
ALTER TABLE tokens ADD COLUMN budget_tokens BIGINT;
ALTER TABLE tokens ADD COLUMN budget_window TEXT;
ALTER TABLE tokens ADD COLUMN budget_calendar boolean;
ALTER TABLE tokens ADD COLUMN budget_mode TEXT;
ALTER TABLE tokens ADD COLUMN tpm BIGINT;
ALTER TABLE projects ADD COLUMN budget_usd TEXT;
ALTER TABLE projects ADD COLUMN budget_tokens BIGINT;
ALTER TABLE projects ADD COLUMN budget_window TEXT;
ALTER TABLE projects ADD COLUMN budget_calendar boolean;
ALTER TABLE projects ADD COLUMN budget_mode TEXT;
