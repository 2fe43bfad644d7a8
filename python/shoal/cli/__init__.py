"""``python -m shoal``: the command-line entry points (the live demo)."""
