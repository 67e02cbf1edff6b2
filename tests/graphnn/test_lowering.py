"""Lowering (graphnn/lowering.py): each node lowers by its op's kind and the lowering
function of its stanza, and the fusion decisions hold (what fuses, what a reduction
finishes, what a matmul reads transposed)."""
import numpy as np
import pytest

import graphnn as gn
from graphnn import lowering as L, passes
from graphnn.registry import OPS, OpDef
from kernels import ir


def lowered(outputs):
    """(program, Lowering) of `outputs` as the compiled backends lower them (after passes)."""
    graph = gn.Graph(list(outputs))
    roots, _ = passes.optimize(list(outputs))
    return L.lower(roots, graph.inputs, graph.params + graph.variables, roots, [])


def steps_of(program, kind):
    return [s for s in program.steps if isinstance(s, kind)]


def test_is_elementwise_follows_the_kind_of_every_op():
    x = gn.input("x", (2, 3))
    assert L.is_elementwise(gn.exp(x)) and L.is_elementwise(gn.transpose(x))
    assert L.is_elementwise(gn.ops.reciprocal_count(x))
    assert not L.is_elementwise(gn.sum(x)) and not L.is_elementwise(x)
    assert not L.is_elementwise(gn.reshape(x, (6,)))
    for opdef in OPS.values():
        fusible = opdef.kind in ("elementwise", "pattern", "size")
        assert fusible == (opdef.kind in L.FUSIBLE_KINDS), opdef.name


def test_each_kind_makes_its_kernel_step():
    x = gn.input("x", (None, 6, 6, 2))
    w = gn.param("w", shape=(3, 3, 2, 4), seed=0)
    a = gn.input("a", (4, 3))
    b = gn.input("b", (5, 3))
    conv = gn.conv2d(x, w, padding="same")              # window (stride, pad top, left)
    pooled = gn.max_pool2d(conv, 2)                     # window (size, stride)
    flat = gn.reshape(pooled, (-1, 36))                 # view
    product = a @ gn.transpose(b)                       # matmul, b read transposed
    joined = gn.concat([a, a], axis=1)                  # place
    padded = gn.ops.pad_axis(a, 0, 1, 2)                # place, zero-filled
    mask = gn.ops.argmax_mask(a, axis=1)                # arg_reduce
    total = gn.sum(gn.exp(a), axis=1)                   # reduce, exp fused in
    program, _ = lowered([flat, product, joined, padded, mask, total])
    windows = steps_of(program, ir.Window)
    assert [(s.helper, s.params, len(s.args)) for s in windows] == [
        ("conv2d", (1, 1, 1), 2), ("max_pool2d", (2, 2), 1)]
    (view,) = steps_of(program, ir.Reshape)
    assert view.out.shape == ("d0", 36) and view.out.base is view.src
    (matmul,) = steps_of(program, ir.Matmul)
    assert (matmul.trans_a, matmul.trans_b) == (False, True)
    assert matmul.b.role == "input"  # b itself: the transpose has no step
    places = steps_of(program, ir.Place)
    assert [(p.zero_fill, [(axis, start) for _, axis, start in p.parts]) for p in places] == [
        (False, [(1, 0), (1, 3)]), (True, [(0, 1)])]
    (argmax,) = steps_of(program, ir.ArgmaxMask)
    assert argmax.axes == (1,)
    (reduce,) = steps_of(program, ir.Reduce)
    assert reduce.kind == "sum" and reduce.axes == (1,) and reduce.post is None
    assert any("exp(" in code for _, code in reduce.expr.stmts)
    assert not steps_of(program, ir.Elementwise)  # transposes and exp fused away


def test_a_reduction_is_finished_in_the_step_of_its_sole_elementwise_reader():
    x = gn.input("x", (4, 5))
    total = gn.sum(x, axis=1)
    scaled = gn.sqrt(total * 0.5)
    program, lowering = lowered([scaled])
    (reduce,) = program.steps
    assert isinstance(reduce, ir.Reduce) and reduce.post is not None
    assert "acc" in str(reduce.post.stmts) and "sqrt(" in str(reduce.post.stmts)
    (total_node,) = [n for n in lowering.nodes if n.op == "sum"]
    (root,) = lowering.outputs
    assert lowering.sole_elementwise_reader(total_node) is root
    assert lowering.reduction_finished_in(total_node) is root
    assert lowering.reductions_finished_by(root) == [total_node]
    # a reduction read twice is not finished by either reader
    program, lowering = lowered([gn.sqrt(total), gn.exp(total)])
    (total_node,) = [n for n in lowering.nodes if n.op == "sum"]
    assert lowering.sole_elementwise_reader(total_node) is None
    assert lowering.reduction_finished_in(total_node) is None
    assert [type(s) for s in program.steps] == [ir.Reduce, ir.Elementwise, ir.Elementwise]


