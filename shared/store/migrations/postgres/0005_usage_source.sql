-- Token counts as wide as real totals, and where each event's counts come from.
-- usage_source: '' as the upstream reported them, 'clamped' (absurd figures bounded),
-- 'estimated' (the upstream never reported: a cut stream, an upstream that does not count).
ALTER TABLE request_events ALTER COLUMN prompt_tokens TYPE bigint;
ALTER TABLE request_events ALTER COLUMN completion_tokens TYPE bigint;
ALTER TABLE request_events ALTER COLUMN total_tokens TYPE bigint;
ALTER TABLE projects ALTER COLUMN prompt_tokens TYPE bigint;
ALTER TABLE projects ALTER COLUMN completion_tokens TYPE bigint;
ALTER TABLE tokens ALTER COLUMN prompt_tokens TYPE bigint;
ALTER TABLE tokens ALTER COLUMN completion_tokens TYPE bigint;
ALTER TABLE request_events ADD COLUMN usage_source text NOT NULL DEFAULT '';
