"""The consumer core (internal): consumer groups, the consumer proxy, deliveries, commit order,
back-pressure, batching and what it reports."""
