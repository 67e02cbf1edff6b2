"""The interactive viewer: one self-contained HTML file (no network needed to open it).

    visualize.render(loss, "model.html", grads=grads)     # or: graphnn view model.onnx

The graph is laid out by Graphviz here, in Python, and inlined as SVG; viewer.js (written
for this page, no libraries) adds pan and zoom, a search box, a side panel for the clicked
box (op, shapes, dtype, attributes, parameter statistics, the file:line where the node was
made, and for a compiled function the generated source of the step that computes it),
highlighting between forward boxes and their gradient boxes on hover, and layer groups
collapsed or expanded (two layouts, both in the page).

Safety: user text (names, attributes) reaches the page only as SVG text escaped by
Graphviz, or as JSON inside a <script type="application/json"> block with `<`, `>`, `&`
and line separators written as \\u escapes, and viewer.js puts it in the DOM with
textContent, never as HTML.
"""
import html
import json
import re
from importlib import resources

import graphviz
import numpy as np

from graphnn.node import Node

from . import style as st
from .draw import INLINE_LEAVES, Scene, format_attr, format_dims
from .groups import gradient_origins

STATS_LIMIT = 50_000_000  # elements: larger parameters are summarised by shape only


def _asset(name):
    return resources.files("visualize").joinpath(name).read_text(encoding="utf-8")


