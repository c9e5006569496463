"""Command-line interface: ``ditsam <command> ...``."""
