"""Kafka (internal): the producer, the consumer core (`consumer/`), retry and dead-letter routing, the
delivery transports (`transports/`), the embedded broker, the admin client and librdkafka settings.

The public names are exported by `freedom` (and, in the seed's shape, by `freedom.infra.kafka`)."""
