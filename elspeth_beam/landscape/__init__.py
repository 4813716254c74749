"""The Landscape: the SQL audit trail, its writer, and the tools that read it."""
