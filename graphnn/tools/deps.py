"""The import rules between graphnn's packages, checked: `python -m graphnn.tools.deps`.

Imports run one way, visualize -> graphnn -> kernels:
- `kernels` (code generators, kernel cache) imports nothing from graphnn or visualize;
- the library (`graphnn`, but for the tools in graphnn/tools/ and the `python -m graphnn`
  entry point) imports nothing from visualize, at module level or inside a function.

Every `import` and `from ... import` statement of every module is read with `ast`
(relative imports resolved against the module's package), so a lazy import inside a
function breaks the rule as much as one at the top. Exits 1 and lists each offending
import as file:line when a rule is broken.
"""
import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (package whose modules are checked, paths inside it that are exempt, forbidden packages)
RULES = [
    ("kernels", (), ("graphnn", "visualize")),
    ("graphnn", ("graphnn/tools/", "graphnn/__main__.py"), ("visualize",)),
]


def modules(package, root=ROOT):
    """(path relative to root, dotted module name) of every .py file in `package`."""
    for folder, dirs, files in os.walk(os.path.join(root, package)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
                dotted = path[:-3].replace("/", ".")
                yield path, dotted[:-len(".__init__")] if name == "__init__.py" else dotted


def imported_modules(source, module):
    """(line, absolute module name) for every import statement in `source`, whose own
    dotted name is `module` (used to resolve relative imports)."""
    package = module.split(".")  # (a package's __init__ is named pkg.__init__ here)
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.append((node.lineno, name))
            # `from pkg import sub` may import the module pkg.sub
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def violations(root=ROOT):
    """Every broken rule, as 'path:line: module imports forbidden (rule)' strings."""
    out = []
    for package, exempt, forbidden in RULES:
        for path, dotted in modules(package, root):
            if any(path.startswith(e) or path == e for e in exempt):
                continue
            with open(os.path.join(root, path), encoding="utf-8") as fh:
                source = fh.read()
            # a package's __init__ resolves relative imports against itself
            name = dotted + ".__init__" if path.endswith("__init__.py") else dotted
            for line, target in imported_modules(source, name):
                top = target.split(".")[0]
                if top in forbidden:
                    out.append(f"{path}:{line}: imports {target} ({package} must not import "
                               f"{' or '.join(forbidden)})")
    return out


def main():
    broken = violations()
    for line in broken:
        print(line)
    if broken:
        print(f"{len(broken)} import(s) break the rule visualize -> graphnn -> kernels")
        return 1
    print("imports run one way: visualize -> graphnn -> kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
