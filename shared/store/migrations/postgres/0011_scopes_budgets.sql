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