def test_max_is_found_as_a_reduction_by_its_kind():
    x = gn.input("x", (3, 4))
    program, lowering = lowered([gn.max(gn.abs(x), axis=0) * 2.0])
    (reduce,) = program.steps
    assert reduce.kind == "max" and reduce.post is not None
    values = gn.compile(gn.max(gn.abs(x), axis=0) * 2.0, backend="cpu")(
        x=np.arange(-6, 6, dtype=np.float32).reshape(3, 4))
    np.testing.assert_array_equal(values, [12, 10, 8, 10])


def test_a_mask_of_labels_is_recomputed_in_each_consumer():
    z = gn.input("z", (None, 4))
    y = gn.input("y", (None,), dtype="int64")
    hot = gn.ops.eq(gn.reshape(y, (-1, 1)), gn.const(np.arange(4)))
    _, lowering = lowered([gn.sum(hot * z), gn.sum(hot * gn.exp(z))])
    (mask,) = [n for n in lowering.nodes if n.op == "eq"]
    assert OPS["eq"].recompute and lowering.recomputed(mask) and lowering.inlined(mask)
    assert id(mask) not in lowering.buffers


def test_a_stanza_lowering_function_is_what_lowering_calls():
    """An op of kind "view" added at run time: its own lower function makes its step."""
    def infer(specs):
        (x,) = specs
        return (gn.shapes.static_size(x.sym_shape),), x.dtype

    calls = []

    def lower(lowering, node, comment):
        calls.append(node)
        lowering.view(node, lowering.buffer_of(node.inputs[0]), comment)

    gn.register_op(OpDef("graphnn_test_ravel", "Shape", infer, np.ravel,
                         lambda g, out, x: (lambda: gn.reshape(g, x.shape),),
                         kind="view", lower=lower))
    try:
        x = gn.input("x", (2, 3))
        y = gn.registry.apply("graphnn_test_ravel", (gn.exp(x),))
        f = gn.compile(y, backend="cpu")
        assert calls == [y]
        assert isinstance(f.program.steps[-1], ir.Reshape)
        X = np.arange(6, dtype=np.float32).reshape(2, 3) / 6
        np.testing.assert_allclose(f(x=X), np.exp(X).ravel(), rtol=1e-6)
    finally:
        gn.unregister_op("graphnn_test_ravel")


def test_an_op_without_lowering_is_named_in_the_error():
    x = gn.input("x", (2, 3))
    with pytest.raises(gn.GraphError, match="cannot lower op 'softmax' \\(kind composite\\)"):
        gn.compile(gn.softmax(x), backend="cpu", optimize_graph=False)


def test_only_a_swap_of_two_axes_is_read_transposed_by_a_matmul():
    a, b = gn.input("a", (3, 3)), gn.input("b", (3, 3))
    A = np.arange(9, dtype=np.float32).reshape(3, 3)
    B = np.eye(3, dtype=np.float32) + np.triu(np.ones((3, 3), np.float32), 1)
    for axes, expected in (((1, 0), A.T @ B), ((0, 1), A @ B)):
        f = gn.compile(gn.transpose(a, axes) @ b, backend="cpu")
        assert any(isinstance(s, ir.Matmul) and s.trans_a == (axes == (1, 0))
                   for s in f.program.steps)
        np.testing.assert_allclose(f(a=A, b=B), expected, rtol=1e-6)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_casts_are_not_fused_across_dtypes(backend):
    """A fused group computes in one dtype: a cast to int inside a float kernel must still
    truncate, and a float constant before a cast to int must stay a float."""
    from helpers import assert_backends_agree
    x = gn.input("x", (4,), dtype="float64")
    outputs = [gn.cast(gn.cast(x, "int32"), "float64") * 1.0 + 0.5,
               gn.sum(gn.cast(x * 0.5, "int32")),
               gn.cast(x * 2.5, "int64") + 1]
    X = np.array([1.7, -2.3, 3.9, 0.4])
    got = assert_backends_agree(outputs, {"x": X}, backends=(backend,))[backend]
    np.testing.assert_array_equal(got[0], [1.5, -1.5, 3.5, 0.5])
    np.testing.assert_array_equal(got[2], [5, -4, 10, 2])


