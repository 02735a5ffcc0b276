-- Several upstreams per project (docs/providers.md): balanced by weight within a priority,
-- failing over to the next priority. A project without rows here uses its own base URL and key.
CREATE TABLE upstreams (
    id          uuid PRIMARY KEY,
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    kind        text NOT NULL DEFAULT 'openai',
    base_url    text NOT NULL,
    api_key_enc text NOT NULL,
    weight      integer NOT NULL DEFAULT 1,
    priority    integer NOT NULL DEFAULT 0,
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX upstreams_project_idx ON upstreams (project_id);
