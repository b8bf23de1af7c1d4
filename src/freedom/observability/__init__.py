"""Observability (internal): Prometheus metrics, OpenTelemetry spans, trace context, health
(`/livez`, `/readyz`), JSON logs, and the endpoints that serve them."""
