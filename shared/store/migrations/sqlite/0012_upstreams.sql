-- Several upstreams per project (docs/providers.md): balanced by weight within a priority,
-- failing over to the next priority. A project without rows here uses its own base URL and key.
CREATE TABLE upstreams (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL DEFAULT 'openai',
    base_url    TEXT NOT NULL,
    api_key_enc TEXT NOT NULL,
    weight      INTEGER NOT NULL DEFAULT 1,
    priority    INTEGER NOT NULL DEFAULT 0,
    enabled     INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX upstreams_project_idx ON upstreams (project_id);