def test_constant_arrays_get_numbered_const_buffers():
    C = np.arange(6, dtype=np.float32).reshape(3, 2) - 2.5
    D = np.array([[10.0, -20.0]], np.float32)
    x = gn.input("x", (None, 3))
    out = gn.exp(x @ gn.const(C) + gn.const(np.ones((1, 2), np.float32))) * gn.const(D)
    program, _ = lowered([out])
    consts = [(b.name, b.shape, b.role, b.arg_index) for b in program.consts]
    assert [c[1:] for c in consts] == [((3, 2), "const", 0), ((1, 2), "const", 1),
                                       ((1, 2), "const", 2)] and \
        [c[0] for c in consts] == ["c0", "c1", "c2"]
    X = np.array([[0.5, -1.0, 0.25], [0.0, 0.1, -0.2]], np.float32)
    expected = np.exp(X.astype(np.float64) @ C + 1.0) * D
    for backend in ("numpy", "cpu"):
        got = gn.compile(out, backend=backend)(x=X)
        np.testing.assert_allclose(got, expected, rtol=2e-6)


def _square_chain(combine):
    """t = a @ w (a temporary), u = combine(t) (one elementwise step), out = u @ w."""
    a, w = gn.input("a", (4, 4)), gn.param("w_chain", shape=(4, 4), seed=3)
    return a, w, combine(a @ w) @ w


def test_an_elementwise_step_writes_over_the_temporary_it_alone_reads_in_place():
    a, w, out = _square_chain(lambda t: gn.tanh(t) * 2.0)
    program, _ = lowered([out])
    first, second = steps_of(program, ir.Matmul)
    (step,) = steps_of(program, ir.Elementwise)
    assert step.out.name == first.out.name  # tanh(t) * 2 overwrites t
    assert second.a.name == first.out.name
    A = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)
    W = w.value.astype(np.float64)
    expected = (np.tanh(A @ W) * 2.0) @ W
    np.testing.assert_allclose(gn.compile(out, backend="cpu")(a=A), expected, rtol=1e-5,
                               atol=1e-6)


def test_a_step_reading_a_temporary_transposed_never_writes_over_it():
    # t + t.T in place over t would overwrite elements its later iterations still read
    a, w, out = _square_chain(lambda t: t + gn.transpose(t))
    program, _ = lowered([out])
    first, _ = steps_of(program, ir.Matmul)
    (step,) = steps_of(program, ir.Elementwise)
    assert step.out.name != first.out.name
    A = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)
    W = w.value.astype(np.float64)
    T = A @ W
    expected = (T + T.T) @ W
    np.testing.assert_allclose(gn.compile(out, backend="cpu")(a=A), expected, rtol=1e-5,
                               atol=1e-6)


def test_a_dead_temporary_is_reused_by_a_later_step_of_its_shape():
    a, w = gn.input("a", (4, 4)), gn.param("w_reuse", shape=(4, 4), seed=5)
    t1 = a @ w
    t2 = t1 @ w    # the last read of t1
    t3 = t2 @ w    # may take t1's memory
    out = t3 @ w
    program, _ = lowered([out])
    m1, m2, m3, m4 = steps_of(program, ir.Matmul)
    assert m3.out.name == m1.out.name and m2.out.name != m1.out.name
    assert m4.a.name == m1.out.name
    A = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)
    W = w.value.astype(np.float64)
    np.testing.assert_allclose(gn.compile(out, backend="cpu")(a=A), A @ W @ W @ W @ W,
                               rtol=1e-5, atol=1e-6)


# -- expressions made once per structure (Lowering.group_expression): the program is the
# one made expression by expression --

def _lowered_text(roots, inputs, states, monkeypatch=None):
    """repr of the program lowered from `roots` (after the passes), and how many
    expressions were built node by node."""
    built = []
    expression = L.Lowering.expression

    def counted(self, *args, **kwargs):
        built.append(args[0])
        return expression(self, *args, **kwargs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(L.Lowering, "expression", counted)
        if monkeypatch == "off":
            patch.setattr(L.Lowering, "_expression_key", lambda self, root: (None, []))
        optimized, _ = passes.optimize(roots)
        program, _ = L.lower(optimized, inputs, states, optimized, [])
    return repr(program), len(built)


def _twice(seed):
    """Two copies of fuzz graph `seed` (inputs and parameters of their own), as one graph."""
    import graph_fuzzer
    from graphnn.graph import topological_order
    copies = [graph_fuzzer.build(seed) for _ in range(2)]
    roots = [r for fg in copies for r in list(fg.outputs) + list(fg.updates.values())]
    order = topological_order(roots)
    return (roots, [n for n in order if n.op == "input"],
            [n for n in order if n.op in ("param", "variable")])


@pytest.mark.parametrize("seed", range(0, 120, 3))
def test_expressions_found_by_structure_lower_as_they_did_node_by_node(seed):
    roots, inputs, states = _twice(seed)
    with_memo, built = _lowered_text(roots, inputs, states)
    without, built_without = _lowered_text(roots, inputs, states, "off")
    assert with_memo == without
    assert built <= built_without


def test_a_residual_stack_builds_each_block_expression_once():
    x = gn.input("x", (None, 8))
    h, params = x, []
    for k in range(6):
        W, b = gn.param(f"W{k}", shape=(8, 8), seed=k), gn.param(f"b{k}", shape=(8,))
        params += [W, b]
        h = h + gn.relu(h @ W + b) * 0.5
    loss = gn.mean(gn.square(h))
    roots = [loss] + gn.grad(loss, params)
    with_memo, built = _lowered_text(roots, [x], params)
    without, built_without = _lowered_text(roots, [x], params, "off")
    assert with_memo == without
    assert built_without >= 6 * 4 and built <= built_without - 5 * 3  # (blocks 2-6: found)
    feeds = {"x": np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)}
    got = gn.compile(roots, backend="cpu", library=True, progress=False)(**feeds)
    expected = gn.compile(roots, backend="numpy")(**feeds)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=1e-6)


