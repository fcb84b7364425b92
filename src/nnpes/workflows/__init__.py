"""End-to-end workflows built from the library: ``quickstart``."""
