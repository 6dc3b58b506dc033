"""The durable outbox: what must survive a crash, a power cut or a restart.

:mod:`ancsync.durable.store` is the SQLite file; :mod:`ancsync.durable.stream` sends through it.
"""
