"""Measurements above the library: scripts that print a table and write a file."""
