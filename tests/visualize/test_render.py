"""visualize: the DOT text (no Graphviz needed) and, when `dot` is installed, real pictures."""
import argparse
import importlib.util
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import graphnn as gn
import visualize
from graphnn.registry import OPS
from visualize.style import CATEGORY_COLOUR, NO_CATEGORY_COLOUR, OP_CATEGORY

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")
SVG = "{http://www.w3.org/2000/svg}"


def node_lines(source):
    """DOT statements of the drawn graph nodes (n<index>), by id."""
    return dict(re.findall(r"^\s*(n\d+) \[(.*)\]$", source, re.M))


def edge_lines(source):
    return [line.strip() for line in source.splitlines() if "->" in line]


def load_example(name):
    """A module of examples/ (the tests draw the same graphs the examples draw)."""
    path = Path(__file__).resolve().parents[2] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mlp():
    """x -> matmul W1 -> add b1 -> relu -> matmul W2 -> add b2 -> softmax_cross_entropy."""
    loss = load_example("render_mlp").build()
    return loss, gn.Graph(loss).params


def lecture():
    return load_example("lecture_graph").build()


def line_of(source, header):
    """The one node statement whose header (op name) is `header`."""
    found = [line for line in node_lines(source).values()
             if re.search(rf'<FONT COLOR="white">{re.escape(header)}</FONT>', line)]
    assert len(found) == 1, f"{len(found)} nodes headed {header!r}"
    return found[0]


# -- the style table ------------------------------------------------------------------------

def test_style_table_covers_every_op_with_a_netron_category():
    assert set(OPS) <= set(OP_CATEGORY), set(OPS) - set(OP_CATEGORY)
    assert all(c is None or c in CATEGORY_COLOUR for c in OP_CATEGORY.values())
    assert visualize.header_colour("matmul") == "#335588"
    assert visualize.header_colour("relu") == "#702921"
    assert visualize.header_colour("add") == NO_CATEGORY_COLOUR == "#333333"


def test_headers_take_their_category_colour():
    x = gn.input("img", (None, 8, 8, 3))
    k = gn.param("k", shape=(3, 3, 3, 4), seed=0)
    pooled = gn.max_pool2d(gn.relu(gn.conv2d(x, k, padding="same")))
    flat = gn.flatten(pooled)
    out = gn.concat([flat, flat * 2.0], axis=1)
    src = visualize.to_dot(out)
    assert 'BGCOLOR="#335588"' in line_of(src, "conv2d")      # Layer
    assert 'BGCOLOR="#702921"' in line_of(src, "relu")        # Activation
    assert 'BGCOLOR="#335533"' in line_of(src, "max_pool2d")  # Pool
    assert 'BGCOLOR="#6C4F47"' in line_of(src, "reshape")     # Shape
    assert 'BGCOLOR="#59423B"' in line_of(src, "concat")      # Tensor
    assert 'BGCOLOR="#333333"' in line_of(src, "mul")         # no category
    # the header text is white on the colour
    assert '<FONT COLOR="white">conv2d</FONT>' in src


# -- parameters, constants, shapes ------------------------------------------------------------

def test_params_are_rows_inside_the_node_that_consumes_them():
    loss, _ = mlp()
    src = visualize.to_dot(loss)
    nodes = node_lines(src)
    with_w1 = [line for line in nodes.values() if "<B>W1</B>" in line]
    assert len(with_w1) == 1
    assert "<B>W1</B> \u27e8784\u00d7256\u27e9" in with_w1[0]
    assert "matmul" in with_w1[0]
    with_b2 = [line for line in nodes.values() if "<B>b2</B> \u27e810\u27e9" in line]
    assert len(with_b2) == 1 and '<FONT COLOR="white">add</FONT>' in with_b2[0]
    # no box of their own: 2 inputs + 6 ops (matmul add relu matmul add xent)
    assert len(nodes) == 8
    assert not any(line.startswith("label=<W1") for line in nodes.values())


def test_edges_carry_shapes_with_question_marks_for_symbolic_dims():
    loss, _ = mlp()
    edges = edge_lines(visualize.to_dot(loss))
    labels = [re.search(r"label=<([^>]*)>", e).group(1) for e in edges if "label=" in e]
    assert "?\u00d7256" in labels and "?\u00d7784" in labels and "?\u00d710" in labels
    named = gn.input("x", ("batch", 4)) @ gn.param("W", shape=(4, 2), seed=0)
    assert "?batch\u00d74" in visualize.to_dot(named)


