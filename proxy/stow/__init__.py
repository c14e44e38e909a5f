"""STOW-RS through the proxy (SPEC section 5).

``spool`` (client body -> files + instance identities) -> ``batch`` (grouping and body
encoding) -> ``send`` (retries, 413 splitting) -> ``dead_letter``; ``service`` runs the
steps for one request, ``http`` is the aiohttp glue.
"""
