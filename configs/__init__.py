"""Packaged configuration files (``default.yaml``)."""
