"""The Landscape: the SQL database users query — its tables and its store."""

DEFAULT_PATH = "runs/landscape.db"  # every command's Landscape unless told otherwise (-l, a run's settings)
