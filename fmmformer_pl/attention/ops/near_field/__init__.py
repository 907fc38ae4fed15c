"""See ``ops/__init__.py`` and ``docs/kernels.md``."""