def test_scalar_edges_are_unlabelled_and_shapes_can_be_hidden():
    loss, _ = mlp()
    src = visualize.to_dot(loss, show_shapes=False)
    assert "\u00d7" not in "".join(edge_lines(src))
    assert "\u27e8784\u00d7256\u27e9" in src  # parameter rows keep their shapes


def test_lecture_graph_draws_3_x3_once_feeding_both_outputs():
    _, (f1, f2) = lecture()
    src = visualize.to_dot([f1, f2], names={f1: "f1", f2: "f2"})
    nodes = node_lines(src)
    three = [nid for nid, line in nodes.items() if "<B>const</B> = 3" in line]
    assert len(three) == 1
    users = [e for e in edge_lines(src) if e.startswith(f"{three[0]} ->")]
    assert len(users) == 2
    assert "<B>const</B> = 4" in src and "<B>const</B> = 2" in src
    assert re.search(r"out0 \[label=<f1>", src) and re.search(r"out1 \[label=<f2>", src)


def test_inputs_and_outputs_are_light_grey_rounded_boxes():
    loss, _ = mlp()
    src = visualize.to_dot(loss)
    for ident in [nid for nid, line in node_lines(src).items() if "label=<x>" in line] + ["out0"]:
        line = re.search(rf"^\s*{ident} \[(.*)\]$", src, re.M).group(1)
        assert 'style="rounded,filled"' in line and 'fillcolor="#EEEEEE"' in line
    assert "out0 [label=<loss>" in src  # the output's name
    (x1, x2, _), (f1, f2) = lecture()
    assert "out0 [label=<f1>" in visualize.to_dot([f1, f2])  # the example names its outputs
    g1, g2 = x1 * x2, x1 + x2
    unnamed = visualize.to_dot([g1, g2])  # unnamed outputs: their expression
    assert "out0 [label=<x1 * x2>" in unnamed and "out1 [label=<x1 + x2>" in unnamed
    assert "out0 [label=<x1 * x2>" in visualize.to_dot(g1)
    deep = gn.mean(gn.relu(gn.exp(x1 * x2 + 1.0)))
    assert "out0 [label=<mean(relu(\u2026))>" in visualize.to_dot(deep)


# -- derivative graphs ------------------------------------------------------------------------

def test_gradient_nodes_are_dashed_with_nabla_and_named_partials():
    loss, params = mlp()
    grads = dict(zip(params, gn.grad(loss, params)))
    src = visualize.to_dot(loss, grads=grads)
    nodes = node_lines(src).values()
    gradient = [line for line in nodes if "\u2207" in line]
    forward = [line for line in nodes if "\u2207" not in line and "TABLE" in line]
    assert len(gradient) >= 10
    assert all('STYLE="rounded,dashed"' in line for line in gradient)
    assert not any("dashed" in line for line in forward)
    assert "\u2207 matmul" in src
    assert sum('<FONT COLOR="white">matmul</FONT>' in line for line in forward) == 2
    for w in ("W1", "b1", "W2", "b2"):
        assert f"\u2202loss/\u2202{w}" in src
    assert "gradient (backward)" in src                       # the legend
    plain = visualize.to_dot(loss)
    assert "\u2207" not in plain and "legend" not in plain


def test_named_loss_and_string_keys_name_the_partials():
    loss, params = mlp()
    g = gn.grad(loss, params[0])
    src = visualize.to_dot(loss, grads={"weights": g}, names={loss: "J"})
    assert "\u2202J/\u2202weights" in src


def test_backward_only_draws_gradient_nodes_and_forward_references():
    loss, params = mlp()
    grads = dict(zip(params, gn.grad(loss, params)))
    src = visualize.to_dot(loss, grads=grads, backward_only=True)
    ops = [line for line in node_lines(src).values() if "TABLE" in line]
    assert ops and all("\u2207" in line for line in ops)
    assert "forward</FONT>" in src                       # the relu output the backward uses
    assert "\u2202loss/\u2202W1" in src and "label=<loss>" not in src
    with pytest.raises(gn.GraphError, match="grads"):
        visualize.to_dot(loss, backward_only=True)


