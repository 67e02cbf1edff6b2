"""Every example graph drawn to SVG with the real `dot`, the SVG read back as XML.

For each graph the examples build (examples/*.py), the picture must have exactly one box
per drawn node (op boxes, input/output boxes, the legend), each op box headed by its op
name on its category colour, the parameters and constants it consumes as rows with their
shapes, every edge with the shape of the tensor it carries, and the gradient nodes of a
derivative graph marked: "∇" before the op name and a dashed outline. Only building and
drawing: nothing is trained or compiled.
"""
import importlib.util
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

import graphnn as gn
import visualize
from visualize import style as st
from visualize.draw import INLINE_LEAVES, Scene, format_dims

pytestmark = pytest.mark.skipif(shutil.which("dot") is None,
                                reason="Graphviz `dot` not installed (apt-get install graphviz)")
SVG = "{http://www.w3.org/2000/svg}"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name):
    """A module of examples/, loaded from its file."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_grads(loss, wrt):
    """render() options drawing the derivative graph of `loss` with respect to `wrt`."""
    wrt = list(wrt)
    return {"grads": dict(zip(wrt, gn.grad(loss, wrt)))}


# -- the example graphs ----------------------------------------------------------------------
# Each case: (target, render options, texts the picture must show, header colours it must use)

def lecture_forward():
    _, (f1, f2) = example("lecture_graph").build()
    return [f1, f2], {}, ["x1", "x2", "x3", "f1", "f2", "const", "= 3", "= 4", "= 2"], [None]


def lecture_grad():
    (x1, x2, x3), (f1, _) = example("lecture_graph").build()
    return f1, with_grads(f1, [x1, x2, x3]), ["\u2202f1/\u2202x2", "\u2207 mul"], [None]


def render_lecture_names():
    # examples/render_lecture.py: the same graph with display names for the outputs
    (x1, x2, x3), (f1, f2) = example("lecture_graph").build()
    names = {f1: "first", f2: "second"}
    options = {"names": names, **with_grads(f1, [x1, x2, x3])}
    return f1, options, ["first", "\u2202first/\u2202x1"], [None]


def render_mlp(backward_only=False):
    loss = example("render_mlp").build()
    options = with_grads(loss, gn.Graph(loss).params)
    options["backward_only"] = backward_only
    texts = ["W2", "\u27e8256\u00d710\u27e9", "?\u00d7256", "\u2202loss/\u2202W1", "\u2207 matmul"]
    if not backward_only:  # W1 is a row of the forward matmul
        texts += ["W1", "\u27e8784\u00d7256\u27e9"]
    return loss, options, texts, ["Layer", None]


def render_mlp_forward():
    loss = example("render_mlp").build()
    texts = ["W1", "\u27e8784\u00d7256\u27e9", "b2", "\u27e810\u27e9", "?\u00d7784", "?\u00d7256"]
    return loss, {}, texts, ["Layer", "Activation", None]


def mlp_digits_forward():
    loss = example("mlp_digits").loss_graph()
    texts = ["dense1/W", "\u27e864\u00d7128\u27e9", "dense2/b", "\u27e810\u27e9", "?\u00d7128",
             "?\u00d764", "loss"]
    return loss, {}, texts, ["Layer", "Activation", None]


def mlp_digits_grad():
    model, _, _, loss, _ = example("mlp_digits").build()
    texts = ["dense1/W", "\u27e864\u00d7128\u27e9", "?\u00d7128", "\u2207 matmul",
             "\u2202loss/\u2202dense1/W", "64\u00d7128"]
    return loss, with_grads(loss, model.params), texts, ["Layer", "Activation", "Shape", None]


def cnn_digits_grad():
    model, loss, _ = example("cnn_digits").build()
    texts = ["conv2d1/W", "\u27e83\u00d73\u00d71\u00d716\u27e9", "?\u00d78\u00d78\u00d716",
             "?\u00d7128", "\u2207 conv2d_grad_filter", "\u2202loss/\u2202conv2d2/W"]
    return loss, with_grads(loss, model.params), texts, ["Layer", "Activation", "Pool", "Shape"]


def rnn_sequence_grad():
    model, _, loss = example("rnn_sequence").build()
    texts = ["rnn1/Wy", "\u27e816\u00d716\u27e9", "?\u00d716", "\u2207 matmul", "tanh",
             "\u2202loss/\u2202rnn1/Wx"]
    return loss, with_grads(loss, model.params), texts, ["Layer", "Activation"]


def xor_grad(name):
    xor = example("xor")
    model, _, loss, _ = xor.build(xor.MODELS[name])
    texts = ["dense1/W", "?\u00d72", "\u2202loss/\u2202dense1/b"]
    return loss, with_grads(loss, model.params), texts, ["Layer", "Activation"]


def perceptron_rule():
    # the prediction and the perceptron rule's updates (a rule, not a gradient)
    y_hat, updates, _ = example("perceptron").build()
    texts = ["w", "\u27e82\u00d71\u27e9", "1\u00d72", "y_hat"]
    return [y_hat, *updates.values()], {}, texts, ["Layer", "Activation", "Transform"]


def backprop_network(backward_only=False):
    n = example("backprop_step_by_step").build_network()
    params = [n[w] for w in ("w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "b1", "b2")]
    options = {**with_grads(n["E_total"], params), "backward_only": backward_only}
    if backward_only:  # sigmoid's derivative is arithmetic on the forward sigmoid
        return n["E_total"], options, ["w5", "out_o1", "\u2202E_total/\u2202w1"], [None]
    texts = ["w5", "\u27e8scalar\u27e9", "\u2207 mul", "\u2202E_total/\u2202w1"]
    return n["E_total"], options, texts, ["Activation", None]


CASES = {
    "lecture_graph": lecture_forward,
    "lecture_graph --grad": lecture_grad,
    "render_lecture names": render_lecture_names,
    "render_mlp": render_mlp_forward,
    "render_mlp grad": render_mlp,
    "render_mlp backward_only": lambda: render_mlp(backward_only=True),
    "mlp_digits": mlp_digits_forward,
    "mlp_digits grad": mlp_digits_grad,
    "cnn_digits grad": cnn_digits_grad,
    "rnn_sequence grad": rnn_sequence_grad,
    "xor single layer grad": lambda: xor_grad("single layer 2-1"),
    "xor MLP grad": lambda: xor_grad("MLP 2-4-1"),
    "perceptron": perceptron_rule,
    "backprop_step_by_step grad": backprop_network,
    "backprop_step_by_step backward_only": lambda: backprop_network(backward_only=True),
}


# -- what the picture should hold, from the graph ----------------------------------------------

def expected_picture(target, options):
    """Boxes {dot id: node, output label, ("stub", forward box) or None}, edges
    Counter((tail, head, label)) and the scene, worked out from the graph itself: one edge
    per pair of boxes; edges between gradient nodes drawn upwards (tail and head swapped,
    dir=back) beside the forward pass; a forward value read far below drawn as a stub."""
    scene = Scene(target, **options)
    scene.digraph()  # decides which reads become stubs
    stubbed = {(source, target): ident for ident, source, target in scene.stubs}
    boxes = {scene.dot_id(n): n for n in scene.nodes if scene.role.get(id(n))}
    boxes.update({ident: ("stub", source) for ident, source, _ in scene.stubs})
    edges = Counter()
    pairs = set()
    for node in scene.nodes:
        if scene.role.get(id(node)) == "op":
            for inp in node.inputs:
                if not scene.role.get(id(inp)) or inp.op in INLINE_LEAVES:
                    continue
                tail, head = scene.dot_id(inp), scene.dot_id(node)
                if (tail, head) in pairs:
                    continue
                pairs.add((tail, head))
                label = format_dims(inp.sym_shape)
                if (tail, head) in stubbed:
                    assert id(inp) not in scene.gradient_ids and id(node) in scene.gradient_ids
                    edges[(stubbed[(tail, head)], head, label)] += 1
                elif scene.mirror and {id(inp), id(node)} <= scene.gradient_ids:
                    edges[(head, tail, label)] += 1
                else:
                    edges[(tail, head, label)] += 1
    n_forward = len(scene.output_boxes()) - len(scene.grads)
    for k, (node, label) in enumerate(scene.output_boxes()):
        boxes[f"out{k}"] = label
        pair = (scene.dot_id(node), f"out{k}")
        edges[pair[::-1] + (format_dims(node.sym_shape),) if scene.mirror and k >= n_forward
              else pair + (format_dims(node.sym_shape),)] += 1
    if scene.legend:
        boxes["legend"] = None
    return boxes, edges, scene


def groups(root, cls):
    return [g for g in root.iter(f"{SVG}g") if g.get("class") == cls]


def texts_of(element):
    return [(t.text or "").strip() for t in element.iter(f"{SVG}text")]


def fills_of(element):
    return {e.get("fill").lower() for e in element.iter() if e.get("fill")}


def dashed(element):
    return any(e.get("stroke-dasharray") for e in element.iter())


def leaf_texts(scene, leaf):
    """The texts of the row a parameter or constant gets inside its consumer."""
    if leaf.op == "const" and leaf.ndim == 0:
        return [leaf.name or "const", f"= {scene._scalar_text(leaf)}"]
    name = scene.names[leaf] if leaf.op != "const" else (leaf.name or "const")
    shape = format_dims(leaf.sym_shape) or "scalar"
    return [name, f"{st.SHAPE_OPEN}{shape}{st.SHAPE_CLOSE}"]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """{case: (svg root, expected boxes, expected edges, scene, texts, categories)}."""
    out = tmp_path_factory.mktemp("svg")
    drawn = {}
    for k, (case, make) in enumerate(CASES.items()):
        target, options, texts, categories = make()
        path = visualize.render(target, out / f"case{k}.svg", **options)
        drawn[case] = (ET.parse(path).getroot(), *expected_picture(target, options), texts,
                       categories)
    return drawn


# -- the tests -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_one_box_per_drawn_node(pictures, case):
    root, boxes, _, scene, _, _ = pictures[case]
    titles = Counter(g.find(f"{SVG}title").text for g in groups(root, "node"))
    assert titles == Counter(list(boxes)), f"boxes in the SVG but not the graph: " \
        f"{set(titles) - set(boxes)}; missing: {set(boxes) - set(titles)}"
    assert any(isinstance(n, gn.Node) and n.inputs for n in boxes.values())
    # params, variables and constants are rows inside their consumer, not boxes (unless
    # one is itself an output, such as a gradient that is a constant)
    outputs = {id(node) for node, _ in scene.output_boxes()}
    assert all(id(n) in outputs for n in boxes.values()
               if isinstance(n, gn.Node) and n.op in INLINE_LEAVES)


@pytest.mark.parametrize("case", CASES)
def test_op_headers_take_the_category_colour(pictures, case):
    root, boxes, _, scene, _, categories = pictures[case]
    by_title = {g.find(f"{SVG}title").text: g for g in groups(root, "node")}
    header_fills = set()
    for ident, node in boxes.items():
        if not isinstance(node, gn.Node) or scene.role[id(node)] != "op":
            continue
        colour = st.header_colour(node.op).lower()
        assert colour in fills_of(by_title[ident]), f"{node.op} box lacks its colour {colour}"
        header_fills.add(colour)
    for category in categories:
        assert st.CATEGORY_COLOUR.get(category, st.NO_CATEGORY_COLOUR).lower() in header_fills
    # inputs and outputs: light grey rounded boxes
    for ident in [i for i, n in boxes.items() if isinstance(n, str)]:
        assert st.TERMINAL_FILL.lower() in fills_of(by_title[ident])


@pytest.mark.parametrize("case", CASES)
def test_parameter_rows_with_their_shapes(pictures, case):
    root, boxes, _, scene, texts, _ = pictures[case]
    by_title = {g.find(f"{SVG}title").text: g for g in groups(root, "node")}
    for ident, node in boxes.items():
        if not isinstance(node, gn.Node) or scene.role[id(node)] != "op":
            continue
        shown = texts_of(by_title[ident])
        for leaf in node.inputs:
            if leaf.op in INLINE_LEAVES:
                for text in leaf_texts(scene, leaf):
                    assert text in shown, f"{node.op} box lacks {text!r}: {shown}"
    everything = " ".join(texts_of(root))
    for text in texts:
        assert text in everything, f"{text!r} not in the picture"


@pytest.mark.parametrize("case", CASES)
def test_edges_carry_the_tensor_shapes(pictures, case):
    root, _, edges, _, _, _ = pictures[case]
    drawn = Counter()
    for g in groups(root, "edge"):
        tail, head = g.find(f"{SVG}title").text.split("->")
        drawn[(tail, head, " ".join(t for t in texts_of(g) if t))] += 1
    assert drawn == edges
    assert any("\u00d7" in label or label == "?" for _, _, label in edges) or all(
        label == "" for _, _, label in edges)  # scalar graphs (the lecture's) have none


@pytest.mark.parametrize("case", [c for c in CASES if "grad" in c or "names" in c
                                  or "backward" in c])
def test_gradient_nodes_are_marked(pictures, case):
    root, boxes, _, scene, _, _ = pictures[case]
    by_title = {g.find(f"{SVG}title").text: g for g in groups(root, "node")}
    gradient = forward = 0
    for ident, node in boxes.items():
        if not isinstance(node, gn.Node) or scene.role[id(node)] != "op":
            continue
        header = texts_of(by_title[ident])[0]
        if id(node) in scene.gradient_ids:
            gradient += 1
            assert header == f"{st.NABLA} {node.op}" and dashed(by_title[ident])
        else:
            forward += 1
            assert header == node.op and not dashed(by_title[ident])
    assert gradient > 0
    assert (forward == 0) == scene.backward_only
    partials = [label for label in boxes.values()
                if isinstance(label, str) and label.startswith(st.PARTIAL)]
    assert len(partials) == len(scene.grads)
    assert all(p in texts_of(root) for p in partials)
    legend = " ".join(texts_of(by_title["legend"]))
    assert f"{st.NABLA} op" in legend and "gradient" in legend


@pytest.mark.parametrize("case", [c for c in CASES if not ("grad" in c or "names" in c
                                                            or "backward" in c)])
def test_forward_pictures_have_no_gradient_marks(pictures, case):
    root, boxes, _, _, _, _ = pictures[case]
    assert "legend" not in boxes
    assert not any(st.NABLA in t or st.PARTIAL in t for t in texts_of(root))
    assert not any(dashed(g) for g in groups(root, "node"))
