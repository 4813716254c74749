"""The audit write path: column buffers, segments, the loader into the Landscape, the digest."""
