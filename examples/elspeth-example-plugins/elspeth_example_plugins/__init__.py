"""An example elspeth_beam plugin package (see the README's "Writing a plugin")."""
