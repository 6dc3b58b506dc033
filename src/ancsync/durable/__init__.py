"""The durable outbox: what must survive a crash, a power cut or a restart."""