def json_for_script(data):
    """JSON that is inert inside an HTML <script> element (no `</script>`, no `<!--`)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for char, code in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                       ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, code)
    return text


def _svg(scene, prefix):
    """The scene laid out by dot as inline SVG, its element ids prefixed (two layouts share
    one page)."""
    svg = scene.digraph().pipe(format="svg").decode("utf-8")
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<title>[^<]*</title>", "", svg)  # the DOT ids, not for people
    svg = re.sub(r' id="([^"]*)"', lambda m: f' id="{prefix}{m.group(1)}"', svg)
    svg = re.sub(r'href="#([^"]*)"', lambda m: f'href="#{prefix}{m.group(1)}"', svg)
    return svg


def parameter_stats(leaf):
    """{"name", "shape", "min", "max", "mean", "std"} of a parameter's current value."""
    row = {"name": leaf.name or leaf.op, "shape": format_dims(leaf.sym_shape) or "scalar",
           "kind": leaf.op}
    value = getattr(leaf, "value", None)
    if value is None and leaf.op == "const":
        value = leaf.attrs["value"].array if hasattr(leaf.attrs.get("value"), "array") else None
    try:
        array = np.asarray(value, dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        array = None
    if array is not None and 0 < array.size <= STATS_LIMIT:
        row.update(min=float(array.min()), max=float(array.max()),
                   mean=float(array.mean()), std=float(array.std()))
    return row


def kernel_sources(scene, target):
    """{id(node): {"kernel": name, "lines": source lines}} for a compiled function: the
    block of its generated module under "# step k:" for the step computing the node."""
    source = getattr(target, "source", None)
    if not scene.kernels or not isinstance(source, str):
        return {}
    blocks, current = {}, None
    for line in source.splitlines():
        match = re.match(r"\s*# step (\d+):", line)
        if match:
            current = int(match.group(1))
            blocks[current] = []
        elif current is not None and re.match(r"\s*return\b", line):
            current = None
        if current is not None:
            blocks[current].append(line)
    found = {}
    for k, kernel in enumerate(scene.kernels):
        for node in kernel.nodes:
            if isinstance(node, Node):
                found.setdefault(id(node), {"kernel": kernel.name,
                                            "lines": blocks.get(k, [])})
    return found


def node_info(scene, node, kernels):
    """What the side panel shows for one graph node."""
    info = {"op": node.op, "name": scene.names[node], "shape": format_dims(node.sym_shape)
            or "scalar", "dtype": str(node.dtype), "where": str(node.where or ""),
            "gradient": id(node) in scene.gradient_ids,
            "inputs": [f"{scene.names[i]} ⟨{format_dims(i.sym_shape) or 'scalar'}⟩"
                       for i in node.inputs],
            "attrs": {str(k): format_attr(v) for k, v in sorted(node.attrs.items())
                      if k != "value"},
            "params": [parameter_stats(i) for i in dict.fromkeys(node.inputs)
                       if i.op in INLINE_LEAVES]}
    if node.op in INLINE_LEAVES:
        info["params"].insert(0, parameter_stats(node))
    if id(node) in kernels:
        info["kernel"] = kernels[id(node)]
    return info


def page_data(scene, target):
    """{box id: panel data} and the forward <-> gradient links of one scene."""
    kernels = kernel_sources(scene, target)
    boxes = {}
    for node in scene.nodes:
        if scene.role.get(id(node)) is not None and id(node) not in scene.collapsed:
            boxes[scene.dot_id(node)] = {"title": scene.names[node], "kind": scene.role[id(node)],
                                         "nodes": [node_info(scene, node, kernels)]}
    for group in scene.groups:
        if group.key in {g.key for g in scene.collapsed.values()}:
            boxes[scene.group_ids[group.key]] = {
                "title": group.title, "kind": "group", "scope": group.scope,
                "nodes": [node_info(scene, n, kernels) for n in group.nodes]}
    for k, (node, label) in enumerate(scene.output_boxes()):
        boxes[f"out{k}"] = {"title": label, "kind": "output",
                            "nodes": [node_info(scene, node, kernels)]}
    for ident, source, _ in scene.stubs:
        boxes[ident] = {"title": f"{st.REFERENCE} {boxes.get(source, {}).get('title', '')}",
                        "kind": "stub", "target": source, "nodes": []}
    links = {}
    if scene.grads:
        y = scene._differentiated_output()
        origin = gradient_origins(y, [w for w, _ in scene.grads if isinstance(w, Node)])
        by_id = {id(n): n for n in scene.nodes}
        for node in scene.nodes:
            source = origin.get(id(node))
            if source is None or id(source) not in by_id or scene.role.get(id(node)) is None:
                continue
            forward_box, gradient_box = scene.box_of(source), scene.box_of(node)
            if scene.role.get(id(source)) is None or forward_box == gradient_box:
                continue
            links.setdefault(forward_box, set()).add(gradient_box)
            links.setdefault(gradient_box, set()).add(forward_box)
    return {"boxes": boxes, "links": {k: sorted(v) for k, v in links.items()},
            "groups": {scene.group_ids[g.key]: g.title for g in scene.groups}}


def write_html(target, path, expand=None, title=None, **options):
    """Write the viewer page for `target` (see `visualize.render`'s options) to `path`."""
    layouts = []
    first = Scene(target, expand=expand, **options)
    other = None
    if first.groups:
        # the other layout: all expanded if the first collapses some group, else collapsed
        other = Scene(target, expand=bool(first.collapsed), **options)
    for k, scene in enumerate([first] + ([other] if other else [])):
        prefix = f"L{k}-"
        layouts.append({"prefix": prefix, "svg": _svg(scene, prefix),
                        "collapsed": bool(scene.collapsed),
                        **page_data(scene, target)})
    name = title or str(path).rsplit("/", 1)[-1]
    svgs = "\n".join(f'<div class="layout" id="layout{k}"{"" if k == 0 else " hidden"}>'
                     f'{layout.pop("svg")}</div>' for k, layout in enumerate(layouts))
    parts = {"TITLE": html.escape(name, quote=True), "CSS": _asset("viewer.css"),
             "JS": re.sub(r"</(script)", r"<\\/\1", _asset("viewer.js"), flags=re.I),
             "DATA": json_for_script({"layouts": layouts}),
             "SVG": svgs}
    # one pass, so a name that reads "{{SVG}}" stays text
    page = re.sub(r"\{\{(TITLE|CSS|JS|DATA|SVG)\}\}", lambda m: parts[m.group(1)],
                  _asset("viewer.html"))
    with open(path, "w", encoding="utf-8") as out:
        out.write(page)
    return str(path)
