"""Layer groups: which drawn nodes belong to one layer, so a picture can show the layer as
one box (collapsed) or as a cluster of its ops (expanded).

graphnn's layers name their parameters "<layer>/<param>" (`dense1/W`, `conv2d1/b`, see
graphnn/nn.py) but not the ops they make; ONNX exporters name tensors after their scope
(`fire2/squeeze1x1_w_0`). So a group is read off the names, then grown along the graph:

1. seeds: a node named "<scope>/<rest>" is in <scope>; another op that consumes a
   parameter (or a named constant read nowhere else) of <scope> is in <scope> (the matmul
   reading dense1/W);
2. growth, repeated until nothing changes: an op without a scope joins <scope> when every input
   that is not a parameter or constant is in <scope> and used only there (the add of the
   bias, then the activation), or when every one of its consumers is in <scope> (the
   transpose ONNX puts before a convolution);
3. gradient nodes form "∇ <scope>" groups. `gradient_origins` replays the walk of
   `gn.grad` (graphnn shares identical nodes, so the replay meets the very nodes drawn)
   and records which forward node's gradient rule made each gradient node: the nodes made
   by the rule of a node of <scope> are in ∇ <scope>. Gradient nodes not met (a compiled
   graph after its passes) are grouped by the rules above;
4. a scope shared by every named node (`gpu_0/...` in an ONNX file) says nothing: it is
   dropped and the next level of the name is read. A group whose box would make the
   picture cyclic (a node outside it between two of its members) is dissolved;
5. names without any "/" scope left but with Caffe2's blob versions (`res2_0_branch2a_w_0`,
   the ONNX ResNet-50) are read by their underscores: the version and the parameter words
   (`w`, `bn`, `s`, ...) are dropped and the name up to its first number is the block
   (`res2_0`), else what remains (`res_conv1`): see `underscore_scope`.
"""
import re
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from graphnn.autodiff import nodes_on_paths
from graphnn.graph import topological_order
from graphnn.node import Node
from graphnn.registry import OPS, const_node

LEAVES = ("param", "variable", "const")


@dataclass
class Group:
    """One layer group: `scope` ("dense1"), gradient part or not, its nodes in graph order."""
    key: tuple
    scope: str
    gradient: bool
    nodes: list = field(default_factory=list)

    @property
    def title(self):
        return f"\u2207 {self.scope}" if self.gradient else self.scope


def scope_of(name, strip=0):
    """'dense1' for 'dense1/W'; with strip=1, 'res2' for 'gpu_0/res2/conv'; None if none."""
    if not name:
        return None
    parts = str(name).split("/")[strip:]
    return "/".join(parts[:-1]) or None


PARAM_WORDS = frozenset("w b s bn riv rm scale bias mean var weight weights gamma beta".split())


def underscore_scope(name, strip=0):
    """'res2_0' for 'gpu_0/res2_0_branch2a_bn_s_0', 'res_conv1' for 'res_conv1_bn_b_0',
    'conv1' for 'conv1_w_0'; None when nothing is left."""
    if not name:
        return None
    parts = str(name).split("/")[strip:]
    tokens = "_".join(parts).split("_")
    if len(tokens) > 1 and tokens[-1].isdigit():
        tokens = tokens[:-1]  # the blob version
    while len(tokens) > 1 and tokens[-1].lower() in PARAM_WORDS:
        tokens = tokens[:-1]
    for i, token in enumerate(tokens[1:], 1):
        if token.isdigit():
            return "_".join(tokens[:i + 1])
    return "_".join(tokens) if tokens and tokens[0] else None


def scope_reader(nodes):
    """The function giving a node name's scope in this picture: `scope_of` after the shared
    prefix, or `underscore_scope` when no name has a "/" scope left and most named leaves
    carry a blob version (`_0`). There only the leaves' names count: an ONNX op is named
    after its output tensor (`softmax_1`), which says nothing of the block it is in."""
    names = [n.name for n in nodes]
    strip = common_prefix_depth(names)
    if any(scope_of(name, strip) for name in names):
        return lambda name: scope_of(name, strip)
    leaves = [n.name for n in nodes if n.op in LEAVES + ("input",) and n.name]
    versioned = [name for name in leaves if re.search(r"_\d+$", str(name))]
    if leaves and len(versioned) >= 0.8 * len(leaves):
        leaf_names = set(leaves)
        return lambda name: (underscore_scope(name, strip) if name in leaf_names else None)
    return lambda name: scope_of(name, strip)


def common_prefix_depth(names):
    """How many leading name components every scoped name shares (`gpu_0/` -> 1)."""
    split = [n.split("/")[:-1] for n in names if n and "/" in n]
    if not split:
        return 0
    depth = 0
    while all(len(s) > depth for s in split) and len({s[depth] for s in split}) == 1:
        depth += 1
    return depth


