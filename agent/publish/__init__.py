"""Getting records from the outbox to the platform's broker."""
