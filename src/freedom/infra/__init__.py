"""Infrastructure components a service installs: Kafka today, others by the same shape."""