def _rnn_gradient(steps):
    """The gradient graph of a tanh RNN unrolled over `steps` (one Wy shared by every time
    step: its gradient is a sum of `steps` products, the biases' a chain of adds)."""
    rng = np.random.default_rng(steps)
    x = gn.input("x", (None, steps, 4))
    Wx = gn.param("Wx", (rng.standard_normal((4, 6)) * 0.3).astype(np.float32))
    Wy = gn.param("Wy", (rng.standard_normal((6, 6)) * 0.3).astype(np.float32))
    b = gn.param("b", np.zeros(6, np.float32))
    y = None
    for t in range(steps):
        z = gn.reshape(gn.slice_axis(x, 1, t, t + 1), (-1, 4)) @ Wx + b
        y = gn.tanh(z if y is None else z + y @ Wy)
    loss = gn.mean(gn.square(y))
    return [loss] + gn.grad(loss, [Wx, Wy, b]), [x], [Wx, Wy, b]


def test_lowering_a_recurrent_gradient_asks_about_each_node_a_bounded_number_of_times(
        monkeypatch):
    # (each reduction under the chain of adds used to walk the whole chain up to its root:
    # quadratic in the time steps, 0.15 s of lowering at T=100. Counted, not timed.)
    # (and a weight's transpose, read by the matmul of every time step, was asked about by
    # each of them, looking at all of its readers: kind_of counted)
    calls, kinds = [], []
    real, real_kind_of = L.Lowering.inlined, L.kind_of

    def counted(self, node):
        calls.append(1)
        return real(self, node)

    def counted_kind_of(node):
        kinds.append(1)
        return real_kind_of(node)
    monkeypatch.setattr(L.Lowering, "inlined", counted)
    monkeypatch.setattr(L, "kind_of", counted_kind_of)
    per_node, kinds_per_node = {}, {}
    for steps in (25, 100):
        roots, inputs, params = _rnn_gradient(steps)
        calls.clear()
        kinds.clear()
        graph_roots, _ = passes.optimize(roots)
        _, lowering = L.lower(graph_roots, inputs, params, graph_roots, [])
        per_node[steps] = len(calls) / len(lowering.nodes)
        kinds_per_node[steps] = len(kinds) / len(lowering.nodes)
    assert per_node[100] < 12
    assert per_node[100] < 1.5 * per_node[25]  # (as many per node at 4x the length)
    assert kinds_per_node[100] < 1.5 * kinds_per_node[25]
    # and the numbers are the numpy back end's
    roots, inputs, params = _rnn_gradient(12)
    feeds = {"x": np.random.default_rng(1).standard_normal((3, 12, 4)).astype(np.float32)}
    got = gn.compile(roots, backend="cpu", library=True, progress=False)(**feeds)
    expected = gn.compile(roots, backend="numpy")(**feeds)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("library", [False, True])
def test_a_chain_hundreds_of_ops_deep_is_fused_in_groups_of_bounded_depth(library):
    # (an expression is built by recursion over its fused group: a chain of 400 inlined
    # ops, a bias's gradient over 400 time steps, raised RecursionError)
    x = gn.input("x", (None, 4))
    h = x
    for _ in range(400):
        h = h * 0.5 + x
    program, lowering = lowered([h])
    depth = L.MAX_GROUP_DEPTH
    assert len(program.steps) >= 800 // depth
    assert all(len(nodes) <= 2 * depth for nodes in lowering.step_nodes)
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}
    got = gn.compile(h, backend="cpu", library=library, progress=False)(**feeds)
    np.testing.assert_allclose(got, gn.compile(h, backend="numpy")(**feeds), rtol=1e-5)
