"""STOW-RS through the proxy (SPEC section 5).

``spool`` (client body -> files + instance identities) -> ``batch`` (grouping and body
encoding) -> ``send`` (retries, 413 splitting) -> ``dead_letter``; ``service`` runs the
steps for one request, ``http`` is the aiohttp glue.  ``spool`` writes the request's one
file on a thread of its own and identifies with ``identify``; ``parts`` holds what they
produce (``Kind``, ``SpooledPart``, ``Instance``, ``Spooled``), which every later step
reads.
"""
