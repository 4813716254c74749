"""Built-in row transforms: field mapping, schema coercion, computed fields."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, WithJsonSchema, field_validator, model_validator

from elspeth_beam.core.errors import RowError
from elspeth_beam.plugins.base import PluginOptions, TransformPlugin
from elspeth_beam.plugins.coercion import check_type_name, coerce_row
from elspeth_beam.plugins.expressions import Expression


class FieldMapperOptions(PluginOptions):
    rename: dict[str, str] = Field(default={}, description="old name → new name")
    select: list[str] | None = Field(default=None, description="keep only these fields, in this order")
    drop: list[str] = Field(default=[], description="fields to remove")
    strict: bool = Field(default=True, description="a renamed or selected field missing from the row is an error")

    @model_validator(mode="after")
    def _something_to_do(self) -> "FieldMapperOptions":
        if not (self.rename or self.select is not None or self.drop):
            raise ValueError("give at least one of rename, select, drop")
        return self


class FieldMapper(TransformPlugin):
    """Rename, then select (keep only these, in this order), then drop fields."""

    name = "field_mapper"
    Options = FieldMapperOptions
    options: FieldMapperOptions

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        opts = self.options
        missing = [f for f in opts.rename if f not in row] if opts.strict else []
        if missing:
            raise RowError.about(lambda: f"cannot rename missing field(s) {missing}")
        out = {opts.rename.get(k, k): v for k, v in row.items()}
        if opts.select is not None:
            absent = [f for f in opts.select if f not in out]
            if absent and opts.strict:
                raise RowError.about(lambda: f"cannot select missing field(s) {absent}")
            out = {f: out.get(f) for f in opts.select}
        for field in opts.drop:
            out.pop(field, None)
        return out


class CoerceOptions(PluginOptions):
    fields: dict[str, str] = Field(description="field → type (str, int, float, bool, date, datetime; `?` = nullable)")

    @field_validator("fields")
    @classmethod
    def _types_known(cls, fields: dict[str, str]) -> dict[str, str]:
        for type_name in fields.values():
            check_type_name(type_name)
        return fields


class Coerce(TransformPlugin):
    """Coerce fields to declared types (str, int, float, bool, date, datetime; ``?`` = nullable)."""

    name = "coerce"
    Options = CoerceOptions
    options: CoerceOptions

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        return coerce_row(row, self.options.fields)


class ComputedOptions(PluginOptions):
    fields: Annotated[dict[str, Expression], WithJsonSchema({  # as written in YAML: expressions as text
        "type": "object", "minProperties": 1, "additionalProperties": {"type": ["string", "number", "boolean"]}})] = Field(
        description="new field → expression over `row` (evaluated in order)")

    model_config = PluginOptions.model_config | {"arbitrary_types_allowed": True}

    @field_validator("fields", mode="before")
    @classmethod
    def _parse(cls, fields: Any) -> Any:
        if not isinstance(fields, dict) or not fields:
            raise ValueError("give a mapping of new field name to expression")
        return {name: Expression(str(expr)) for name, expr in fields.items()}


class Computed(TransformPlugin):
    """Add fields computed by safe expressions over the row (evaluated in order)."""

    name = "computed"
    Options = ComputedOptions
    options: ComputedOptions

    def process(self, row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        for field, expr in self.options.fields.items():
            out[field] = expr.evaluate(out)
        return out
