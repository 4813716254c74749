"""Plugins: the pluggable work inside each node (sources, transforms, batch plugins, sinks)."""
