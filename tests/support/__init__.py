"""Shared test helpers that are not fixtures: start and stop private stores, spawn processes."""
