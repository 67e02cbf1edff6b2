"""Turn a graph into Graphviz DOT in the Netron style (the pure part: no `dot` needed).

What gets drawn, and how:

- each op node is a rounded box whose header cell, in the op's category colour, holds the
  op name in white; parameters, variables and constants it consumes are rows inside it
  ("**W1** ⟨784×256⟩", "**const** = 3"), not boxes of their own;
- graph inputs and outputs are light grey rounded boxes;
- edges carry the tensor shape, `?` standing for a symbolic dim (`?×256`);
- gradient nodes (see `grads=`) have a dashed outline and a "∇" before the op name, edges
  between them are drawn in a warm colour, and a legend says so;
- fused kernels (see `kernels=`) are clusters labelled with the kernel name.

Every piece of user text (names, attribute values, kernel names) goes into an HTML-like
label through `escape`, so `<`, `&`, quotes, braces, newlines or non-ASCII never break it.
"""
import html
import re
from dataclasses import dataclass, field

import graphviz
import numpy as np

import graphnn as gn
from graphnn.graph import as_node_list, topological_order
from graphnn.node import ConstValue, Node
from graphnn.shapes import Sym, format_shape, resolve

from . import style as st
from .groups import infer_groups

INLINE_LEAVES = ("param", "variable", "const")  # drawn as rows inside their consumer
LARGE_GRAPH = 400  # drawn boxes; above this dot's x-coordinate optimisation is cut short
LARGE_GRAPH_NSLIMIT = "0.1"
SPLINE_BUDGET = 12000  # ranks crossed by all edges; above this, edges are straight lines
MAX_EDGE_SPAN = 6  # ranks a forward value's edge to a gradient node may cross; longer: a stub


MAX_LABEL = 120  # characters of one piece of user text shown in a label; the rest is "…"
_UNPRINTABLE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")


def escape(text):
    """Text safe inside a Graphviz HTML-like label; a newline becomes a line break.

    Control characters (NUL included), lone surrogates and line separators, which Graphviz
    or UTF-8 cannot take, are shown as Python escapes (`\\x00`, `\\udc80`); a text longer
    than MAX_LABEL characters is cut with "…"."""
    text = str(text)
    if len(text) > MAX_LABEL:
        text = text[:MAX_LABEL - 1] + "…"
    text = _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)
    return "<BR/>".join(html.escape(line, quote=True) for line in text.split("\n"))


def format_dims(sym_shape):
    """`?×256` for (None, 256); '' for a scalar. Named symbols keep their name: `?batch`."""
    inner = format_shape(sym_shape)[1:-1].rstrip(",")
    return inner.replace(", ", st.TIMES)


def format_attr(value):
    """An attribute value as Netron would print it: `(0, 1)`, `same`, `0.01`, `?×784`."""
    if isinstance(value, ConstValue):
        return repr(value)
    if isinstance(value, Sym):
        return format_dims((value,))
    if isinstance(value, (tuple, list)):
        if any(isinstance(resolve(v), Sym) for v in value):
            return format_dims(value)
        inner = ", ".join(format_attr(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, np.dtype):
        return value.name
    return str(value)


BINARY_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "matmul": "@", "pow": "**"}
MAX_EXPRESSION = 40  # characters; a longer expression is cut to its outer op


def expression(node, names, depth=2):
    """A short formula naming `node` by what it computes: `x1 * x2`, `relu(x @ W + b)`,
    `mean(sigmoid(…))`; leaves and named nodes by their name, deeper levels as "…"."""
    if node.op == "const" and node.ndim == 0:
        value = node.value.reshape(()).item()
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    if node.name or not node.inputs:
        return names.get(node) or node.name or node.op
    if depth == 0:
        return "\u2026"
    args = [expression(i, names, depth - 1) for i in node.inputs]
    symbol = BINARY_SYMBOLS.get(node.op)
    if symbol and len(args) == 2:
        args = [f"({a})" if " " in a else a for a in args]
        text = f"{args[0]} {symbol} {args[1]}"
    else:
        text = f"{node.op}({', '.join(args)})"
    if len(text) > MAX_EXPRESSION:
        return f"{node.op}(\u2026)" if depth > 1 else names.get(node, node.op)
    return text


