import numpy as np

import graphnn as gn


def test_lecture_graph_shares_3x3_and_evaluates_to_18_8():
    x1, x2, x3 = gn.input("x1", ()), gn.input("x2", ()), gn.input("x3", ())
    f1 = 4 * x2 + x2 ** 2 + 3 * x3
    f2 = x1 * x2 + 3 * x3
    graph = gn.Graph([f1, f2]).lint()
    times_x3 = [n for n in graph.nodes if n.op == "mul" and x3 in n.inputs]
    assert len(times_x3) == 1
    # consts 4, 2, 3; inputs x1..x3; 4*x2, x2**2, add, 3*x3, add, x1*x2, add
    assert len(graph.nodes) == 13
    out = gn.compile([f1, f2], backend="numpy")(x1=1.0, x2=2.0, x3=2.0)
    assert [float(v) for v in out] == [18.0, 8.0]
