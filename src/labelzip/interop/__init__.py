"""Other frameworks' soft-label stores in and out of labelzip archives.

``labelzip import`` / ``labelzip export``; formats in :mod:`.formats`, the
contract in :mod:`.base`, the streaming drivers in :mod:`.convert`.
"""
