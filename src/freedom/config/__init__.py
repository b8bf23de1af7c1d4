"""Configuration (internal): the Pydantic models of app.toml and kafka.toml, which are also what the
code reads (`models`, gathering `app`, `clients` and `subscriptions`; their shared checks in
`rules`), the Kafka client settings' rules (`librdkafka`) and the shared secret (`secret`), reading
the files and environment variables (`loading`, `env`, walking the models as `schema` does),
and the reference page (`reference`).

It imports only freedom.errors and freedom.wire: the Kafka side and the web side import it."""
