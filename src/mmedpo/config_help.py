"""A config as YAML with the help of every setting, and its default where the value differs.

This is what `mmedpo config` prints. The help is each pydantic field's `description`, so it
cannot drift from the code; the text loads back to the same config, so it is also the way
to start a config of one's own: `mmedpo config > my.yaml`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

WIDTH = 110
HEADER = "# Every setting with its help; [default: ...] where the value is not the default.\n"


def annotated_yaml(config: BaseModel) -> str:
    """`config` as YAML; each setting preceded by its help as a comment, sections nested."""
    return HEADER + "".join(_setting_lines(config, indent=0))


def _setting_lines(model: BaseModel, indent: int) -> Iterator[str]:
    values = model.model_dump(mode="json")
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _comment(field.description or _own_doc(type(value)), indent)
            yield " " * indent + f"{name}:\n"
            yield from _setting_lines(value, indent + 2)
            continue
        help_text = field.description or ""
        if field.is_required():
            help_text += " [required]"
        elif (default := _default(field)) != values[name]:
            help_text += f" [default: {_flow(default)}]"
        yield from _comment(help_text, indent)
        yield textwrap.indent(_setting(name, values[name]), " " * indent)


def _setting(name: str, value: Any) -> str:
    """`name: value`, on one line unless the value is a mapping of collections (variants: a line per variant)."""
    if isinstance(value, dict) and any(isinstance(item, dict | list) for item in value.values()):
        return yaml.safe_dump({name: value}, default_flow_style=None, sort_keys=False, width=2**16)
    return f"{name}: {_flow(value)}\n"


def _default(field: FieldInfo) -> Any:
    """The field's default in JSON form, as `model_dump(mode="json")` writes values."""
    return TypeAdapter(field.annotation).dump_python(field.get_default(call_default_factory=True), mode="json")


def _own_doc(cls: type) -> str:
    """The first line of a class's own docstring (not one inherited from pydantic's BaseModel)."""
    doc = cls.__dict__.get("__doc__") or ""
    return doc.strip().split("\n")[0]


def _comment(text: str, indent: int) -> Iterator[str]:
    for line in textwrap.wrap(text.strip(), WIDTH - indent - 2, break_on_hyphens=False):
        yield " " * indent + f"# {line}\n"


def _flow(value: Any) -> str:
    """A value on one line, as YAML writes it in flow style."""
    return yaml.safe_dump(value, default_flow_style=True, width=2**16).removesuffix("...\n").strip()
