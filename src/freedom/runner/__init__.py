"""The runner (internal): serving an application with uvicorn or granian, `--workers`, `--reload`,
and the listen/proxy address rules."""
