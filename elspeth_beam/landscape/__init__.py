"""The Landscape: the SQL database users query — its tables and its store."""
