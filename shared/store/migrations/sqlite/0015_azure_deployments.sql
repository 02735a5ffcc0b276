-- Azure OpenAI deployments (docs/providers.md): a project's or an upstream's table of model name
-- -> deployment name, as a JSON object ('{"gpt-4o": "prod-gpt4o"}'), and the api-version sent to
-- it. NULL: the model name is the deployment; the client's api-version, else
-- AZURE_OPENAI_API_VERSION.
ALTER TABLE projects ADD COLUMN deployments TEXT;
ALTER TABLE projects ADD COLUMN api_version TEXT;
ALTER TABLE upstreams ADD COLUMN deployments TEXT;
ALTER TABLE upstreams ADD COLUMN api_version TEXT;
