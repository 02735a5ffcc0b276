-- Per-token rate and concurrency limits, and the quota counter taken at admission.
-- rpm: NULL = the deployment's default (DISTRIBUTED_RATE_LIMIT_MAX), 0 = no per-token rate limit.
-- max_concurrency: NULL = no cap.
-- quota_used: requests counted against max_requests by the database path (a conditional UPDATE
-- at admission). The quota in use is MAX(quota_used, the count derived from request events), so
-- existing rows need no backfill.
ALTER TABLE tokens ADD COLUMN rpm INTEGER;
ALTER TABLE tokens ADD COLUMN max_concurrency INTEGER;
ALTER TABLE tokens ADD COLUMN quota_used INTEGER NOT NULL DEFAULT 0;
