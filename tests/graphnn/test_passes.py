"""Graph passes (graphnn/passes.py): each pure, lint-clean, and doing what its name says."""
import numpy as np

import graphnn as gn
from graphnn import passes
from graphnn.graph import topological_order


def ops_of(roots):
    return [n.op for n in topological_order(roots)]


def test_decompose_leaves_only_primitives_and_lints():
    x = gn.input("x", (None, 5))
    y = gn.input("y", (None,), dtype="int64")
    loss = gn.softmax_cross_entropy(gn.log_softmax(x), y) + gn.mse(gn.softmax(x), x)
    (out,) = passes.decompose([loss])
    assert not {"softmax", "log_softmax", "softmax_cross_entropy", "mse", "mean",
                "one_hot"} & set(ops_of([out]))
    gn.Graph([out]).lint()
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32),
             "y": np.array([0, 4, 2])}
    a = gn.compile(loss, backend="numpy")(**feeds)
    b = gn.compile(out, backend="numpy")(**feeds)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_passes_are_pure():
    x = gn.input("x", (3,))
    y = (x * 1.0 + 0.0) * gn.const(2.0) * gn.const(3.0)
    before = topological_order([y])
    passes.optimize([y])
    assert topological_order([y]) == before  # the input graph is untouched


def test_fold_constants_and_simplify():
    x = gn.input("x", (3,))
    y = x * (gn.const(2.0) * gn.const(3.0)) + gn.const(0.0)
    (folded,) = passes.fold_constants([y])
    consts = [n for n in topological_order([folded]) if n.op == "const"]
    assert any(float(c.value) == 6.0 for c in consts)
    (simple,) = passes.simplify([folded])
    assert simple.op == "mul" and simple.inputs[0] is x
    assert float(simple.inputs[1].value) == 6.0
    z = gn.neg(gn.neg(x)) * 1.0
    assert passes.simplify([z])[0] is x
    gn.Graph([simple]).lint()


def test_simplify_keeps_broadcasting_shapes():
    x = gn.input("x", (3,))
    y = x * gn.const(np.ones((2, 3), np.float32))  # a multiply by ones that broadcasts
    (out,) = passes.simplify([y])
    assert out.shape == (2, 3)


def test_cse_shares_twins_and_no_pass_keeps_dead_code():
    x = gn.input("x", (3,))
    a = gn.exp(x)
    # a node made without hash-consing, as a rewrite might make one
    from graphnn.node import make_node
    twin = make_node("exp", (), [x], a.sym_shape, a.dtype, intern=False)
    y = a + twin
    (out,) = passes.common_subexpressions([y])
    assert out.inputs[0] is out.inputs[1]
    unused = gn.tanh(x)  # not reached from y: no pass keeps it (dead code never survives)
    for rewrite in (passes.common_subexpressions, passes.simplify, passes.fold_constants,
                    passes.decompose):
        assert unused not in topological_order(rewrite([out]))


def test_simplify_counts_a_reduction_result_on_the_reduction_input():
    x = gn.input("x", (None, 4, 5))
    for reduce in (gn.sum, gn.max):  # reductions are found by kind, not by name
        row = reduce(x, axis=2)
        (out,) = passes.simplify([row * gn.ops.reciprocal_count(row, axis=1)])
        (count,) = [n for n in topological_order([out]) if n.op == "reciprocal_count"]
        assert count.inputs[0] is x and count.attr("axis") == 1
    X = np.random.default_rng(1).standard_normal((2, 4, 5)).astype(np.float32)
    mean_of_max = gn.mean(gn.max(x, axis=2), axis=1)
    np.testing.assert_allclose(gn.compile(mean_of_max, backend="cpu")(x=X),
                               X.max(axis=2).mean(axis=1), rtol=1e-6)


def test_a_sum_of_all_of_a_sum_is_one_sum():
    x = gn.input("x", (3, 4))
    (out,) = passes.simplify([gn.sum(gn.sum(x, axis=1))])
    assert out.op == "sum" and out.inputs[0] is x and out.attr("axis") is None


def test_folding_leaves_results_beyond_the_limit_uncomputed(monkeypatch):
    """A transpose of a large constant is not folded, and not even computed to find that out
    (an imported 100M-element weight would be copied for nothing)."""
    from graphnn import passes
    from graphnn.registry import OPS
    big = gn.const(np.ones((passes.FOLD_LIMIT // 4 + 1, 8), np.float32))
    x = gn.input("x", (None, passes.FOLD_LIMIT // 4 + 1))
    out = x @ gn.transpose(gn.transpose(big))
    calls = []
    impl = OPS["transpose"].impl
    monkeypatch.setattr(OPS["transpose"], "impl",
                        lambda *a, **k: calls.append(1) or impl(*a, **k))
    (folded,) = passes.fold_constants([out])
    assert calls == []
    assert [n.op for n in gn.Graph([folded]).nodes].count("transpose") == 2
    small = gn.transpose(gn.const(np.arange(6.0).reshape(2, 3)))
    (done,) = passes.fold_constants([small])
    assert done.op == "const" and done.value.shape == (3, 2)


def _dense_block(layers, growth=4, channels=6):
    """A dense block as torchvision writes DenseNet: each layer reads the concatenation of
    all the features before it (the block's input and every earlier layer's output)."""
    rng = np.random.default_rng(3)
    x = gn.input("x", (None, 5, 5, channels))
    features = [x]
    for k in range(layers):
        joined = gn.concat(features, axis=-1) if len(features) > 1 else x
        w = gn.const(rng.standard_normal((1, 1, joined.shape[-1], growth)).astype(np.float32))
        features.append(gn.relu(gn.conv2d(joined, w)))
    return x, gn.concat(features, axis=3)


def test_a_concatenation_of_all_earlier_features_adds_to_the_one_before():
    x, out = _dense_block(6)
    (simple,) = passes.simplify([out])
    concats = [n for n in topological_order([simple]) if n.op == "concat"]
    assert len(concats) == 6 and all(len(c.inputs) == 2 for c in concats)
    # each joins the concatenation before it and one new feature
    assert [c.shape[-1] for c in concats] == [10, 14, 18, 22, 26, 30]
    assert all(c.inputs[0].op == "concat" for c in concats[1:])
    assert concats[0].inputs[0] is x
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 5, 5, 6)).astype(np.float32)}
    want = gn.compile(out, backend="numpy")(**feeds)  # (no graph passes)
    for passes_on in (True, False):
        got = gn.compile(out, backend="cpu", passes={"simplification": passes_on})(**feeds)
        np.testing.assert_array_equal(got, want)  # (copies only: the same numbers)
    # a concatenation whose prefix the graph does not have, or along another axis, stays
    a, b, c = (gn.input(n, (2, 3)) for n in "abc")
    assert passes.simplify([gn.concat([a, b, c])])[0].inputs == (a, b, c)
    pair, rows = passes.simplify([gn.concat([a, b], axis=1), gn.concat([a, b, c], axis=0)])
    assert pair.inputs == (a, b) and rows.inputs == (a, b, c)


def test_a_deeper_dense_block_compiles_no_new_concatenation_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 5, 5, 6)).astype(np.float32)}
    counts = []
    for layers in (4, 9):
        _, out = _dense_block(layers)
        f = gn.compile(out, backend="cpu", library=True)
        want = gn.compile(out, backend="numpy")(**feeds)
        np.testing.assert_array_equal(f(**feeds), want)
        counts.append(f.stats["kernels_compiled"])
    # 9 layers: the same kernels as 4 (it was one place kernel per count of parts)
    assert counts[0] > 0 and counts[1] == 0, counts
