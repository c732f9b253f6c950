"""Config files (extract configs, the curation config, training recipes) read one way: UTF-8, YAML with no
key given twice, and every problem one line naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import SignfeatError


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a mapping that gives a key twice is an error: safe_load keeps the last one, so
    `tiny: true` ... `tiny: false` quietly loaded a full pretrained model, and a second `optim:` section
    replaced the first."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice (line {seen[key].start_mark.line + 1} and line {key_node.start_mark.line + 1})",
                        key_node.start_mark)
                seen[key] = key_node
            except TypeError:  # an unhashable key: let PyYAML say so
                break
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path, what: str) -> Any:
    """The YAML document in ``path``; ``what`` names the file in errors ("extraction config", "recipe")."""
    path = Path(path)
    if not path.is_file():
        raise SignfeatError(f"{what} {path}: no such file" if not path.exists() else f"{what} {path}: a folder, not a file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise SignfeatError(f"{what} {path}: not a UTF-8 text file (a YAML config was expected; was another file given?)") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise SignfeatError(f"{what} {path}: not valid YAML: {' '.join(str(exc).split())}") from None
