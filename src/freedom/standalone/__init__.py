"""The standalone consumer proxy (internal): `freedom proxy --config conf`, delivering kafka.toml's
`[[subscriptions]]` to any HTTP/1.1 or h2c service (docs/standalone-proxy.md)."""
