"""Base model for the API: camelCase names, unknown fields refused, and cross-field rules declared once.

A `Rule` carries the CEL expression the API server evaluates and the Python predicate the operator
evaluates, so `avr-operator render` and the cluster reject the same specs with the same message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, Self

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema


class Rule(NamedTuple):
    """A cross-field rule: `cel` for the API server's `x-kubernetes-validations`, `holds` for Python.

    `field` names the offending field (relative to the model, e.g. "timeoutSeconds"): the API server then reports
    the error at that field's path (`fieldPath`), and Python prefixes the message with it, so both name the field
    to change rather than only the object holding it.
    """

    cel: str
    message: str
    holds: Callable[[Any], bool]
    field: str | None = None


def _validation(rule: Rule) -> dict[str, str]:
    out = {"rule": rule.cel, "message": rule.message}
    if rule.field:
        out["fieldPath"] = f".{rule.field}"
    return out


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=False,
    )
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in type(self).rules:
            if not rule.holds(self):
                raise ValueError(f"{rule.field}: {rule.message}" if rule.field else rule.message)
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        if cls.rules:
            target["x-kubernetes-validations"] = [_validation(r) for r in cls.rules]
        return schema

    def dump(self) -> dict[str, Any]:
        """The Kubernetes (camelCase) form, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
