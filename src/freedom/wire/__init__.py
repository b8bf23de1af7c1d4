"""The wire contract (internal): header names, how keys and headers travel over HTTP, payloads and
content types, the propagated context (the bus), handler outcomes and the batch envelope.

Lowest layer of the package: it imports nothing of freedom but `freedom.errors`. The contract it
implements is written in docs/contract.md."""
