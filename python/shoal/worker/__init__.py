"""The worker process: bootstrap of a fresh interpreter or fork-server child,
the task loop, and stdio forwarding."""
