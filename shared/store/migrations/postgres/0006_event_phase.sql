-- A request's event is written twice: 'accepted' before the upstream is called, then 'final'
-- (which replaces it) when the request ends. A row left 'accepted' is a request whose worker
-- died in flight: admitted and counted, its usage unknown.
ALTER TABLE request_events ADD COLUMN phase TEXT NOT NULL DEFAULT 'final';
