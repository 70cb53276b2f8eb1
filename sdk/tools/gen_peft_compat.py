"""Generate ``sdk/pefthub/protocol/peft_compat.json``: which adapter-config keys each peft release knows.

An ``adapter_config.json`` written by a newer peft carries keys an older peft's config
class does not accept (peft < 0.14 fails with ``TypeError: unexpected keyword
argument``). ``pefthub.protocol.peft_compat`` drops those keys; this script builds the table it
reads, from the peft wheels themselves::

    python sdk/tools/gen_peft_compat.py                 # every release in VERSIONS (pip download)
    python sdk/tools/gen_peft_compat.py --wheels DIR    # reuse wheels already in DIR

Each wheel is read with ``ast``, never imported: the dataclass fields of every
``*Config`` class in ``peft/tuners/**/config.py`` and of the base classes in
``peft/config.py``, inheritance resolved, keyed by the ``PeftType`` value the class's
``__post_init__`` assigns. Fields declared ``init=False`` are left out: the constructor
refuses them. The output holds:

- ``versions``: the releases read, oldest first;
- ``types``: per peft type, each field and the first release that has it;
- ``fields``: per peft type, the exact field list of every release (runs of releases
  with the same list share one entry), so a field that was removed shows too.

Add a release to ``VERSIONS`` and rerun when peft ships one.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

#: every peft release from 0.10 on; oldest first
VERSIONS = (
    "0.10.0", "0.11.0", "0.11.1", "0.12.0", "0.13.0", "0.13.1", "0.13.2", "0.14.0",
    "0.15.0", "0.15.1", "0.15.2", "0.16.0", "0.17.0", "0.17.1", "0.18.0", "0.18.1",
    "0.19.0", "0.19.1", "0.20.0", "0.21.0", "0.21.1", "0.21.2",
)
BASE_CLASSES = ("PeftConfigMixin", "PeftConfig", "PromptLearningConfig")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "pefthub" / "protocol" / "peft_compat.json"


# -- reading one wheel -------------------------------------------------------------------
class ClassInfo:
    def __init__(self, name: str, bases: list[str], fields: list[str], peft_type: str | None) -> None:
        self.name = name
        self.bases = bases
        self.fields = fields
        self.peft_type = peft_type


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _name(node.func)
    return None


def _is_dataclass(cls: ast.ClassDef) -> bool:
    return any(_name(d) == "dataclass" for d in cls.decorator_list)


def _is_classvar(annotation: ast.expr) -> bool:
    target = annotation.value if isinstance(annotation, ast.Subscript) else annotation
    return _name(target) == "ClassVar"


def _init_false(value: ast.expr | None) -> bool:
    """``field(..., init=False)``: serialized by ``asdict`` but refused by ``__init__``."""
    if not isinstance(value, ast.Call) or _name(value.func) != "field":
        return False
    return any(
        kw.arg == "init" and isinstance(kw.value, ast.Constant) and kw.value.value is False for kw in value.keywords
    )


def _assigned_peft_type(cls: ast.ClassDef) -> str | None:
    """The member ``X`` of ``self.peft_type = PeftType.X`` in the class's own methods."""
    for node in ast.walk(cls):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if (
                isinstance(target, ast.Attribute)
                and target.attr == "peft_type"
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
                and isinstance(node.value, ast.Attribute)
                and _name(node.value.value) == "PeftType"
            ):
                return node.value.attr
    return None


def parse_classes(source: str) -> list[ClassInfo]:
    out = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields: list[str] = []
        if _is_dataclass(node):
            for stmt in node.body:
                if (
                    isinstance(stmt, ast.AnnAssign)
                    and isinstance(stmt.target, ast.Name)
                    and not _is_classvar(stmt.annotation)
                    and not _init_false(stmt.value)
                ):
                    fields.append(stmt.target.id)
        bases = [b for b in (_name(base) for base in node.bases) if b]
        out.append(ClassInfo(node.name, bases, fields, _assigned_peft_type(node)))
    return out


