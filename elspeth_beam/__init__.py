"""elspeth_beam: auditable dataflow pipelines on Apache Beam.

The data path: ``config`` (YAML settings) → ``pipeline`` (Beam nodes that emit tokens and
audit events) → ``landscape`` (the SQL audit trail, and the tools that read it).
"""

from importlib.metadata import PackageNotFoundError, version

try:  # setup.py declares the version; the installed package's metadata carries it here
    __version__ = version("elspeth_beam")
except PackageNotFoundError:  # a checkout on PYTHONPATH that was never installed
    __version__ = "0+unknown"
