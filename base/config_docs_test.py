"""docs/config.md against the config model, so the two cannot drift.

Each section of the config has a table in the docs whose header's first cell
names it (`| \\`model\\` field | meaning | default |`, or `top-level field`);
its rows name the section's fields, `eval.min_auc` a field of a nested
section, `a` / `b` several fields at once. Every field of the model must have
a row, every row a field, and the default column the model's default:
`required`, `defaults` for a nested section, or a YAML value with an optional
remark in parentheses. The YAML examples must be valid configs.
"""
import os
import re
import typing

import pydantic
import yaml

from mtrank.base import config as config_lib

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "config.md")

_SECTION_HEADER = re.compile(r"^\|\s*(?:`([^`]+)`|top-level) field\s*\|")


def _doc() -> str:
    with open(DOC) as f:
        return f.read()


def _nested_section(section: type, field: str) -> typing.Optional[type]:
    """The model a field of `section` holds (directly or in a list), if any."""
    def models_in(annotation):
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            yield annotation
        for arg in typing.get_args(annotation):
            yield from models_in(arg)

    return next(models_in(section.model_fields[field].annotation), None)


def _section_of(path: str) -> type:
    section = config_lib.Config
    for name in path.replace("[*]", "").split("."):
        section = _nested_section(section, name)
    return section


def _sections() -> typing.Dict[type, str]:
    """Every model reachable from Config, with the path the docs name it by."""
    found, todo = {}, [(config_lib.Config, "")]
    while todo:
        section, path = todo.pop()
        found[section] = path
        for field in section.model_fields:
            nested = _nested_section(section, field)
            if nested is not None:
                suffix = "[*]" if typing.get_origin(
                    section.model_fields[field].annotation) is list else ""
                todo.append((nested, f"{path}.{field}{suffix}".lstrip(".")))
    return found


def _tables(doc: str) -> typing.Iterator[typing.Tuple[str, typing.List[typing.List[str]]]]:
    """(section path, rows of cells) of each section table; "" for the top level."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        header = _SECTION_HEADER.match(line)
        if header is None:
            continue
        rows = []
        for row in lines[i + 2:]:
            if not row.startswith("|"):
                break
            # "\|" is a literal bar inside a cell.
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]
            rows.append(cells)
        yield header.group(1) or "", rows


def _documented_default(cell: str):
    """The default a cell gives: a YAML value, its remark in parentheses dropped."""
    return yaml.safe_load(re.sub(r"\s*\(.*\)$", "", cell).replace("`", ""))


def _problems(doc: str) -> typing.List[str]:
    """Where `doc` and the config model disagree."""
    problems, documented = [], set()
    for path, rows in _tables(doc):
        section = _section_of(path) if path else config_lib.Config
        for cells in rows:
            names = re.findall(r"`([^`]+)`", cells[0])
            defaults = ([cells[-1]] * len(names) if len(names) == 1 else
                        [d.strip() for d in re.sub(r"\s*\(.*\)$", "", cells[-1]).split(" / ")])
            if len(defaults) != len(names):
                problems.append(f"{path}: row {names}: {len(defaults)} defaults for "
                                f"{len(names)} fields")
                continue
            for name, cell in zip(names, defaults):
                *parents, field = name.split(".")
                owner = section
                for parent in parents:
                    documented.add((owner, parent))
                    owner = _nested_section(owner, parent) if (
                        parent in owner.model_fields) else None
                if owner is None or field not in owner.model_fields:
                    problems.append(f"{path}: documents `{name}`, which is not a field")
                    continue
                documented.add((owner, field))
                info = owner.model_fields[field]
                if cell == "required" or info.is_required():
                    if cell != "required" or not info.is_required():
                        problems.append(f"{path}: `{name}` is "
                                        f"{'' if info.is_required() else 'not '}required")
                elif cell.startswith("defaults"):
                    if _nested_section(owner, field) is None:
                        problems.append(f"{path}: `{name}` is not a section")
                elif _nested_section(owner, field) is None and (
                        _documented_default(cell) != info.default):
                    problems.append(f"{path}: `{name}` defaults to {info.default!r}, the docs "
                                    f"say {cell}")
    for section, path in _sections().items():
        for field in section.model_fields:
            if (section, field) not in documented:
                where = f"{path}.{field}" if path else field
                problems.append(f"`{where}` has no row in a table of its section")
    return problems


def test_docs_document_every_field_and_its_default():
    assert _problems(_doc()) == []


def test_the_check_finds_a_missing_field_an_unknown_one_and_a_wrong_default():
    doc = _doc()
    without_max_len = re.sub(r"\n\| `max_len` \|[^\n]*", "", doc)
    assert _problems(without_max_len) == [
        "`features[*].max_len` has no row in a table of its section"]
    renamed = doc.replace("| `max_len` |", "| `max_length` |")
    assert "features[*]: documents `max_length`, which is not a field" in _problems(renamed)
    wrong_default = doc.replace("| `batch_size` | examples per step, per replica | 256 |",
                                "| `batch_size` | examples per step, per replica | 128 |")
    assert _problems(wrong_default) == [
        "training: `batch_size` defaults to 256, the docs say 128"]
    nested_wrong = doc.replace("| 0.5 / 0.02 |", "| 0.6 / 0.02 |")
    assert _problems(nested_wrong) == [
        "tasks[*]: `eval.min_auc` defaults to 0.5, the docs say 0.6"]


def test_every_section_has_a_table():
    paths = {path for path, _ in _tables(_doc())}
    for section, path in _sections().items():
        # A nested section may be documented by dotted rows of its parent's table.
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        assert path in paths or (section is not config_lib.Config and parent in paths), path


def test_yaml_examples_are_valid_configs():
    """Complete examples load as they are; a section's example loads in
    place of that section of the first, complete one."""
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", _doc(), re.S)]
    base = blocks[0]
    assert "model_name" in base
    for block in blocks:
        raw = block if "model_name" in block else {**base, **block}
        config_lib.config_from_dict(raw)
    assert len(blocks) >= 6


def test_docs_say_how_to_get_the_schema_into_an_editor():
    doc = _doc()
    assert "mtrank config-schema" in doc
    assert "# yaml-language-server: $schema=" in doc
