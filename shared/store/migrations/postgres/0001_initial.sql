-- Projects, tokens, request events and audit events.
CREATE TABLE projects (
    id                uuid PRIMARY KEY,
    name              text NOT NULL UNIQUE,
    base_url          text NOT NULL,
    api_key_enc       text NOT NULL,
    is_active         boolean NOT NULL DEFAULT true,
    request_count     bigint NOT NULL DEFAULT 0,
    cache_hit_count   bigint NOT NULL DEFAULT 0,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    last_used_at      timestamptz,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);

CREATE TABLE tokens (
    id                uuid PRIMARY KEY,
    token_hash        text NOT NULL UNIQUE,
    display_prefix    text NOT NULL,
    project_id        uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    label             text NOT NULL DEFAULT '',
    is_active         boolean NOT NULL DEFAULT true,
    expires_at        timestamptz,
    max_requests      bigint,
    request_count     bigint NOT NULL DEFAULT 0,
    cache_hit_count   bigint NOT NULL DEFAULT 0,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    last_used_at      timestamptz,
    revoked_at        timestamptz,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);
CREATE INDEX tokens_project_idx ON tokens (project_id);

CREATE TABLE request_events (
    event_id          uuid PRIMARY KEY,
    request_id        text NOT NULL,
    ts                timestamptz NOT NULL,
    project_id        uuid,
    token_id          uuid,
    method            text NOT NULL,
    path              text NOT NULL,
    status            integer NOT NULL,
    model             text NOT NULL DEFAULT '',
    duration_ms       double precision NOT NULL DEFAULT 0,
    upstream_ms       double precision NOT NULL DEFAULT 0,
    ttfb_ms           double precision NOT NULL DEFAULT 0,
    request_bytes     bigint NOT NULL DEFAULT 0,
    response_bytes    bigint NOT NULL DEFAULT 0,
    prompt_tokens     integer NOT NULL DEFAULT 0,
    completion_tokens integer NOT NULL DEFAULT 0,
    total_tokens      integer NOT NULL DEFAULT 0,
    cache_status      text NOT NULL DEFAULT '',
    stream            boolean NOT NULL DEFAULT false,
    error             text NOT NULL DEFAULT '',
    client_ip         text NOT NULL DEFAULT ''
);
CREATE INDEX request_events_token_ts_idx ON request_events (token_id, ts);
CREATE INDEX request_events_project_ts_idx ON request_events (project_id, ts);
CREATE INDEX request_events_ts_idx ON request_events (ts);

CREATE TABLE audit_events (
    id          bigserial PRIMARY KEY,
    ts          timestamptz NOT NULL,
    actor       text NOT NULL,
    action      text NOT NULL,
    target_type text NOT NULL DEFAULT '',
    target_id   text NOT NULL DEFAULT '',
    outcome     text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}',
    request_id  text NOT NULL DEFAULT '',
    client_ip   text NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_ts_idx ON audit_events (ts);
CREATE INDEX audit_events_target_idx ON audit_events (target_id, id);
