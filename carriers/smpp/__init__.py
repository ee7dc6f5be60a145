"""SMPP 3.4 carrier.

- ``pdu``        the codec: typed PDU structs, ``encode``/``decode_stream`` (sans-I/O)
- ``session``    one session as ESME or SMSC: a state table, bytes in -> events out (sans-I/O)
- ``receipts``   reading deliver_sm: delivery receipts (TLVs or text) and MO reassembly
- ``connector``  the anyio shell for one carrier: binds, windows, reconnects (``SmppConnector``)
- ``simulator``  an SMSC on the same session class (``sluice sim smsc``)

Nothing is imported here, so importing the sans-I/O modules never pulls in an event loop.
"""
