"""Gate node: evaluate a safe condition, then continue, route to a sink, or fork.

Each decision is a node_state plus one routing event per destination. A fork ends the parent
token (outcome ``forked``) and mints one child token per destination with a parent link.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam

from elspeth_beam.config.settings import GateSettings
from elspeth_beam.core import ids
from elspeth_beam.core.canonical import stable_hash
from elspeth_beam.core.enums import Outcome
from elspeth_beam.core.errors import RowError
from elspeth_beam.auditlog.records import RoutingRecord, positional
from elspeth_beam.core.tokens import TokenInfo
from elspeth_beam.pipeline.audit import AuditedDoFn, NodeContext, out_tag
from elspeth_beam.plugins.expressions import Expression


_ROUTING = positional(RoutingRecord, "routing_id run_id state_id route_label destination mode reason_hash")


def route_label(value: Any) -> str:
    """Booleans route as 'true'/'false' (YAML keys); other values by their string form."""
    return str(value).lower() if isinstance(value, bool) else str(value)


class GateDoFn(AuditedDoFn):
    def __init__(self, ctx: NodeContext, settings: GateSettings) -> None:
        super().__init__(ctx)
        self.settings = settings
        self.routes = {label: [d] if isinstance(d, str) else list(d) for label, d in settings.routes.items()}

    def setup(self) -> None:
        self.condition = Expression(self.settings.condition)
        # one reason and one decision per route, hashed once here rather than once per token
        self.reason_hashes = {
            label: stable_hash({"condition": self.settings.condition, "value": label}) for label in self.routes
        }
        self.decision_hashes = {label: stable_hash(self._decision(label)) for label in self.routes}

    def _decision(self, label: str) -> dict[str, Any]:
        return {"route": label, "destinations": self.routes[label]}

    def _decide(self, token: TokenInfo) -> dict[str, Any]:
        value = self.condition.evaluate(token.row)
        label = route_label(value)
        if label not in self.routes:
            raise RowError.about(lambda v: f"condition {self.settings.condition!r} gave {v}, which has no route "
                                           f"(routes: {', '.join(self.routes)})", label)
        return self._decision(label)

    def process(self, token: TokenInfo) -> Iterator[Any]:
        step = self.execute(token_id=token.token_id, input_hash=token.row_hash, work=lambda: self._decide(token),
                            output_hash=lambda decision: self.decision_hashes[decision["route"]])
        if not step.ok:
            yield from self.divert(token, step.error)
            return
        decision = step.output
        destinations: list[str] = decision["destinations"]
        reason_hash = self.reason_hashes[decision["route"]]
        mode = "move" if len(destinations) == 1 else "copy"
        for dest in destinations:
            self.record(_ROUTING((ids.routing_id(step.state_id, dest), token.run_id, step.state_id, decision["route"],
                                  dest, mode, reason_hash)))
        if mode == "move":
            yield beam.pvalue.TaggedOutput(out_tag(destinations[0]), token)
        else:
            self.record_outcome(token, Outcome.FORKED)
            for ordinal, dest in enumerate(destinations):
                child = token.child(token_id=ids.token_id([token.token_id], self.ctx.node_id, ordinal), branch=dest)
                self.record_token(child)
                yield beam.pvalue.TaggedOutput(out_tag(dest), child)
        yield from self.audit_if_full()
