-- Where each event's token counts come from (SQLite's INTEGER is already 64-bit).
-- usage_source: '' as the upstream reported them, 'clamped' (absurd figures bounded),
-- 'estimated' (the upstream never reported: a cut stream, an upstream that does not count).
ALTER TABLE request_events ADD COLUMN usage_source TEXT NOT NULL DEFAULT '';
