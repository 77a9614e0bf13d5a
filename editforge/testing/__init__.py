"""Offline fixtures for tests, benchmarks and the demo: tiny random models and fake Hub caches."""