def gradient_origins(y, wrt):
    """{id(gradient node): the forward node whose gradient rule made it} for gn.grad(y, wrt),
    found by walking the graph as gn.grad does (reverse topological order, each node's VJP
    called on its summed adjoint). The sum of a node's adjoints is credited to that node."""
    if y.ndim != 0 or y.dtype.kind != "f":
        return {}
    order = topological_order([y])
    targets = {id(w) for w in wrt}
    on_path = nodes_on_paths(order, targets)
    known = {id(n) for n in order}
    origin = {}

    def credit(result, node):
        stack = [result]
        while stack:
            made = stack.pop()
            if id(made) in known or id(made) in origin:
                continue
            origin[id(made)] = node
            stack.extend(made.inputs)

    adjoints = {id(y): [const_node(np.ones((), y.dtype))]}
    known.add(id(adjoints[id(y)][0]))
    for node in reversed(order):
        parts = adjoints.pop(id(node), None)
        if parts is None or not node.inputs:
            continue
        g = parts[0]
        for part in parts[1:]:
            g = g + part
        credit(g, node)
        opdef = OPS[node.op]
        if opdef.vjp is None:
            return origin
        for inp, thunk in zip(node.inputs, opdef.vjp(g, node, *node.inputs, **node.attrs)):
            if thunk is not None and id(inp) in on_path:
                made = thunk()
                credit(made, node)
                adjoints.setdefault(id(inp), []).append(made)
    return origin


def infer_groups(nodes, gradient_ids, grad_pairs=(), y=None):
    """{id(node): Group} for the op nodes of `nodes` (in topological order) that belong to
    a layer group; `gradient_ids` are the gradient nodes, `grad_pairs` the (wrt, gradient)
    pairs drawn (a gradient output joins the group of its wrt), `y` the output they are
    the gradients of (when known, the gradient rules are replayed: gradient_origins)."""
    scope_name = scope_reader(nodes)
    consumers = defaultdict(list)
    for node in nodes:
        for inp in dict.fromkeys(node.inputs, None):
            consumers[id(inp)].append(node)
    scope = {}  # id(node) -> (scope, gradient)

    def is_leaf(node):
        return node.op in LEAVES or node.op == "input"

    for node in nodes:
        gradient = id(node) in gradient_ids
        own = scope_name(node.name) if node.op != "input" else None
        if own:
            scope[id(node)] = (own, gradient)
            continue
        if not node.inputs:
            continue
        # a constant read in several places (graphnn shares equal constants, and ONNX files
        # reuse one tensor across blocks) says nothing about where its readers are
        read = {scope_name(i.name) for i in node.inputs
                if i.op in LEAVES and scope_name(i.name)
                and not (i.op == "const" and len(consumers[id(i)]) > 1)}
        if len(read) == 1:
            scope[id(node)] = (read.pop(), gradient)
    for wrt, g in grad_pairs:
        own = scope_name(getattr(wrt, "name", None))
        if own and g.inputs and id(g) in gradient_ids and not scope_name(g.name):
            scope[id(g)] = (own, True)
    settled = set()  # nodes whose group (or none) the replay decided

    def grow():
        changed = True
        while changed:
            changed = False
            for node in nodes:
                if id(node) in scope or id(node) in settled or not node.inputs \
                        or is_leaf(node):
                    continue
                gradient = id(node) in gradient_ids
                feeding = [i for i in dict.fromkeys(node.inputs) if not (i.op in LEAVES)]
                keys = {scope.get(id(i)) for i in feeding}
                key = None
                if feeding and len(keys) == 1 and None not in keys:
                    candidate = keys.pop()
                    if candidate[1] == gradient and all(
                            len(consumers[id(i)]) == 1 for i in feeding):
                        key = candidate
                if key is None:
                    users = consumers[id(node)]
                    keys = {scope.get(id(u)) for u in users}
                    if users and len(keys) == 1 and None not in keys:
                        candidate = keys.pop()
                        if candidate[1] == gradient:
                            key = candidate
                if key is not None:
                    scope[id(node)] = key
                    changed = True

    grow()  # the forward groups first: the replay reads them
    wrt = [w for w, _ in grad_pairs if isinstance(w, Node)]
    if y is not None and wrt and gradient_ids:
        origin = gradient_origins(y, wrt)
        for node in nodes:
            source = origin.get(id(node))
            if id(node) in gradient_ids and source is not None and not scope_name(node.name):
                key = scope.get(id(source))
                if key is None:  # made by the rule of an op outside every group
                    scope.pop(id(node), None)
                    settled.add(id(node))
                else:
                    scope[id(node)] = (key[0], True)
    grow()
    groups = {}
    for node in nodes:
        key = scope.get(id(node))
        if key is None or is_leaf(node):
            continue
        if key not in groups:
            groups[key] = Group(key, key[0], key[1])
        groups[key].nodes.append(node)
    member = {id(n): g for g in groups.values() for n in g.nodes}
    for group in _cyclic_groups(nodes, member):
        for n in group.nodes:
            member.pop(id(n), None)
    return member


def _cyclic_groups(nodes, member):
    """Groups that some path leaves and re-enters (their single box would close a cycle)."""
    bad = []
    by_group = defaultdict(list)
    for node in nodes:
        if id(node) in member:
            by_group[member[id(node)].key].append(node)
    users = defaultdict(list)
    for node in nodes:
        for inp in node.inputs:
            users[id(inp)].append(node)
    position = {id(n): k for k, n in enumerate(nodes)}
    for key, members in by_group.items():
        inside = {id(n) for n in members}
        last = max(position[id(n)] for n in members)
        # nodes reachable from the group through a node outside it (a node after the
        # group's last member in topological order cannot lead back into it)
        stack = [u for n in members for u in users[id(n)]
                 if id(u) not in inside and position.get(id(u), last + 1) < last]
        seen = set()
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if id(node) in inside:
                bad.append(member[id(node)])
                break
            stack.extend(u for u in users[id(node)] if position.get(id(u), last + 1) <= last)
    return bad
