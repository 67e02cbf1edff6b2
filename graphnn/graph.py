"""`Graph`: the nodes that some outputs reach, in topological order, with checks and a summary."""
import numpy as np

from . import shapes as S
from .errors import GraphError, user_location
from .node import Node, LEAF_OPS
from .registry import OPS


def as_node_list(outputs, what="outputs"):
    """Accept a Node, a list/tuple of Nodes or a Graph; return (list of Nodes, was_single)."""
    if isinstance(outputs, Graph):
        return list(outputs.outputs), False
    if isinstance(outputs, Node):
        return [outputs], True
    if isinstance(outputs, (list, tuple)):
        nodes = list(outputs)
        for i, n in enumerate(nodes):
            if not isinstance(n, Node):
                raise GraphError(f"{what}[{i}] is {type(n).__name__}, not a graph node "
                                 f"(at {user_location()})")
        return nodes, False
    raise GraphError(f"{what} must be a node or a list of nodes, got {type(outputs).__name__} "
                     f"(at {user_location()})")


def topological_order(outputs):
    """Every node the outputs depend on, each after its inputs: a depth-first post-order
    from the outputs, inputs visited left to right, so the order follows how the user wrote
    the expression. (Nodes are immutable, so a cycle cannot be built.)"""
    # (a set of the nodes themselves, hashed by identity, rather than of their ids: a
    # deep graph has tens of thousands of nodes, and the passes ask for its order often)
    order, done = [], set()
    add, append = done.add, order.append
    for root in outputs:
        if root in done:
            continue
        stack = [(root, iter(root.inputs))]
        add(root)
        while stack:
            node, pending = stack[-1]
            for inp in pending:
                if inp not in done:
                    add(inp)
                    stack.append((inp, iter(inp.inputs)))
                    break
            else:
                stack.pop()
                append(node)
    return order


def to_networkx(nodes):
    """The graph as a networkx DiGraph (edges input -> user), for analysis and drawing."""
    import networkx as nx  # on first use: it takes longer to import than graphnn itself
    dag = nx.DiGraph()
    for node in nodes:
        dag.add_node(node)
        for inp in node.inputs:
            dag.add_edge(inp, node)
    return dag