def parse_peft_type_values(source: str) -> dict[str, str]:
    """``PeftType`` member name -> the string value written to ``adapter_config.json``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == "PeftType":
            values = {}
            for stmt in node.body:
                if (
                    isinstance(stmt, ast.Assign)
                    and len(stmt.targets) == 1
                    and isinstance(stmt.targets[0], ast.Name)
                    and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, str)
                ):
                    values[stmt.targets[0].id] = stmt.value.value
            return values
    raise ValueError("no PeftType enum found")


def read_wheel(wheel: Path) -> dict[str, list[str]]:
    """peft type value -> the keyword fields its config class accepts, for one wheel."""
    candidates: list[ClassInfo] = []  # classes that may name a peft type
    classes: dict[str, list[ClassInfo]] = {}  # every class of the package, as a possible base
    enum_values: dict[str, str] | None = None
    with zipfile.ZipFile(wheel) as zf:
        for member in sorted(zf.namelist()):
            path = PurePosixPath(member)
            if path.parts[0] != "peft" or path.suffix != ".py":
                continue
            text = zf.read(member).decode("utf-8")
            if "class PeftType(" in text:
                enum_values = parse_peft_type_values(text)
            is_tuner_config = path.parts[:2] == ("peft", "tuners") and path.name == "config.py"
            for info in parse_classes(text):
                if member == "peft/config.py" and info.name not in BASE_CLASSES:
                    continue
                classes.setdefault(info.name, []).append(info)
                if is_tuner_config and info.name.endswith("Config"):
                    candidates.append(info)
    if enum_values is None:
        raise ValueError(f"{wheel.name}: PeftType not found")

    def resolve(name: str) -> ClassInfo | None:
        found = classes.get(name) or []
        if len({tuple(c.fields) for c in found}) > 1:
            raise ValueError(f"{wheel.name}: several different classes named {name}")
        return found[0] if found else None

    def fields_of(info: ClassInfo, seen: tuple[str, ...] = ()) -> list[str]:
        if info.name in seen:
            raise ValueError(f"{wheel.name}: inheritance cycle through {info.name}")
        out: list[str] = []
        # dataclass order: the most basic class's fields first
        for base_name in reversed(info.bases):
            base = resolve(base_name)
            if base is not None:
                out += [f for f in fields_of(base, (*seen, info.name)) if f not in out]
        return out + [f for f in info.fields if f not in out]

    types: dict[str, list[str]] = {}
    owners: dict[str, str] = {}
    for info in candidates:
        if info.peft_type is None:
            continue
        value = enum_values.get(info.peft_type, info.peft_type)
        if value in owners:
            raise ValueError(f"{wheel.name}: {owners[value]} and {info.name} both set peft_type {value}")
        owners[value] = info.name
        types[value] = sorted(fields_of(info))
    return types


# -- the table -------------------------------------------------------------------------------
def build_table(per_version: dict[str, dict[str, list[str]]]) -> dict[str, object]:
    versions = list(per_version)
    first: dict[str, dict[str, str]] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    previous: str | None = None
    for version in versions:
        for peft_type, fields in sorted(per_version[version].items()):
            for f in fields:
                first.setdefault(peft_type, {}).setdefault(f, version)
            type_runs = runs.setdefault(peft_type, [])
            last = type_runs[-1] if type_runs else None
            # one entry per run of consecutive releases with the same field list
            if last is not None and last["fields"] == fields and last["versions"][-1] == previous:
                last["versions"].append(version)
            else:
                type_runs.append({"versions": [version], "fields": fields})
        previous = version
    return {
        "generated_by": "sdk/tools/gen_peft_compat.py",
        "versions": versions,
        "types": {t: dict(sorted(f.items())) for t, f in sorted(first.items())},
        "fields": dict(sorted(runs.items())),
    }


def download(version: str, dest: Path) -> Path:
    found = sorted(dest.glob(f"peft-{version}-*.whl"))
    if found:
        return found[0]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         f"peft=={version}", "-d", str(dest)],
        check=True,
    )
    found = sorted(dest.glob(f"peft-{version}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download left no wheel for peft {version} in {dest}")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", nargs="+", default=list(VERSIONS), help="peft releases, oldest first")
    parser.add_argument("--wheels", type=Path, help="folder holding (or to receive) the wheels; default: a temp dir")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="peft-wheels-") as tmp:
        wheels = args.wheels or Path(tmp)
        wheels.mkdir(parents=True, exist_ok=True)
        per_version = {}
        for version in args.versions:
            per_version[version] = read_wheel(download(version, wheels))
            print(f"peft {version}: {len(per_version[version])} config types", file=sys.stderr)
    table = build_table(per_version)
    args.out.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
