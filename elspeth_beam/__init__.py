"""elspeth_beam: auditable dataflow pipelines on Apache Beam.

The data path: ``config`` (YAML settings) → ``pipeline`` (Beam nodes that emit tokens and
audit events) → ``landscape`` (the SQL audit trail, and the tools that read it).
"""

__version__ = "0.1.0"
