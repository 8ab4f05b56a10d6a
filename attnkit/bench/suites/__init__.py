"""Benchmark suites: each module here exposes ``SUITE`` (an ``attnkit.bench.registry.Suite``).

Modules are discovered by ``attnkit.bench.registry``; a new suite is a new file here.
"""
