"""Activation: destinations (plugins), the transactional outbox the processor fills,
delivery with retries, pause and dead letters, replay, file exports and pull access."""
