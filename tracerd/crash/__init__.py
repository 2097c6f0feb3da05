"""Crashes: the report format, its store and inventory, ELF and symbol facts, cores, release."""
