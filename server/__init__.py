"""HTTP layer of cupyserve: the OpenAI-compatible app and the `cupyserve` CLI.

Imports only `cupyserve.runtime` (never CuPy or kernels); see tests/unit/test_import_direction.py.
"""
