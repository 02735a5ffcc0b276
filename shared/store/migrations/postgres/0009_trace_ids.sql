-- The OpenTelemetry trace of each request (docs/operations.md "Tracing"): find a request's
-- trace from its row, and its row from a trace. Empty when tracing is off.
ALTER TABLE request_events ADD COLUMN trace_id text NOT NULL DEFAULT '';
ALTER TABLE request_events ADD COLUMN span_id text NOT NULL DEFAULT '';
CREATE INDEX request_events_trace_id ON request_events (trace_id) WHERE trace_id <> '';
