"""Seed-compatible generator: strategies, grammar-constrained decoding, continuous batching, sharding."""
