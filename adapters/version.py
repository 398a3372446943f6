"""The tool's version: what every event records, `snapledger --version` prints and
`snapledger.__version__` is. Kept here rather than asked of the installed package's metadata,
which costs each process 10-15 ms of scanning sys.path (issue 13); tests/unit/test_packaging.py
holds it equal to pyproject.toml's. This module imports nothing."""

VERSION = "0.1.0"
