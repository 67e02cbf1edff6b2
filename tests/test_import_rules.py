"""The import rules between packages (graphnn.tools.deps): visualize -> graphnn -> kernels."""
import subprocess
import sys

from graphnn.tools import deps


def test_the_packages_import_one_way():
    assert deps.violations() == []


def test_a_lazy_import_of_visualize_in_the_library_breaks_the_rule(tmp_path):
    (tmp_path / "graphnn" / "backends").mkdir(parents=True)
    (tmp_path / "kernels").mkdir()
    (tmp_path / "graphnn" / "__init__.py").write_text("from .backends import compile\n")
    (tmp_path / "graphnn" / "backends" / "__init__.py").write_text(
        "from ..errors import GraphError\n")
    (tmp_path / "graphnn" / "graph.py").write_text(
        "def draw(g):\n    from visualize import to_svg\n    return to_svg(g)\n")
    (tmp_path / "graphnn" / "tools").mkdir()
    (tmp_path / "graphnn" / "tools" / "cli.py").write_text("import visualize\n")
    (tmp_path / "kernels" / "cpu.py").write_text("from graphnn.errors import GraphError\n")
    found = deps.violations(str(tmp_path))
    assert found == [
        "kernels/cpu.py:1: imports graphnn.errors (kernels must not import graphnn or "
        "visualize)",
        "kernels/cpu.py:1: imports graphnn.errors.GraphError (kernels must not import graphnn "
        "or visualize)",
        "graphnn/graph.py:2: imports visualize (graphnn must not import visualize)",
        "graphnn/graph.py:2: imports visualize.to_svg (graphnn must not import visualize)",
    ]


def test_relative_imports_resolve_against_the_module():
    found = deps.imported_modules("from ..api import x\nfrom . import base\n",
                                  "graphnn.backends.cpu")
    assert found == [(1, "graphnn.api"), (1, "graphnn.api.x"), (2, "graphnn.backends"),
                     (2, "graphnn.backends.base")]
    inside_init = deps.imported_modules("from ..errors import E\n", "graphnn.backends.__init__")
    assert inside_init[0] == (1, "graphnn.errors")


def test_the_command_says_the_rules_hold():
    done = subprocess.run([sys.executable, "-m", "graphnn.tools.deps"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "visualize -> graphnn -> kernels" in done.stdout


def test_importing_graphnn_does_not_import_visualize():
    code = "import sys, graphnn as gn; print(any(m.split('.')[0] == 'visualize' " \
           "for m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_a_graph_draws_itself_in_a_notebook_without_importing_visualize_first():
    code = ("import graphnn as gn; x = gn.input('x', (2,)); "
            "svg = gn.Graph(gn.exp(x))._repr_svg_(); print(svg is not None and '<svg' in svg)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    import shutil
    expected = "True" if shutil.which("dot") else ""
    assert done.stdout.strip() == expected or (not expected and "Graphviz" in done.stderr), \
        done.stderr
