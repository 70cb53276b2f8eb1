"""Two import-linter contract types the stock ones cannot express (wired up in ``.importlinter``).

- ``standard_library_only``: the modules import nothing but the standard library and their own package
  (``pefthub.protocol``, the contract every part shares).
- ``allowed_from``: from ``package`` the modules import only the ``allowed`` parts (the server takes only
  ``pefthub.protocol`` from the SDK distribution; the workers take the protocol and the client).
"""

from __future__ import annotations

import sys

from grimp import ImportGraph
from importlinter import Contract, ContractCheck, fields, output


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _modules(graph: ImportGraph, packages) -> list[str]:
    names = set()
    for package in packages:
        names |= {package.name, *graph.find_descendants(package.name)}
    return sorted(names)


def _violations(graph: ImportGraph, importers: list[str], is_allowed) -> list[dict]:
    found = []
    for importer in importers:
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if is_allowed(imported):
                continue
            for detail in graph.get_import_details(importer=importer, imported=imported) or [{}]:
                found.append({"importer": importer, "imported": imported, "line": detail.get("line_number"),
                              "code": detail.get("line_contents", "")})
    return found


def _render(check: ContractCheck, what: str) -> None:
    for v in check.metadata["violations"]:
        output.print_error(f"{v['importer']}:{v['line']} imports {v['imported']}, {what}: {v['code']}")
        output.new_line()


class StandardLibraryOnlyContract(Contract):
    type_name = "standard_library_only"

    source_modules = fields.SetField(subfield=fields.ModuleField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        sources = [m.name for m in self.source_modules]

        def allowed(imported: str) -> bool:
            return imported.split(".")[0] in sys.stdlib_module_names or any(_within(imported, s) for s in sources)

        violations = _violations(graph, _modules(graph, self.source_modules), allowed)
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        _render(check, "which is neither the standard library nor this package")


class AllowedFromContract(Contract):
    type_name = "allowed_from"

    source_modules = fields.SetField(subfield=fields.ModuleField())
    package = fields.ModuleField()
    allowed = fields.SetField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        package = self.package.name
        allowed_parts = set(self.allowed)

        def allowed(imported: str) -> bool:
            if not _within(imported, package):
                return True
            # The package itself, when allowed, is its __init__ alone (``from pefthub import Hub``), not all below it.
            return any(imported == part if part == package else _within(imported, part) for part in allowed_parts)

        violations = _violations(graph, _modules(graph, self.source_modules), allowed)
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        _render(check, f"a part of {self.package.name} these modules may not use (allowed: {', '.join(sorted(self.allowed))})")
