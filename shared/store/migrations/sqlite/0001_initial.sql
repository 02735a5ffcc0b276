-- Projects, tokens, request events and audit events. Timestamps are UTC ISO-8601 text.
CREATE TABLE projects (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    base_url          TEXT NOT NULL,
    api_key_enc       TEXT NOT NULL,
    is_active         INTEGER NOT NULL DEFAULT 1,
    request_count     INTEGER NOT NULL DEFAULT 0,
    cache_hit_count   INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    last_used_at      TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);

CREATE TABLE tokens (
    id                TEXT PRIMARY KEY,
    token_hash        TEXT NOT NULL UNIQUE,
    display_prefix    TEXT NOT NULL,
    project_id        TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    label             TEXT NOT NULL DEFAULT '',
    is_active         INTEGER NOT NULL DEFAULT 1,
    expires_at        TEXT,
    max_requests      INTEGER,
    request_count     INTEGER NOT NULL DEFAULT 0,
    cache_hit_count   INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    last_used_at      TEXT,
    revoked_at        TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);
CREATE INDEX tokens_project_idx ON tokens (project_id);

CREATE TABLE request_events (
    event_id          TEXT PRIMARY KEY,
    request_id        TEXT NOT NULL,
    ts                TEXT NOT NULL,
    project_id        TEXT,
    token_id          TEXT,
    method            TEXT NOT NULL,
    path              TEXT NOT NULL,
    status            INTEGER NOT NULL,
    model             TEXT NOT NULL DEFAULT '',
    duration_ms       REAL NOT NULL DEFAULT 0,
    upstream_ms       REAL NOT NULL DEFAULT 0,
    ttfb_ms           REAL NOT NULL DEFAULT 0,
    request_bytes     INTEGER NOT NULL DEFAULT 0,
    response_bytes    INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens      INTEGER NOT NULL DEFAULT 0,
    cache_status      TEXT NOT NULL DEFAULT '',
    stream            INTEGER NOT NULL DEFAULT 0,
    error             TEXT NOT NULL DEFAULT '',
    client_ip         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX request_events_token_ts_idx ON request_events (token_id, ts);
CREATE INDEX request_events_project_ts_idx ON request_events (project_id, ts);
CREATE INDEX request_events_ts_idx ON request_events (ts);

CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_type TEXT NOT NULL DEFAULT '',
    target_id   TEXT NOT NULL DEFAULT '',
    outcome     TEXT NOT NULL,
    details     TEXT NOT NULL DEFAULT '{}',
    request_id  TEXT NOT NULL DEFAULT '',
    client_ip   TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_ts_idx ON audit_events (ts);
CREATE INDEX audit_events_target_idx ON audit_events (target_id, id);