def test_gradient_outputs_of_a_compiled_function_are_not_forward_outputs():
    loss, params = mlp()
    gW1 = gn.grad(loss, params[0])
    compiled = SimpleNamespace(graph=gn.Graph([loss, gW1]))
    src = visualize.to_dot(compiled, grads={params[0]: gW1})
    assert "\u2202loss/\u2202W1" in src and "\u2207 matmul" in src
    assert re.findall(r"^\s*(out\d+) \[label=<([^>]*)>", src, re.M) == [
        ("out0", "loss"), ("out1", "\u2202loss/\u2202W1")]


# -- compiled view ----------------------------------------------------------------------------

def fake_compiled():
    x = gn.input("x", (None, 4))
    W = gn.param("W", shape=(4, 3), seed=0)
    b = gn.param("b", shape=(3,), init="zeros")
    z = x @ W
    h = gn.relu(z + b)
    out = gn.softmax(h)
    kernels = [SimpleNamespace(name="k0_matmul", nodes=[z]),
               {"name": "k1_add_relu", "nodes": [h.inputs[0], h]},
               SimpleNamespace(name="k2 <softmax> & co", nodes=[out])]
    return SimpleNamespace(graph=gn.Graph(out), kernels=kernels), (z, h, out)


def cluster_blocks(source):
    return dict(re.findall(r"subgraph (cluster_\d+) \{(.*?)\n\t\}", source, re.S))


def test_each_kernel_is_a_cluster_labelled_with_its_name():
    compiled, _ = fake_compiled()
    src = visualize.to_dot(compiled)
    blocks = cluster_blocks(src)
    assert len(blocks) == 3
    assert "label=<k0_matmul>" in blocks["cluster_0"] and "matmul" in blocks["cluster_0"]
    assert "label=<k1_add_relu>" in blocks["cluster_1"]
    assert ">add<" in blocks["cluster_1"] and ">relu<" in blocks["cluster_1"]
    assert "label=<k2 &lt;softmax&gt; &amp; co>" in blocks["cluster_2"]
    assert "softmax" in blocks["cluster_2"] and "relu" not in blocks["cluster_2"]
    no_kernels = visualize.to_dot(SimpleNamespace(graph=compiled.graph))
    assert "cluster" not in no_kernels


# -- options ----------------------------------------------------------------------------------

def test_show_attrs_lists_attributes_as_rows():
    x = gn.input("img", (None, 8, 8, 3))
    k = gn.param("k", shape=(3, 3, 3, 4), seed=0)
    out = gn.softmax(gn.flatten(gn.leaky_relu(gn.conv2d(x, k, stride=2, padding="same"),
                                              alpha=0.2)), axis=-1)
    plain = visualize.to_dot(out)
    shown = visualize.to_dot(out, show_attrs=True)
    for row in ("stride = 2", "padding = same", "alpha = 0.2", "axis = -1"):
        assert row not in plain and row in shown


def test_show_names_and_rankdir():
    loss, _ = mlp()
    h = gn.exp(gn.relu(gn.input("x", (None, 3)), name="hidden"))
    assert "hidden" not in line_of(visualize.to_dot(h), "relu")
    assert "hidden" in line_of(visualize.to_dot(h, show_names=True), "relu")
    assert "rankdir=TB" in visualize.to_dot(loss)
    assert "rankdir=LR" in visualize.to_dot(loss, rankdir="LR")
    with pytest.raises(ValueError, match="rankdir"):
        visualize.to_dot(loss, rankdir="sideways")


def test_user_text_is_escaped_in_labels():
    weird = 'a<b>&"c"\n{d}|\u00e9'
    x = gn.input(weird, (2,))
    src = visualize.to_dot(gn.relu(x))
    assert "a&lt;b&gt;&amp;&quot;c&quot;<BR/>{d}|\u00e9" in src
    assert "a<b>" not in src


def test_a_graph_and_a_node_list_draw_the_same():
    loss, _ = mlp()
    assert visualize.to_dot(gn.Graph(loss)) == visualize.to_dot([loss])
    with pytest.raises(gn.GraphError, match="cannot draw"):
        visualize.to_dot(42)


