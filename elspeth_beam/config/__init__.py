"""Settings: YAML → validated, frozen pydantic models → a checked node graph."""
