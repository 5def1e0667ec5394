"""DVC pipeline stages; each runs as `python -m stages.<name>`."""
