"""The lecture's computation graph f(x1, x2, x3) = (4*x2 + x2**2 + 3*x3, x1*x2 + 3*x3).

`3*x3` appears in both outputs but is ONE node: graphnn shares identical nodes. With
x = (1, 2, 2) the graph evaluates to (18, 8).

Run: python examples/lecture_graph.py
"""
import graphnn as gn


def build():
    x1, x2, x3 = gn.input("x1", ()), gn.input("x2", ()), gn.input("x3", ())
    f1 = gn.add(4 * x2 + x2 ** 2, 3 * x3, name="f1")  # 4*x2 + x2**2 + 3*x3
    f2 = gn.add(x1 * x2, 3 * x3, name="f2")           # x1*x2 + 3*x3
    return (x1, x2, x3), (f1, f2)


def main():
    (x1, x2, x3), (f1, f2) = build()
    graph = gn.Graph([f1, f2])
    print("The lecture graph f(x1, x2, x3) = (4*x2 + x2**2 + 3*x3, x1*x2 + 3*x3)")
    print(graph.summary())
    shared = [n for n in graph.nodes if n.op == "mul" and x3 in n.inputs]
    print(f"nodes computing 3*x3: {len(shared)} (shared by both outputs)")
    f = gn.compile([f1, f2], backend="numpy")
    out1, out2 = f(x1=1.0, x2=2.0, x3=2.0)
    print(f"f(1, 2, 2) = ({out1:g}, {out2:g})")
    return out1, out2


if __name__ == "__main__":
    main()
