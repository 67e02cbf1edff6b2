"""Backpropagation step by step, as the lecture works it by hand, computed by graphnn.

Part 1, the classic 2-2-2 network: inputs i1 = 0.05 and i2 = 0.10, hidden neurons h1 and h2,
output neurons o1 and o2, all with the sigmoid; weights w1..w4 (input -> hidden),
w5..w8 (hidden -> output), biases b1 (hidden) and b2 (output); targets 0.01 and 0.99;
E_total = sum 1/2 (target - out)^2; one gradient-descent step with learning rate 0.5.
Every weight is its own scalar parameter, so the graph is exactly the lecture's drawing.
As in the hand computation, the step updates the weights and leaves the biases as they are.

Part 2, the lecture graph f(x1, x2, x3) = (4*x2 + x2**2 + 3*x3, x1*x2 + 3*x3) with its
constants 4 and 3 made parameters p1 and p2, and a squared error E against targets.

Run: python examples/backprop_step_by_step.py
"""
import numpy as np

import graphnn as gn

INPUTS = {"i1": 0.05, "i2": 0.10}
TARGETS = {"t1": 0.01, "t2": 0.99}
INITIAL = {"w1": 0.15, "w2": 0.20, "w3": 0.25, "w4": 0.30,
           "w5": 0.40, "w6": 0.45, "w7": 0.50, "w8": 0.55,
           "b1": 0.35, "b2": 0.60}
WEIGHTS = ("w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8")
LEARNING_RATE = 0.5

# Part 2: x = (x1, x2, x3), the targets of (f1, f2), and the lecture's constants (p1, p2)
LECTURE_X, LECTURE_TARGETS, LECTURE_P = (1.0, 2.0, 2.0), (17.0, 10.0), (4.0, 3.0)

# (value, how the lecture writes it) in the order the hand computation goes
FORWARD = (
    ("net_h1", "w1*i1 + w2*i2 + b1"), ("out_h1", "sigmoid(net_h1)"),
    ("net_h2", "w3*i1 + w4*i2 + b1"), ("out_h2", "sigmoid(net_h2)"),
    ("net_o1", "w5*out_h1 + w6*out_h2 + b2"), ("out_o1", "sigmoid(net_o1)"),
    ("net_o2", "w7*out_h1 + w8*out_h2 + b2"), ("out_o2", "sigmoid(net_o2)"),
    ("E_o1", "1/2 (t1 - out_o1)^2"), ("E_o2", "1/2 (t2 - out_o2)^2"),
    ("E_total", "E_o1 + E_o2"),
)
BACKWARD = (
    ("out_o1", "-(t1 - out_o1)"),
    ("net_o1", "dE/dout_o1 * out_o1 (1 - out_o1)"),
    ("w5", "dE/dnet_o1 * out_h1"), ("w6", "dE/dnet_o1 * out_h2"),
    ("out_o2", "-(t2 - out_o2)"),
    ("net_o2", "dE/dout_o2 * out_o2 (1 - out_o2)"),
    ("w7", "dE/dnet_o2 * out_h1"), ("w8", "dE/dnet_o2 * out_h2"),
    ("b2", "dE/dnet_o1 + dE/dnet_o2"),
    ("out_h1", "dE/dnet_o1 * w5 + dE/dnet_o2 * w7"),
    ("net_h1", "dE/dout_h1 * out_h1 (1 - out_h1)"),
    ("w1", "dE/dnet_h1 * i1"), ("w2", "dE/dnet_h1 * i2"),
    ("out_h2", "dE/dnet_o1 * w6 + dE/dnet_o2 * w8"),
    ("net_h2", "dE/dout_h2 * out_h2 (1 - out_h2)"),
    ("w3", "dE/dnet_h2 * i1"), ("w4", "dE/dnet_h2 * i2"),
    ("b1", "dE/dnet_h1 + dE/dnet_h2"),
)


def build_network():
    """The network as a graph; returns {name: node} for the inputs, parameters and every
    net/out/error value named as in the lecture."""
    n = {name: gn.input(name, (), dtype="float64") for name in (*INPUTS, *TARGETS)}
    n.update({name: gn.param(name, np.float64(value)) for name, value in INITIAL.items()})
    sigmoid_neuron = (("h1", "w1", "w2", "i1", "i2", "b1"), ("h2", "w3", "w4", "i1", "i2", "b1"),
                      ("o1", "w5", "w6", "out_h1", "out_h2", "b2"),
                      ("o2", "w7", "w8", "out_h1", "out_h2", "b2"))
    for neuron, wa, wb, xa, xb, bias in sigmoid_neuron:
        net = gn.add(n[wa] * n[xa] + n[wb] * n[xb], n[bias], name=f"net_{neuron}")
        n[f"net_{neuron}"] = net
        n[f"out_{neuron}"] = gn.sigmoid(net, name=f"out_{neuron}")
    n["E_o1"] = gn.mul(0.5, gn.square(n["t1"] - n["out_o1"]), name="E_o1")
    n["E_o2"] = gn.mul(0.5, gn.square(n["t2"] - n["out_o2"]), name="E_o2")
    n["E_total"] = gn.add(n["E_o1"], n["E_o2"], name="E_total")
    return n


