"""HTTP (REST) carriers.

- ``settings``   ``HttpSettings``: one ``[[carriers.http]]`` table of the config (pure msgspec)
- ``profiles``   one small module per carrier API: pure request building and answer parsing
- ``wire``       a minimal HTTP/1.1 server on anyio (the simulator's, and test receivers')
- ``connector``  the anyio + httpx shell for one carrier (``HttpConnector``)
- ``simulator``  a REST carrier (``sluice sim http``)

Nothing is imported here, so importing a profile never pulls in an event loop or httpx.
"""
