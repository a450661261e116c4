"""Executors run rendered commands; run records keep their state on disk."""