# -- files ------------------------------------------------------------------------------------

def test_render_dot_needs_no_graphviz(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` anywhere
    loss, _ = mlp()
    path = visualize.render(loss, tmp_path / "g.dot")
    assert path.endswith("g.dot") and "digraph" in (tmp_path / "g.dot").read_text()
    with pytest.raises(ValueError, match="format"):
        visualize.render(loss, tmp_path / "g.gif")


def test_render_without_dot_writes_source_and_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    loss, _ = mlp()
    with pytest.raises(visualize.GraphvizNotFound, match="apt-get install graphviz"):
        visualize.render(loss, tmp_path / "g.png")
    assert "matmul" in (tmp_path / "g.dot").read_text()
    assert not (tmp_path / "g.png").exists()


@needs_dot
def test_svg_has_one_box_per_drawn_node_with_colours_rows_and_edge_shapes(tmp_path):
    loss, params = mlp()
    grads = dict(zip(params, gn.grad(loss, params)))
    path = visualize.render(loss, tmp_path / "mlp.svg", grads=grads)
    root = ET.parse(path).getroot()
    groups = [g for g in root.iter(f"{SVG}g") if g.get("class") == "node"]
    expected = len(node_lines(visualize.to_dot(loss, grads=grads))) + 4 + 1 + 1  # outs, legend
    assert len(groups) == expected
    text = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "\u27e8784\u00d7256\u27e9" in text and "?\u00d7256" in text
    assert "\u2207 matmul" in text and "\u2202loss/\u2202W1" in text
    fills = {p.get("fill", "").lower() for p in root.iter() if p.get("fill")}
    assert {"#335588", "#702921", "#333333", "#eeeeee"} <= fills
    dashed = [p for p in root.iter() if p.get("stroke-dasharray")]
    assert dashed


@needs_dot
def test_png_pdf_and_notebook_svg(tmp_path):
    _, (f1, f2) = lecture()
    png = visualize.render([f1, f2], tmp_path / "lecture.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    pdf = visualize.render([f1, f2], tmp_path / "lecture.pdf")
    assert open(pdf, "rb").read(5) == b"%PDF-"
    svg = gn.Graph([f1, f2])._repr_svg_()
    assert svg.lstrip().startswith("<?xml") and ">x3</text>" in svg


# -- command line -----------------------------------------------------------------------------

def test_cli_render_reads_build_and_draws_gradients(tmp_path):
    script = tmp_path / "net.py"
    script.write_text(
        "import graphnn as gn\n"
        "def build():\n"
        "    x = gn.input('x', (None, 3))\n"
        "    W = gn.param('W', shape=(3, 2), seed=0)\n"
        "    return gn.mean(gn.sigmoid(x @ W))\n")
    parser = visualize.add_render_arguments(argparse.ArgumentParser())
    out = tmp_path / "net.dot"
    args = parser.parse_args([str(script), "-o", str(out), "--grad"])
    assert visualize.cli_render(args) == 0
    src = out.read_text()
    # the output is not called loss: the partials name what was differentiated
    assert "\u2202mean(sigmoid(\u2026))/\u2202W" in src and "\u2207 matmul" in src
    assert "\u2202loss" not in src
    assert "<B>W</B> \u27e83\u00d72\u27e9" in src


def test_cli_render_build_names_the_function(tmp_path):
    parser = visualize.add_render_arguments(argparse.ArgumentParser())
    example = Path(__file__).resolve().parents[2] / "examples" / "mlp_digits.py"
    out = tmp_path / "mlp.dot"
    args = parser.parse_args([str(example), "--build", "loss_graph", "-o", str(out)])
    assert visualize.cli_render(args) == 0
    assert "<B>dense1/W</B> \u27e864\u00d7128\u27e9" in out.read_text()
    args = parser.parse_args([str(example), "--build", "nothing", "-o", str(out)])
    with pytest.raises(gn.GraphError, match="no function nothing"):
        visualize.cli_render(args)


def test_a_constant_gradient_output_is_no_edge_into_its_consumer():
    # ∂f1/∂x3 is the constant 3 itself: its own box feeds the output box only, while the
    # forward mul keeps it as a row (it was drawn twice on one mul, inline and as an edge)
    (x1, x2, x3), (f1, _) = lecture()
    grads = dict(zip((x1, x2, x3), gn.grad(f1, [x1, x2, x3])))
    src = visualize.to_dot(f1, grads=grads)
    boxes = [nid for nid, line in node_lines(src).items() if line.startswith("label=<3<BR/>")]
    assert len(boxes) == 1
    assert [e.split(" [")[0] for e in edge_lines(src) if boxes[0] in e] == [
        f"out3 -> {boxes[0]}"]
    assert sum("<B>const</B> = 3" in line for line in node_lines(src).values()) == 1
    assert "\u2202f1/\u2202x3" in src


def test_collapsed_layer_groups_are_one_box_each():
    model_loss = load_example("mlp_digits").loss_graph()
    params = gn.Graph(model_loss).params
    grads = dict(zip(params, gn.grad(model_loss, params)))
    src = visualize.to_dot(model_loss, grads=grads, expand=False)
    labels = src
    for title in ("dense1", "dense2", "\u2207 dense1", "\u2207 dense2"):
        assert f'<FONT COLOR="white">{title}</FONT>' in labels
    assert "<B>W</B> \u27e864\u00d7128\u27e9" in labels  # rows without the "dense1/" prefix
    one = visualize.to_dot(model_loss, grads=grads, expand=["dense1"])
    assert "cluster_" in one and '<FONT COLOR="white">dense2</FONT>' in one
    assert '<FONT COLOR="white">dense1</FONT>' not in one
    assert "cluster_" not in visualize.to_dot(model_loss, groups=False)


def test_caffe2_blob_names_group_by_block():
    from visualize.groups import underscore_scope
    assert underscore_scope("gpu_0/res2_0_branch2a_bn_s_0", strip=1) == "res2_0"
    assert underscore_scope("gpu_0/res_conv1_bn_b_0", strip=1) == "res_conv1"
    assert underscore_scope("conv1_w_0") == "conv1"
    assert underscore_scope("pred_b_0") == "pred"
    assert underscore_scope("") is None


def _caffe2_block(x, block, channels, seed):
    rng = np.random.default_rng(seed)
    w = gn.const(rng.standard_normal((3, 3, channels, channels)).astype(np.float32),
                 name=f"gpu_0/{block}_branch2a_w_0")
    b = gn.param(f"gpu_0/{block}_branch2a_bn_b_0", np.zeros(channels, np.float32))
    return gn.relu(gn.conv2d(x, w, padding="same") + b) + x


def test_onnx_style_names_without_scopes_form_block_groups():
    # the names of a Caffe2-exported ResNet-50: one shared "gpu_0/" prefix, blocks in the
    # underscores; the same constant read by two blocks seeds neither
    x = gn.input("gpu_0/data_0", (1, 6, 6, 2))
    shared = gn.const(np.full(2, 0.5, np.float32), name="gpu_0/res2_0_branch2c_bn_b_0")
    y = _caffe2_block(x, "res2_0", 2, 0) + shared
    y = _caffe2_block(y, "res2_1", 2, 1) + shared
    from graphnn.graph import topological_order
    from visualize.groups import infer_groups
    nodes = topological_order([gn.sum(y)])
    member = infer_groups(nodes, set())
    # the last add reads only the shared constant: not in res2_0, whose name that constant has
    assert getattr(member.get(id(y)), "scope", None) != "res2_0"
    assert member[id(y.inputs[0].inputs[0])].scope == "res2_1"  # its relu
    src = visualize.to_dot(gn.sum(y), expand=False)
    assert '<FONT COLOR="white">res2_0</FONT>' in src
    assert '<FONT COLOR="white">res2_1</FONT>' in src
    assert "<B>branch2a_w_0</B> \u27e83\u00d73\u00d72\u00d72\u27e9" in src  # prefix left out
    assert '<FONT COLOR="white">res2_0_branch2c</FONT>' not in src
    # graphnn's own unscoped names are not read by their underscores
    a = gn.param("hidden_W", np.ones((2, 2), np.float32))
    plain = visualize.to_dot(gn.sum(gn.input("x_in", (1, 2)) @ a), expand=False)
    assert '<FONT COLOR="white">hidden</FONT>' not in plain
