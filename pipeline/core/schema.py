"""One typed schema for every config: the frozen config dataclasses, validated by pydantic.

A config reaches the code as JSON data (a config file, a run's saved config, the CLI's arguments, the
studio's form) and :func:`parse` checks it against its dataclass before anything runs: in strict mode
(no ``"3"`` for 3, no 2.7 or ``true`` for an integer, a list where a tuple is meant, an object where a
config is meant), with no NaN or infinity, no unknown field, and the dataclass's own ``__post_init__``
rules (ranges, names, the generator's and the methods' options) applied as part of the validation. A
failure is one line, :class:`ConfigError`, naming the field by its dotted path, the value and what is
allowed.

Why stdlib dataclasses validated with ``TypeAdapter`` rather than pydantic models or pydantic
dataclasses: the configs stay plain frozen dataclasses that the library builds with ``replace``,
pickles into worker processes and compares, and they are checked where data enters (here), not on
every construction inside the library, where strict mode would refuse what code rightly builds (a
numpy integer, a list for a tuple). Data is validated as JSON text, the form every config is saved
in: JSON mode is where strict pydantic reads arrays as tuples.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, TypeAdapter, ValidationError, with_config

from .jsonable import to_jsonable

SCHEMA = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
schema = with_config(SCHEMA)  # the decorator every config dataclass carries (nested ones inherit it)


def _options_object(value: Any) -> Any:
    """Backend options as a JSON object; the list of ``[name, value]`` pairs that configs saved before
    the schema hold is read as one (anything else is left for the schema to refuse)."""
    if isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in value):
        return dict(value)
    return value


# a generator backend's config fields by name; checked against the backend's own config dataclass
Options = Annotated[dict[str, Any], BeforeValidator(_options_object)]


class ConfigError(ValueError):
    """A config that does not fit its schema: one line with the field's dotted path, the value and
    what is allowed."""

    def __init__(self, path: str, detail: str, source: str = "") -> None:
        self.path, self.detail, self.source = path, detail, source
        line = f"{path}{'' if detail.startswith(':') else ' '}{detail}" if path else detail.lstrip(": ")
        super().__init__(f"{source}: {line}" if source else line)

    def under(self, prefix: str) -> ConfigError:
        """The same error for a field inside ``prefix`` (the path of the config it belongs to)."""
        return ConfigError(_join(prefix, self.path), self.detail, self.source)


def parse(cls: type, data: Any, path: str = "", source: str = "") -> Any:
    """``data`` (JSON-able: a dict, or a config built in code) as a ``cls``, checked against its schema.

    ``path``: where this config sits in a larger one (e.g. ``generator_options``), prefixed to the
    fields an error names; ``source``: what the data is (a file, a run), prefixed to the message.
    """
    text = json.dumps(to_jsonable(data))  # NaN and infinity are written as such and refused by the schema
    try:
        return _adapter(cls).validate_json(text)
    except ValidationError as err:
        errors = err.errors()
        first = _error(cls, errors[0], path)
        more = [_join(path, _dotted(e["loc"])) for e in errors[1:]]
        detail = first.detail + (f" (and {len(more)} more: {', '.join(more[:4])})" if more else "")
        raise ConfigError(first.path, detail, source) from None


def checked(config: Any, path: str = "", source: str = "") -> Any:
    """A config built in code (from CLI arguments, a form) checked as if it had been read from JSON."""
    return parse(type(config), config, path, source)


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


# -- one line per error ----------------------------------------------------------------------------------
_ALLOWED = {  # pydantic's error type -> what the field takes
    "int_type": "an integer", "float_type": "a number", "finite_number": "a finite number",
    "string_type": "text", "bool_type": "true or false", "tuple_type": "a list", "list_type": "a list",
    "dict_type": "an object", "literal_error": "one of {expected}", "none_required": "null",
}


def _error(cls: type, error: dict[str, Any], path: str) -> ConfigError:
    loc, kind, value = error["loc"], error["type"], error.get("input")
    where = _join(path, _dotted(loc))
    if kind == "value_error":  # a rule of the dataclass's __post_init__
        cause = error["ctx"]["error"]
        if isinstance(cause, ConfigError):  # a nested config's own error (generator or method options)
            return cause.under(where)
        message = str(cause)
        field, _, rest = message.partition(" ")  # "epochs must be at least 1, got 0": the rule names its field
        if rest and field in _fields(_config_at(cls, loc)):
            return ConfigError(_join(where, field), rest)
        return ConfigError(where, f": {message}" if where else message)
    if kind == "unexpected_keyword_argument":
        parent = _config_at(cls, loc[:-1])
        return ConfigError(where, f"is not a field of {getattr(parent, '__name__', 'this config')}; valid: "
                                  f"{', '.join(sorted(_fields(parent)))}")
    if kind in ("missing", "missing_argument"):
        return ConfigError(where, "is required")
    if kind == "dataclass_type":
        return ConfigError(where, f"must be an object of {error['ctx']['class_name']} fields, got {_show(value)}")
    allowed = _ALLOWED.get(kind)
    if allowed is None:
        return ConfigError(where, f"is not valid ({error['msg']}), got {_show(value)}")
    return ConfigError(where, f"must be {allowed.format(**error.get('ctx', {}))}, got {_show(value)}")


def _config_at(cls: type | None, loc: tuple[Any, ...]) -> type | None:
    """The config dataclass at ``loc`` inside ``cls`` (None where there is none)."""
    for key in loc:
        if not dataclasses.is_dataclass(cls) or not isinstance(key, str):
            return None
        hint = typing.get_type_hints(cls).get(key)
        cls = next((a for a in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(a)), None)
    return cls


def _fields(cls: type | None) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(k) for k in loc)


def _join(prefix: str, path: str) -> str:
    return ".".join(p for p in (prefix, path) if p)


def _show(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."
