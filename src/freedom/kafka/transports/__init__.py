"""How the consumer proxy's deliveries reach the service: over HTTP (`http.py`) or by calling the
ASGI application in the same process (`asgi.py`). `delivery.make_transport` picks one from
`proxy_addr`; both implement `delivery.Transport`."""
