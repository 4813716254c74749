"""Beam nodes, in data-path order: source → transform → gate → aggregation → sink, each
emitting tokens on its outputs and audit segments on the ``audit`` tag, each into the audit sink
(``audit_sink.WriteAudit``). ``builder`` wires them from the settings graph."""
