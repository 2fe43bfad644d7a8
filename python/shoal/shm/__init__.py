"""Shared memory for users: the arena and SharedArray, process-shared locks,
semaphores, events, barriers, conditions, and the shared-memory Queue."""
