"""YAML read into values that remember their line, for validation messages.

PyYAML's loaders forget where a value came from and silently keep the last of two
duplicate keys. Validation here needs both: every problem names its line, and a
duplicate alias is an error rather than a quiet override.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml


@dataclass(frozen=True, slots=True)
class Located:
    """A YAML value with its 1-based line (for a mapping entry, its key's line).

    Mappings hold ``dict[str, Located]``, sequences ``list[Located]``.
    """

    value: object
    line: int


class YamlProblem(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def read_located(text: str, problems: list[YamlProblem]) -> Located | None:
    """Parse one YAML document; structural problems are appended to ``problems``.

    A syntax error raises ``YamlProblem`` since nothing after it can be trusted.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise YamlProblem(line, f"YAML syntax error: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise YamlProblem(0, f"YAML error: {exc}") from None
    finally:
        loader.dispose()
    if node is None:
        return None
    try:
        return _convert(node, loader, problems)
    except yaml.MarkedYAMLError as exc:  # a bad merge key or tag
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise YamlProblem(line, f"YAML error: {exc.problem or exc}") from None


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _convert(node: yaml.Node, loader: yaml.SafeLoader, problems: list[YamlProblem]) -> Located:
    if isinstance(node, yaml.MappingNode):
        own = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
        loader.flatten_mapping(node)  # honours `<<: *defaults` merge keys
        # Merged pairs come first; a key written in the mapping itself overrides them,
        # so only a key written twice in the mapping itself is a duplicate.
        merged = len(node.value) - own
        out: dict[str, Located] = {}
        own_seen: set[str] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                problems.append(
                    YamlProblem(_line(key_node), f"key {key!r} must be a string (quote it)")
                )
                continue
            if index >= merged:
                if key in own_seen:
                    problems.append(
                        YamlProblem(
                            _line(key_node),
                            f"duplicate key {key!r} (first defined on line {out[key].line})",
                        )
                    )
                    continue
                own_seen.add(key)
            # An entry is reported at its key's line, which is where a reader looks.
            value = _convert(value_node, loader, problems)
            out[key] = Located(value.value, _line(key_node))
        return Located(out, _line(node))
    if isinstance(node, yaml.SequenceNode):
        return Located([_convert(item, loader, problems) for item in node.value], _line(node))
    return Located(loader.construct_object(node, deep=True), _line(node))
