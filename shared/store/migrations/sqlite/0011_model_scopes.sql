-- Model scopes: the models a token or a project may use, as comma-separated exact names and
-- globs ('gpt-4o-mini,gpt-4.1-*'); NULL allows every model.
ALTER TABLE tokens ADD COLUMN models TEXT;
ALTER TABLE projects ADD COLUMN models TEXT;
