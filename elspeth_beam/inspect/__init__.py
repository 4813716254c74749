"""Read-side tools over the Landscape: explain, verify, show, summary, export, report."""
