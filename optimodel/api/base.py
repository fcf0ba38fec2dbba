"""Shared base class for every API model: camelCase on the wire, snake_case in Python.

Kubernetes resources are camelCase; Python code reads better in snake_case. One alias generator
keeps both honest, and ``extra="forbid"`` makes an unknown field an error in Python exactly as the
generated CRD (structural schema, no preserve-unknown-fields) prunes or refuses it on the server.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base for spec, status and report models."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """Serialize as the API server stores it: camelCase, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry (a CEL rule with a human message)."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class ObservedModel(ApiModel):
    """Base for what the operator and builder *read back* (status, reports): unknown fields are
    ignored, not refused, so a status written by a newer operator before a rollback, or a summary
    from a newer builder, still parses. Specs stay strict (``ApiModel``)."""

    model_config = ConfigDict(**{**ApiModel.model_config, "extra": "ignore"})