class Graph:
    """The sub-DAG reached from `outputs` (a node, a list of nodes or a Graph).

    Attributes: `outputs` (list), `nodes` (every node they reach, each after its inputs),
    `inputs` (the `gn.input` nodes), `params` (the `gn.param` nodes: what an optimizer
    trains, in the order first reached; `.value` of each is its current array),
    `variables` (the `gn.variable` nodes: optimizer state, learning-rate variables).
    Methods: `lint()`, `summary()`, `param_count()`.

        g = gn.Graph(loss)
        g.params                    # [W1 (64, 32), b1 (32,), W2 (32, 10), b2 (10,)]
        step = gn.compile(loss, updates=gn.optim.Adam(1e-3).updates(loss, g.params))
        print(g.summary())
    """

    def __init__(self, outputs, order=None):
        self.outputs, self.single = as_node_list(outputs)
        if not self.outputs:
            raise GraphError(f"a graph needs at least one output (at {user_location()})")
        # (`order`: topological_order(outputs), when the caller has it already)
        self.nodes = topological_order(self.outputs) if order is None else list(order)
        self.inputs = [n for n in self.nodes if n.op == "input"]
        self.params = [n for n in self.nodes if n.op == "param"]
        self.variables = [n for n in self.nodes if n.op == "variable"]
        self._check_unique_names(self.inputs, "input")
        self._check_unique_names(self.params + self.variables, "parameter")

    @staticmethod
    def _check_unique_names(nodes, what):
        seen = {}
        for n in nodes:
            if n.name in seen:
                raise GraphError(f"two different {what}s are named '{n.name}': one made at "
                                 f"{seen[n.name].where}, one at {n.where} "
                                 f"(at {user_location()})")
            seen[n.name] = n

    def lint(self):
        """Check the invariants: acyclic topological order, inferred shapes and dtypes
        consistent with each op's rule, and no two nodes with the same (op, attrs, inputs).
        Returns self; raises GraphError naming the offending node."""
        from .registry import Spec
        import networkx as nx
        if not nx.is_directed_acyclic_graph(to_networkx(self.nodes)):
            raise GraphError("lint: the graph has a cycle")
        position = {id(n): i for i, n in enumerate(self.nodes)}
        keys = {}
        for i, node in enumerate(self.nodes):
            for inp in node.inputs:
                if position.get(id(inp), len(self.nodes)) >= i:
                    raise GraphError(f"lint: {node.label()} comes before its input {inp.label()}")
            if node.op in LEAF_OPS:
                continue
            opdef = OPS[node.op]
            specs = [Spec(inp.sym_shape, inp.dtype) for inp in node.inputs]
            shape, dtype = opdef.infer(specs, **node.attrs)
            if len(shape) != len(node.sym_shape) or not all(
                    S.dims_equal(a, b) for a, b in zip(shape, node.sym_shape)):
                raise GraphError(f"lint: {node.label()} has shape {S.format_shape(node.sym_shape)}"
                                 f" but its rule gives {S.format_shape(shape)}")
            if np.dtype(dtype) != node.dtype:
                raise GraphError(f"lint: {node.label()} has dtype {node.dtype}, rule gives {dtype}")
            key = (node.op, node._attrs, tuple(id(x) for x in node.inputs))
            if key in keys:
                raise GraphError(f"lint: {node.label()} duplicates {keys[key].label()}")
            keys[key] = node
        return self

    def param_count(self):
        return int(sum(n.value.size for n in self.params))

    def summary(self):
        """A table like Keras' model.summary(): node, op, output shape, parameters."""
        rows = [("#", "node", "op", "shape", "dtype", "params")]
        names = self.display_names()
        for i, node in enumerate(self.nodes):
            count = node.value.size if node.op == "param" else ""
            op = node.op if node.op != "const" else f"const {node.attr('value')!r}"
            rows.append((str(i), names[node], op, S.format_shape(node.sym_shape),
                         node.dtype.name, str(count)))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        line = "-" * (sum(widths) + 2 * (len(widths) - 1))
        out = [line]
        for j, r in enumerate(rows):
            out.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
            if j == 0:
                out.append(line)
        out.append(line)
        out.append(f"nodes: {len(self.nodes)}   inputs: {len(self.inputs)}   "
                   f"parameters: {len(self.params)} ({self.param_count():,} values)   "
                   f"outputs: {', '.join(names[o] for o in self.outputs)}")
        return "\n".join(out)

    def display_names(self):
        """A readable unique name per node: its own name, else op + index."""
        names, used = {}, set()
        for i, node in enumerate(self.nodes):
            name = node.name or f"{node.op}_{i}"
            if name in used:
                name = f"{name}_{i}"
            used.add(name)
            names[node] = name
        return names

    def _repr_svg_(self):
        """The graph as SVG text, for notebooks: drawn by the renderer registered with
        `register_svg_renderer` (visualize registers itself; see `svg_renderer`)."""
        renderer = svg_renderer()
        return None if renderer is None else renderer(self)

    def __repr__(self):
        return f"<Graph {len(self.nodes)} nodes, outputs {[o.name or o.op for o in self.outputs]}>"

    def __len__(self):
        return len(self.nodes)


_SVG_RENDERERS = []  # registry: functions Graph -> SVG text (visualize.to_svg)


def register_svg_renderer(renderer):
    """Make `renderer(graph) -> SVG text` draw graphs in notebooks (Graph._repr_svg_)."""
    if renderer not in _SVG_RENDERERS:
        _SVG_RENDERERS.append(renderer)
    return renderer


def svg_renderer():
    """The registered SVG renderer: the last one registered, else the one an installed
    package declares under the entry-point group "graphnn.renderers" (visualize does, in
    pyproject.toml), loaded on first use; None when there is none."""
    if not _SVG_RENDERERS:
        from importlib.metadata import entry_points
        for entry in entry_points(group="graphnn.renderers"):
            try:
                register_svg_renderer(entry.load())
            except Exception:  # a broken plug-in draws nothing; the text repr remains
                continue
    return _SVG_RENDERERS[-1] if _SVG_RENDERERS else None
