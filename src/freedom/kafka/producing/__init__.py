"""Publishing to Kafka, one noun per module (docs/architecture.md, "Publishing").

- client.py: `ProducerClient`, the one adapter that owns a librdkafka producer (its construction,
  poll thread, hand-over of delivery reports to the event loop, close and flush). The service's
  producer, the consumer proxy's retry router and, through the producer, the outbox relay use it.
- delivery.py: a `Msg` through a client: queueing it, and what its delivery report means
  (`Delivered`, or the `PublishError` its waiter gets).
- msg.py: `Msg`, the message the user builds, and `new_key`.
- batch.py: `PendingBatch` and `BatchResult`, the outcomes of `publish_batch`.
- send_observer.py: an awaited publish's duration metric and `send` span.
- producer.py: `Producer`, the publishing side injected into controllers.

`freedom.kafka.producer` re-exports the public names from their old home. This package imports
nothing on its own, so the consumer side can import the adapter alone.
"""
