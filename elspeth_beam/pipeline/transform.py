"""Transform node: one plugin call per token, through the audited executor."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam

from elspeth_beam.config.settings import TransformSettings
from elspeth_beam.core.tokens import TokenInfo
from elspeth_beam.pipeline.audit import AuditedDoFn, NodeContext, out_tag, token_row_hash
from elspeth_beam.plugins import registry
from elspeth_beam.plugins.base import TransformPlugin


class TransformDoFn(AuditedDoFn):
    def __init__(self, ctx: NodeContext, settings: TransformSettings) -> None:
        super().__init__(ctx)
        self.settings = settings
        self.tag = out_tag(settings.on_success)

    def setup(self) -> None:
        self.plugin = registry.build(TransformPlugin, self.settings.plugin, self.settings.options)

    def process(self, token: TokenInfo) -> Iterator[Any]:
        step = self.execute(
            token_id=token.token_id,
            input_hash=token.row_hash,
            work=lambda: token.with_row(self.plugin.process(dict(token.row))),
            output_hash=token_row_hash,
        )
        if step.ok:
            yield beam.pvalue.TaggedOutput(self.tag, step.output)
        else:
            yield from self.divert(token, step.error)
        yield from self.audit_if_full()