def backprop_step():
    """Run the forward pass, the backward pass and one gradient-descent step.

    Returns (forward, gradients, new_weights): {name: value} for every forward value,
    {name: dE_total/dname} for every parameter and every net/out value, and the weights
    after the step.
    """
    n = build_network()
    wrt = [name for name, _ in BACKWARD]
    grads = gn.grad(n["E_total"], [n[name] for name in wrt])
    dE = dict(zip(wrt, grads))
    updates = {n[w]: n[w] - LEARNING_RATE * dE[w] for w in WEIGHTS}
    outputs = [n[name] for name, _ in FORWARD] + grads
    step = gn.compile(outputs, updates=updates, backend="numpy")
    values = [float(v) for v in step(**INPUTS, **TARGETS)]
    forward = {name: v for (name, _), v in zip(FORWARD, values)}
    gradients = dict(zip(wrt, values[len(FORWARD):]))
    new_weights = {w: float(n[w].value) for w in WEIGHTS}
    return forward, gradients, new_weights


def lecture_graph_gradients(x=LECTURE_X, targets=LECTURE_TARGETS, p=LECTURE_P):
    """dE/dp1 and dE/dp2 for f1 = p1*x2 + x2**2 + p2*x3, f2 = x1*x2 + p2*x3 and
    E = 1/2 (f1 - t1)^2 + 1/2 (f2 - t2)^2, from graphnn and from the chain rule by hand.

    `p2*x3` is one node used by both outputs, so its adjoint is the sum of two paths:
    dE/dp2 = (f1 - t1) * x3 + (f2 - t2) * x3.
    """
    x1, x2, x3 = (gn.input(name, (), dtype="float64") for name in ("x1", "x2", "x3"))
    p1, p2 = gn.param("p1", np.float64(p[0])), gn.param("p2", np.float64(p[1]))
    f1 = p1 * x2 + x2 ** 2 + p2 * x3
    f2 = x1 * x2 + p2 * x3
    E = 0.5 * gn.square(f1 - targets[0]) + 0.5 * gn.square(f2 - targets[1])
    dp1, dp2 = gn.grad(E, [p1, p2])
    f = gn.compile([f1, f2, E, dp1, dp2], backend="numpy")
    v_f1, v_f2, v_E, v_dp1, v_dp2 = (float(v) for v in f(x1=x[0], x2=x[1], x3=x[2]))
    shared = [node for node in gn.Graph([E]).nodes if node.op == "mul" and p2 in node.inputs]
    return {"f1": v_f1, "f2": v_f2, "E": v_E, "dE/dp1": v_dp1, "dE/dp2": v_dp2,
            "hand dE/dp1": (v_f1 - targets[0]) * x[1],
            "hand dE/dp2": (v_f1 - targets[0]) * x[2] + (v_f2 - targets[1]) * x[2],
            "nodes computing p2*x3": len(shared)}


def _row(name, formula, value, width=38):
    return f"  {name:<12} = {formula:<{width}} = {value:.9f}"


def main():
    forward, gradients, new_weights = backprop_step()
    print("Part 1: the 2-2-2 sigmoid network, one step of backpropagation")
    print(f"inputs i1 = {INPUTS['i1']}, i2 = {INPUTS['i2']}; targets t1 = {TARGETS['t1']}, "
          f"t2 = {TARGETS['t2']}; learning rate {LEARNING_RATE}")
    print("\nThe forward pass")
    for name, formula in FORWARD:
        print(_row(name, formula, forward[name]))
    print("\nThe backward pass (each dE_total/d... is a node of the derivative graph)")
    for name, formula in BACKWARD:
        print(_row(f"dE/d{name}", formula, gradients[name]))
    print(f"\nThe weights after one step, w+ = w - {LEARNING_RATE} * dE/dw")
    print("(the biases stay as they are, as in the hand computation)")
    for w in WEIGHTS:
        g = f"{gradients[w]:.9f}" if gradients[w] >= 0 else f"({gradients[w]:.9f})"
        print(_row(f"{w}+", f"{INITIAL[w]:.2f} - {LEARNING_RATE} * {g}", new_weights[w]))

    lecture = lecture_graph_gradients()
    print("\nPart 2: the lecture graph with its constants as parameters")
    (p1, p2), (t1, t2) = LECTURE_P, LECTURE_TARGETS
    print(f"  f1 = p1*x2 + x2**2 + p2*x3,  f2 = x1*x2 + p2*x3,  p1 = {p1:g}, p2 = {p2:g}, "
          f"x = ({', '.join(f'{v:g}' for v in LECTURE_X)})")
    print(f"  E  = 1/2 (f1 - {t1:g})^2 + 1/2 (f2 - {t2:g})^2")
    print(f"  f = ({lecture['f1']:g}, {lecture['f2']:g}),  E = {lecture['E']:g};  "
          f"p2*x3 is {lecture['nodes computing p2*x3']} node used by both outputs")
    for p, hand in (("p1", "(f1 - t1) * x2"), ("p2", "(f1 - t1) * x3 + (f2 - t2) * x3")):
        got, expected = lecture[f"dE/d{p}"], lecture[f"hand dE/d{p}"]
        agrees = "agrees" if np.isclose(got, expected, rtol=1e-12) else "DIFFERS"
        print(f"  dE/d{p} = {got:g}   by hand {hand} = {expected:g}   ({agrees})")


if __name__ == "__main__":
    main()
