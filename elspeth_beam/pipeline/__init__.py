"""Beam nodes, in data-path order: source → transform → gate → aggregation → sink, each
emitting tokens on its outputs and audit events on the ``audit`` tag, all flattened into
``WriteLandscape``. ``builder`` wires them from the settings graph."""
