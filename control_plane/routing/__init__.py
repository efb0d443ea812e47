"""Routing: request attributes -> evaluation context -> decision -> backend."""
