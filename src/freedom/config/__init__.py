"""Configuration (internal): the Pydantic models of app.toml and kafka.toml (`models`), reading the
files and environment variables (`loading`, `env`), and the reference page (`reference`)."""