@dataclass
class Kernel:
    """A fused kernel to draw as a cluster: its name and the graph nodes it computes."""
    name: str
    nodes: list = field(default_factory=list)


def as_kernels(kernels):
    """Accept objects with `.name`/`.nodes` or dicts with those keys."""
    out = []
    for k in kernels or ():
        if isinstance(k, dict):
            out.append(Kernel(str(k["name"]), list(k.get("nodes", ()))))
        else:
            out.append(Kernel(str(k.name), list(k.nodes)))
    return out


def resolve_target(target):
    """(forward outputs, kernels) for a Node, a list of Nodes, a gn.Graph, or a compiled
    function (anything with `.graph`, and optionally `.kernels`)."""
    if isinstance(target, (Node, list, tuple, gn.Graph)):
        return as_node_list(target)[0], None
    # a compiled function: draw the graph its kernels were made from (after the passes)
    graph = getattr(target, "optimized_graph", None) or getattr(target, "graph", None)
    if isinstance(graph, gn.Graph):
        return list(graph.outputs), getattr(target, "kernels", None)
    raise gn.GraphError(f"cannot draw a {type(target).__name__}: pass a node, a list of "
                        "nodes, a gn.Graph, or a compiled function")


class Scene:
    """Decides what each node becomes (box, row, reference or nothing), then writes DOT."""

    def __init__(self, target, grads=None, backward_only=False, show_names=False,
                 show_attrs=False, show_shapes=True, rankdir="TB", names=None, kernels=None,
                 legend=None, expand=None, groups=True, max_edge_span=MAX_EDGE_SPAN):
        if rankdir not in ("TB", "LR", "BT", "RL"):
            raise ValueError(f"rankdir must be 'TB', 'LR', 'BT' or 'RL', got {rankdir!r}")
        forward, target_kernels = resolve_target(target)
        self.grads = self._grad_pairs(grads)
        if backward_only and not self.grads:
            raise gn.GraphError("backward_only=True needs grads={param: gradient node}")
        # A compiled function's outputs may hold the gradients too: those are drawn as
        # gradient outputs, not forward ones.
        gradient_outputs = {id(g) for _, g in self.grads}
        forward = [n for n in forward if id(n) not in gradient_outputs]
        if not forward:
            raise gn.GraphError("nothing to draw: give the forward outputs (e.g. the loss) "
                                "besides grads=")
        self.forward_outputs = forward
        self.graph = gn.Graph(forward + [g for _, g in self.grads])
        self.nodes = self.graph.nodes
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        self.names = self.graph.display_names()
        self.renamed = set()
        for node, name in (names or {}).items():
            self.names[node] = str(name)
            self.renamed.add(node)
        forward_ids = {id(n) for n in topological_order(forward)}
        self.gradient_ids = {id(n) for n in self.nodes if id(n) not in forward_ids}
        self.backward_only = backward_only
        self.show_names, self.show_attrs, self.show_shapes = show_names, show_attrs, show_shapes
        self.rankdir = rankdir
        self.kernels = as_kernels(kernels if kernels is not None else target_kernels)
        self.legend = bool(self.gradient_ids) if legend is None else legend
        self.max_edge_span = max_edge_span
        self.mirror = bool(self.gradient_ids) and not backward_only
        self._choose_roles()
        self._choose_groups(expand if groups else True, groups and not self.kernels)

    def _choose_groups(self, expand, grouped):
        """Layer groups (see visualize/groups.py) of the drawn op boxes; `expand` True (all
        drawn as clusters of their ops), False (each drawn as one box), the scopes to
        expand (`["dense1"]`; the others are collapsed), or None: expanded unless there are
        more than LARGE_GRAPH op boxes (hundreds of clusters make dot slow)."""
        y = self._differentiated_output() if self.grads else None
        member = infer_groups(self.nodes, self.gradient_ids, self.grads, y) if grouped else {}
        self.group_of = {key: g for key, g in member.items() if self.role.get(key) == "op"}
        self.groups = list({id(g): g for g in self.group_of.values()}.values())
        self.group_ids = {g.key: f"g{k}" for k, g in enumerate(self.groups)}
        if expand is None:  # automatic: expanded unless the picture would be large
            expand = sum(1 for role in self.role.values() if role == "op") <= LARGE_GRAPH
        if expand is True or expand is False:
            expanded = set() if expand is False else {g.scope for g in self.groups}
        elif isinstance(expand, str):
            expanded = {expand}
        else:
            expanded = {str(scope) for scope in expand}
        self.collapsed = {key: g for key, g in self.group_of.items()
                          if g.scope not in expanded}

    # -- what is drawn ------------------------------------------------------------------

    @staticmethod
    def _grad_pairs(grads):
        pairs = []
        for wrt, g in (grads or {}).items():
            if not isinstance(g, Node):
                raise gn.GraphError(f"grads[{wrt!r}] is {type(g).__name__}, not a graph node")
            pairs.append((wrt, g))
        return pairs

    def _choose_roles(self):
        """role per node id: 'op' (a box), 'terminal' (grey input box), 'reference' (a
        forward value the backward part uses), or absent (a row, or not drawn)."""
        outputs = {id(n) for n in self.output_nodes()}
        if self.backward_only:
            ops = [n for n in self.nodes if id(n) in self.gradient_ids and n.inputs]
        else:
            ops = [n for n in self.nodes if n.inputs]
        self.role = {id(n): "op" for n in ops}
        for node in ops:
            for inp in node.inputs:
                if id(inp) not in self.role:
                    self._place_input(inp)
        for node in self.nodes:
            if id(node) in outputs and id(node) not in self.role:
                self._place_input(node, force_box=True)

    def _place_input(self, node, force_box=False):
        if node.op == "input":
            self.role[id(node)] = "terminal"
        elif node.op in INLINE_LEAVES:
            if force_box:
                self.role[id(node)] = "terminal"
        else:
            self.role[id(node)] = "reference"

    def output_nodes(self):
        return [node for node, _ in self.output_boxes()]

    def output_boxes(self):
        """(node, label) of each output box, forward outputs first. An output is labelled
        with its name, else with its expression (`x1 * x2`); a gradient with the partial
        derivative of the output actually differentiated (`∂f1/∂x2`)."""
        boxes = []
        if not self.backward_only:
            boxes = [(node, self.output_label(node)) for node in self.forward_outputs]
        y = self._differentiated_name()
        for wrt, g in self.grads:
            w = wrt if isinstance(wrt, str) else self.names.get(wrt, wrt.name or wrt.op)
            boxes.append((g, f"{st.PARTIAL}{y}/{st.PARTIAL}{w}"))
        return boxes

    def _has_name(self, node):
        return bool(node.name) or node in self.renamed

    def output_label(self, node):
        return self.names[node] if self._has_name(node) else expression(node, self.names)

    def _differentiated_name(self):
        """The label of the forward output the gradients are of: the only one, or else the
        only scalar one (a loss beside other outputs), or else the first."""
        return self.output_label(self._differentiated_output())

    def _differentiated_output(self):
        outputs = self.forward_outputs
        scalars = [y for y in outputs if y.ndim == 0]
        return outputs[0] if len(outputs) == 1 or len(scalars) != 1 else scalars[0]

    # -- labels ---------------------------------------------------------------------------

    def dot_id(self, node):
        return f"n{self.index[id(node)]}"

    def rows(self, node):
        rows, seen = [], set()
        for inp in node.inputs:
            if inp.op in INLINE_LEAVES and id(inp) not in seen:
                seen.add(id(inp))
                rows.append(self.leaf_row(inp))
        if self.show_attrs:
            for key, value in sorted(node.attrs.items()):
                rows.append(f'<FONT COLOR="{st.MUTED_TEXT}">{escape(key)} = '
                            f'{escape(format_attr(value))}</FONT>')
        return rows

    def leaf_row(self, leaf, strip=""):
        """The row a parameter, variable or constant gets inside its consumer (`strip`: the
        group's scope, "dense1", left out of "dense1/W" inside the dense1 box, and
        "gpu_0/res2_0_" out of "gpu_0/res2_0_branch2a_w_0" inside the res2_0 box)."""
        if leaf.op == "const" and leaf.ndim == 0:
            return f"<B>{escape(leaf.name or 'const')}</B> = {escape(self._scalar_text(leaf))}"
        name = self.names[leaf] if leaf.op != "const" else (leaf.name or "const")
        if strip:
            for sep in "/_":
                at = name.find(strip + sep)
                if at == 0 or (at > 0 and name[at - 1] == "/"):
                    name = name[at + len(strip) + 1:]
                    break
        return f"<B>{escape(name)}</B> {escape(self._bracketed(leaf))}"

    @staticmethod
    def _scalar_text(const):
        value = const.value.reshape(()).item()
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    @staticmethod
    def _bracketed(leaf):
        return f"{st.SHAPE_OPEN}{format_dims(leaf.sym_shape) or 'scalar'}{st.SHAPE_CLOSE}"

    def op_label(self, node):
        gradient = id(node) in self.gradient_ids
        colour = st.header_colour(node.op)
        title = escape(f"{st.NABLA} {_op_title(node)}" if gradient else _op_title(node))
        header = f'<FONT COLOR="white">{title}</FONT>'
        if self.show_names:
            header += (f'<BR/><FONT COLOR="#DDDDDD" POINT-SIZE="{st.EDGE_FONT_SIZE}">'
                       f'{escape(self.names[node])}</FONT>')
        rows = self.rows(node)
        if not rows and not gradient:
            return (f'<<TABLE STYLE="rounded" BORDER="1" CELLBORDER="0" CELLSPACING="0" '
                    f'CELLPADDING="4" COLOR="{st.BORDER_COLOUR}" BGCOLOR="{colour}">'
                    f'<TR><TD>{header}</TD></TR></TABLE>>')
        # With rows (or a dashed gradient outline that must stay visible), a white box
        # holds the coloured header.
        table_style = "rounded,dashed" if gradient else "rounded"
        body = "".join(f'<TR><TD ALIGN="LEFT">{row}</TD></TR>' for row in rows)
        return (f'<<TABLE STYLE="{table_style}" BORDER="1" CELLBORDER="0" CELLSPACING="1" '
                f'CELLPADDING="3" COLOR="{st.BORDER_COLOUR}" BGCOLOR="white">'
                f'<TR><TD BGCOLOR="{colour}" STYLE="rounded">{header}</TD></TR>'
                f'{body}</TABLE>>')

    def group_label(self, group):
        """A collapsed layer group as one Netron box: its name on the colour of its main op
        (the first with a Netron category), the ops it holds, its parameters as rows."""
        ops = list(dict.fromkeys(n.op for n in group.nodes))
        main = next((op for op in ops if st.category_of(op) == "Layer"),
                    next((op for op in ops if st.category_of(op)), ops[0]))
        header = (f'<FONT COLOR="white">{escape(group.title)}</FONT><BR/>'
                  f'<FONT COLOR="#DDDDDD" POINT-SIZE="{st.EDGE_FONT_SIZE}">'
                  f'{escape(" · ".join(ops[:4]) + (" …" if len(ops) > 4 else ""))}</FONT>')
        rows, seen = [], set()
        for node in group.nodes:
            for inp in node.inputs:
                if inp.op in INLINE_LEAVES and id(inp) not in seen:
                    seen.add(id(inp))
                    rows.append(self.leaf_row(inp, strip=group.scope))
        table_style = "rounded,dashed" if group.gradient else "rounded"
        body = "".join(f'<TR><TD ALIGN="LEFT">{row}</TD></TR>' for row in rows)
        return (f'<<TABLE STYLE="{table_style}" BORDER="1" CELLBORDER="0" CELLSPACING="1" '
                f'CELLPADDING="3" COLOR="{st.BORDER_COLOUR}" BGCOLOR="white">'
                f'<TR><TD BGCOLOR="{st.header_colour(main)}" STYLE="rounded">{header}</TD></TR>'
                f'{body}</TABLE>>')

    def terminal_label(self, text, detail=""):
        detail = (f'<BR/><FONT COLOR="{st.MUTED_TEXT}" POINT-SIZE="{st.EDGE_FONT_SIZE}">'
                  f'{escape(detail)}</FONT>') if detail else ""
        return f"<{escape(text)}{detail}>"

    def edge_label(self, node):
        dims = format_dims(node.sym_shape) if self.show_shapes else ""
        return f"<{escape(dims)}>" if dims else None

    # -- boxes and edges ------------------------------------------------------------------

    def box_of(self, node):
        """The DOT id of the box that shows `node`: its own, or its collapsed group's."""
        group = self.collapsed.get(id(node))
        return self.group_ids[group.key] if group is not None else self.dot_id(node)

    def box_edges(self):
        """Each edge between two boxes once: (source node, source box, target box, kind),
        kind 'forward', 'gradient' (between gradient nodes) or 'read' (a forward value read
        by a gradient node). Parameters and constants are rows, not edges."""
        seen, edges = set(), []
        for node in self.nodes:
            if self.role.get(id(node)) != "op":
                continue
            target = self.box_of(node)
            for inp in node.inputs:
                if self.role.get(id(inp)) is None or inp.op in INLINE_LEAVES:
                    continue
                source = self.box_of(inp)
                if source == target or (source, target) in seen:
                    continue
                seen.add((source, target))
                if id(node) not in self.gradient_ids:
                    kind = "forward"
                else:
                    kind = "gradient" if id(inp) in self.gradient_ids else "read"
                edges.append((inp, source, target, kind))
        return edges

    def layout_edges(self, edges):
        """(tail, head) as Graphviz ranks them. When forward and gradient nodes are drawn
        together the gradient edges point up (drawn with dir=back): the backward pass climbs
        beside the forward pass, each layer's gradient next to the layer."""
        pairs = []
        for _, source, target, kind in edges:
            pairs.append((target, source) if kind == "gradient" and self.mirror
                         else (source, target))
        for k, (node, _) in enumerate(self.output_boxes()):
            gradient = k >= len(self.output_boxes()) - len(self.grads)
            pairs.append((f"out{k}", self.box_of(node)) if gradient and self.mirror
                         else (self.box_of(node), f"out{k}"))
        return pairs

    @staticmethod
    def ranks(pairs):
        """Longest-path rank of each box over the (tail, head) pairs, each source box then
        moved down next to its first reader (roughly what dot gives before it balances the
        ranks); boxes on a cycle keep the rank reached so far."""
        heads, indegree, rank = {}, {}, {}
        for tail, head in pairs:
            heads.setdefault(tail, []).append(head)
            indegree[head] = indegree.get(head, 0) + 1
            indegree.setdefault(tail, 0)
        ready = [box for box, d in indegree.items() if d == 0]
        sources = list(ready)
        for box in ready:
            rank[box] = 0
        while ready:
            box = ready.pop()
            for head in heads.get(box, ()):
                rank[head] = max(rank.get(head, 0), rank[box] + 1)
                indegree[head] -= 1
                if indegree[head] == 0:
                    ready.append(head)
        for box in sources:
            if box in heads:
                rank[box] = min(rank.get(head, 1) for head in heads[box]) - 1
        return rank

    def stubbed_reads(self, edges):
        """The 'read' edges drawn as a reference stub beside the reader instead of a line:
        those spanning more than `max_edge_span` ranks. A long edge becomes a chain of
        virtual nodes in dot, and hundreds of them made large derivative graphs take
        minutes to lay out."""
        rank = self.ranks(self.layout_edges(edges))
        self.edge_ranks = sum(abs(rank.get(head, 0) - rank.get(tail, 0))
                              for tail, head in self.layout_edges(edges))
        if self.max_edge_span is None:
            return set()
        return {(source, target) for _, source, target, kind in edges
                if kind == "read" and rank.get(target, 0) - rank.get(source, 0)
                > self.max_edge_span}

    # -- DOT ------------------------------------------------------------------------------

    def digraph(self):
        dot = graphviz.Digraph("graphnn")
        dot.attr(rankdir=self.rankdir, bgcolor="white", nodesep=st.NODESEP, ranksep=st.RANKSEP,
                 fontname=st.FONT, fontsize=str(st.FONT_SIZE))
        if len(self.role) > LARGE_GRAPH:
            # dot's x-coordinate network simplex dominates large layouts; a few passes
            # already give straight chains (see docs/BENCHMARKS.md, "Rendering")
            dot.attr(nslimit=LARGE_GRAPH_NSLIMIT)
        dot.attr("node", shape="plain", fontname=st.FONT, fontsize=str(st.FONT_SIZE))
        dot.attr("edge", fontname=st.FONT, fontsize=str(st.EDGE_FONT_SIZE),
                 color=st.EDGE_COLOUR, fontcolor=st.EDGE_LABEL_COLOUR, arrowsize="0.6")
        defaults = len(dot.body)  # the statements above apply to the columns too
        # With the backward pass mirrored beside the forward pass, each pass is an invisible
        # cluster: dot keeps them side by side (the forward pass on the left) instead of
        # letting the two chains drift apart rank after rank.
        columns = {}
        if self.mirror and not self.kernels:
            for gradient, name in ((False, "cluster_forward"), (True, "cluster_backward")):
                columns[gradient] = graphviz.Digraph(name)
                columns[gradient].attr(style="invis", margin="0")

        def column(gradient):
            return columns.get(gradient, dot)

        clusters, cluster_of = self._clusters()
        drawn_groups = set()
        for node in self.nodes:
            role = self.role.get(id(node))
            if role is None:
                continue
            gradient = id(node) in self.gradient_ids
            group = self.collapsed.get(id(node))
            if group is not None:
                if group.key not in drawn_groups:
                    drawn_groups.add(group.key)
                    column(gradient).node(self.group_ids[group.key], self.group_label(group),
                                          id=self.group_ids[group.key])
                continue
            where = clusters[cluster_of[id(node)]][0] if id(node) in cluster_of else \
                column(gradient)
            self._draw_node(where, node, role)
        for sub, gradient in clusters:
            column(gradient).subgraph(sub)
        edges = self.box_edges()
        stubbed = self.stubbed_reads(edges)
        if self.edge_ranks > SPLINE_BUDGET:
            # Routing curved edges around tens of thousands of virtual nodes takes dot
            # minutes (ResNet-50's derivative graph: 88 s); straight edges take a second.
            dot.attr(splines="line")
        self.stubs = []
        for source_node, source, target, kind in edges:
            if (source, target) in stubbed:
                self._draw_stub(column(True), dot, source_node, source, target)
            elif kind == "gradient" and self.mirror:
                self._edge(dot, source_node, source, target, gradient=True, back=True)
            else:
                self._edge(dot, source_node, source, target, gradient=kind == "gradient")
        for k, (node, label) in enumerate(self.output_boxes()):
            gradient = k >= len(self.output_boxes()) - len(self.grads)
            column(gradient).node(f"out{k}", self.terminal_label(label), shape="box",
                                  id=f"out{k}", style="rounded,filled",
                                  fillcolor=st.TERMINAL_FILL, color=st.TERMINAL_BORDER,
                                  margin="0.12,0.04", height="0.3")
            self._edge(dot, node, self.box_of(node), f"out{k}", gradient and
                       id(node) in self.gradient_ids, back=gradient and self.mirror)
        body, dot.body = dot.body[defaults:], dot.body[:defaults]
        for sub in columns.values():
            dot.subgraph(sub)
        dot.body += body
        if self.legend:
            self._draw_legend(dot)
        return dot

    def _draw_node(self, where, node, role):
        ident = self.dot_id(node)
        if role == "op":
            where.node(ident, self.op_label(node), id=ident)
        elif role == "terminal":
            text, detail = self.names[node], ""
            if node.op == "const" and node.ndim == 0:
                text, detail = self._scalar_text(node), "const"
            elif node.op in INLINE_LEAVES:
                detail = f"{node.op} {self._bracketed(node)}"
            where.node(ident, self.terminal_label(text, detail), id=ident,
                       shape="box", style="rounded,filled", fillcolor=st.TERMINAL_FILL,
                       color=st.TERMINAL_BORDER, margin="0.12,0.04", height="0.3")
        else:  # a forward value used by the backward part
            where.node(ident, self.terminal_label(self.names[node], "forward"), id=ident,
                       shape="box", style="rounded,filled,dotted", fillcolor="white",
                       color=st.TERMINAL_BORDER, margin="0.1,0.03", height="0.3")

    def _draw_stub(self, where, dot, node, source, target):
        """A small "↗ relu_12" box beside the reader, linked to the forward box it names."""
        ident = f"s{len(self.stubs)}"
        self.stubs.append((ident, source, target))
        name = self.names[node]
        where.node(ident, f"<{st.REFERENCE} {escape(name)}>", id=ident, shape="box",
                 style="rounded,dotted", color=st.TERMINAL_BORDER, fontcolor=st.MUTED_TEXT,
                 fontsize=str(st.EDGE_FONT_SIZE), margin="0.06,0.02", height="0.2",
                 tooltip=f"a forward value, drawn as box {source}", URL=f"#{source}")
        self._edge(dot, node, ident, target, gradient=False)

    def _edge(self, dot, source, tail, head, gradient, back=False):
        attrs = {"color": st.GRAD_EDGE_COLOUR} if gradient else {}
        label = self.edge_label(source)
        if label:
            attrs["label"] = label
        if back:
            attrs["dir"] = "back"
            tail, head = head, tail
        dot.edge(tail, head, **attrs)

    def _clusters(self):
        """(clusters, {id(node): cluster index}): the fused kernels, or else the expanded
        layer groups (a node is in one cluster only: kernels win)."""
        if self.kernels:
            member = self._cluster_membership()
            clusters = []
            for k, kernel in enumerate(self.kernels):
                sub = graphviz.Digraph(f"cluster_{k}")
                sub.attr(label=f"<{escape(kernel.name)}>", style="rounded,dashed",
                         color=st.CLUSTER_COLOUR, fontcolor=st.CLUSTER_COLOUR,
                         fontsize=str(st.EDGE_FONT_SIZE), labeljust="l", margin="6")
                clusters.append((sub, False))
            return clusters, member
        clusters, member, index = [], {}, {}
        for node in self.nodes:
            group = self.group_of.get(id(node))
            if group is None or id(node) in self.collapsed:
                continue
            if group.key not in index:
                index[group.key] = len(clusters)
                sub = graphviz.Digraph(f"cluster_{self.group_ids[group.key]}")
                sub.attr(label=f"<{escape(group.title)}>", id=f"{self.group_ids[group.key]}x",
                         style="rounded,dashed" if group.gradient else "rounded",
                         color=st.CLUSTER_COLOUR, fontcolor=st.CLUSTER_COLOUR,
                         fontsize=str(st.EDGE_FONT_SIZE), labeljust="l", margin="6")
                clusters.append((sub, group.gradient))
            member[id(node)] = index[group.key]
        return clusters, member

    def _cluster_membership(self):
        by_name = {}
        for node in self.nodes:
            by_name.setdefault(self.names[node], node)
            if node.name:
                by_name.setdefault(node.name, node)
        member = {}
        for k, kernel in enumerate(self.kernels):
            for entry in kernel.nodes:
                node = by_name.get(entry) if isinstance(entry, str) else entry
                if isinstance(node, Node) and id(node) in self.index:
                    member.setdefault(id(node), k)  # a node recomputed by two kernels: first
        return member

    def _draw_legend(self, dot):
        grey = st.NO_CATEGORY_COLOUR
        cell = ('<TD><TABLE STYLE="{style}" BORDER="1" CELLBORDER="0" CELLSPACING="1" '
                'CELLPADDING="2" COLOR="{border}" BGCOLOR="white"><TR><TD BGCOLOR="{grey}" '
                'STYLE="rounded"><FONT COLOR="white">{text}</FONT></TD></TR></TABLE></TD>')
        forward = cell.format(style="rounded", border=st.BORDER_COLOUR, grey=grey, text="op")
        backward = cell.format(style="rounded,dashed", border=st.BORDER_COLOUR, grey=grey,
                               text=f"{st.NABLA} op")
        label = (f'<<TABLE BORDER="0" CELLSPACING="4" CELLPADDING="0">'
                 f'<TR>{forward}<TD ALIGN="LEFT"> forward</TD>'
                 f'{backward}<TD ALIGN="LEFT"> gradient (backward)</TD></TR></TABLE>>')
        dot.node("legend", label, fontsize=str(st.EDGE_FONT_SIZE))


def build_digraph(target, **options):
    """The `graphviz.Digraph` for `target`; see `visualize.render` for the options."""
    return Scene(target, **options).digraph()


def to_dot(target, **options):
    """The DOT source (str) of `target` in the Netron style; needs no Graphviz install.

        print(visualize.to_dot(loss, show_attrs=True))
    """
    return build_digraph(target, **options).source


def _op_title(node):
    """A box's header: its op, and for gn.repeat's loops how often which block runs."""
    if node.op in ("repeat", "repeat_grad"):
        return f"{node.op} \u00d7{node.attr('n')}: {node.attr('body').name}"
    return node.op
