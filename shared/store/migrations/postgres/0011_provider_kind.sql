-- A project's provider kind (proxy/upstream/providers.py): where its key goes, which client
-- headers pass, how paths map. Every project made before this speaks the OpenAI API.
ALTER TABLE projects ADD COLUMN kind text NOT NULL DEFAULT 'openai';
-- Anthropic's prompt-cache counts (both part of prompt_tokens), which upstream served the
-- request and how many upstream attempts it took (0: none, as for a cache hit).
ALTER TABLE request_events ADD COLUMN cache_creation_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE request_events ADD COLUMN cache_read_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE request_events ADD COLUMN upstream text NOT NULL DEFAULT '';
ALTER TABLE request_events ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
