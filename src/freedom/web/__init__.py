"""The web layer (internal): the `Application`, the `Initiator` and controllers, routing, the request
`Runtime`, the delivery guard and the AsyncAPI document. Import the public names from `freedom`."""
