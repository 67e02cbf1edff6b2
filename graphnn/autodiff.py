"""Backpropagation as graph building: `gn.grad(y, wrt)`.

The chain rule applied node by node, exactly as on the lecture slide: walk the DAG from `y`
back to the leaves in reverse topological order; each node hands its adjoint to its inputs
through the op's VJP rule; a node used several times sums the adjoints it receives. The
result is more Nodes in the same DAG, so a gradient can be rendered, compiled, or
differentiated again.
"""
import numpy as np

from .errors import GradError, located, user_location
from .graph import topological_order
from .node import Node, collector_paused
from .registry import OPS, applied_alike, const_node
from . import ops


@collector_paused()  # (a deep graph: see node.collector_paused)
@applied_alike()  # (its blocks' gradients: the same ops on the same shapes, see there)
@located  # (the nodes it makes: see errors.located)
def grad(y, wrt, seed=None):
    """Gradient of `y` with respect to `wrt` (a node or a list of nodes; same structure back).

    `y` must be a scalar unless `seed` (a node of y's shape: the incoming adjoint) is given.
    A `wrt` that `y` does not depend on gets zeros of its shape.

        loss = gn.mse(x @ W, t)
        gW = gn.grad(loss, W)
    """
    where = user_location()
    if not isinstance(y, Node):
        raise GradError(f"grad: y must be a graph node, got {type(y).__name__} (at {where})")
    single = isinstance(wrt, Node)
    targets = [wrt] if single else list(wrt)
    for w in targets:
        if not isinstance(w, Node):
            raise GradError(f"grad: wrt holds {type(w).__name__}, not a graph node (at {where})")
        if w.dtype.kind != "f":
            raise GradError(f"grad: cannot differentiate with respect to {w.label()}: its dtype "
                            f"{w.dtype} is not float (at {where})")
    if y.dtype.kind != "f":
        raise GradError(f"grad: {y.label()} has dtype {y.dtype}; only float values have "
                        f"gradients (at {where})")
    if seed is None:
        if y.ndim != 0:
            raise GradError(f"grad: {y.label()} is not a scalar; pass seed= a node of its shape "
                            f"{y.shape} (the adjoint to start from), or reduce it with gn.sum "
                            f"(at {where})")
        seed = const_node(np.ones((), y.dtype))
    elif not isinstance(seed, Node) or seed.shape != y.shape:
        raise GradError(f"grad: seed must be a node of shape {y.shape}, got "
                        f"{getattr(seed, 'shape', type(seed).__name__)} (at {where})")

    order = topological_order([y])
    # Only nodes on a path from a wrt to y need an adjoint.
    target_ids = {id(w) for w in targets}
    on_path = nodes_on_paths(order, target_ids)

    adjoints = {id(y): [seed]}
    for node in reversed(order):
        contributions = adjoints.pop(id(node), None)
        if contributions is None:
            continue
        g = _sum_all(contributions)
        if id(node) in target_ids:
            adjoints[id(node)] = [g]  # keep for the result
        if not node.inputs:
            continue
        opdef = OPS[node.op]
        if opdef.vjp is None:
            raise GradError(f"grad: the op '{node.op}' of {node.label()} has no gradient rule")
        thunks = opdef.vjp(g, node, *node.inputs, **node.attrs)
        for inp, thunk in zip(node.inputs, thunks):
            if thunk is None or id(inp) not in on_path:
                continue
            adjoints.setdefault(id(inp), []).append(thunk())

    results = []
    for w in targets:
        parts = adjoints.get(id(w))
        results.append(_sum_all(parts) if parts else ops.zeros_like(w))
    return results[0] if single else type(wrt)(results) if isinstance(wrt, tuple) else results


def _sum_all(parts):
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def nodes_on_paths(order, target_ids):
    """The ids of the nodes of `order` (topologically ordered) that are one of `target_ids`
    or read one, directly or not: the nodes gn.grad gives an adjoint."""
    on_path = set()
    for node in order:
        if id(node) in target_ids or any(id(i) in on_path for i in node.inputs):
            on_path.add(id(node))
    return on_path
