"""visualize/viewer.py: the self-contained HTML viewer; in headless Chromium when present."""
import json
import os
import re
import shutil
from pathlib import Path

import pytest

import graphnn as gn
import visualize
from visualize.screenshot import BROWSER_ARGS, screenshot
from visualize.viewer import json_for_script

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
XSS = "</script><script>alert(1)</script>"
INSTALL = ("apt-get install -y chromium && pip install -e '.[browser]' "
           "(`make test` does both when run as root)")


def mlp_with_grads(hostile=False):
    x = gn.input("x", (None, 6))
    y = gn.input("y", (None,), dtype="int64")
    h = gn.nn.Dense(5, "relu", name="dense1")(x)
    logits = gn.nn.Dense(3, name=XSS if hostile else "dense2")(h)
    loss = gn.softmax_cross_entropy(logits, y, name="loss")
    params = gn.Graph(loss).params
    return loss, dict(zip(params, gn.grad(loss, params)))


def page_data(text):
    block = re.search(r'<script type="application/json" id="graph-data">(.*?)</script>',
                      text, re.S).group(1)
    return json.loads(block)


def test_json_for_script_is_inert_in_html():
    text = json_for_script({"name": XSS + "<!-- & \u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text)["name"] == XSS + "<!-- & \u2028"


@needs_dot
def test_page_is_self_contained_and_holds_the_panel_data(tmp_path):
    loss, grads = mlp_with_grads()
    path = visualize.render(loss, tmp_path / "mlp.html", grads=grads)
    text = Path(path).read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing fetched
    assert "default-src 'none'" in text
    data = page_data(text)
    first, second = data["layouts"]
    assert not first["collapsed"] and second["collapsed"]  # expanded, then collapsed
    groups = {b["title"]: b for b in second["boxes"].values() if b["kind"] == "group"}
    assert {"dense1", "dense2", "\u2207 dense1", "\u2207 dense2"} <= set(groups)
    matmul = groups["dense1"]["nodes"][0]
    assert matmul["op"] == "matmul" and "test_viewer.py:" in matmul["where"]
    stats = matmul["params"][0]
    assert stats["name"] == "dense1/W" and stats["shape"] == "6\u00d75"
    assert stats["min"] <= stats["mean"] <= stats["max"] and stats["std"] > 0
    assert second["links"]  # forward boxes <-> their gradient boxes


@needs_dot
def test_a_hostile_name_stays_text(tmp_path):
    loss, grads = mlp_with_grads(hostile=True)
    text = Path(visualize.render(loss, tmp_path / "x.html", grads=grads)).read_text("utf-8")
    assert XSS not in text and "<script>alert" not in text
    assert text.count("<script") == 2 and text.count("</script>") == 2  # data + viewer.js
    titles = [b["title"] for layout in page_data(text)["layouts"]
              for b in layout["boxes"].values()]
    assert XSS in titles  # the name itself is kept, as data


@needs_dot
def test_compiled_function_shows_its_generated_code(tmp_path):
    loss, grads = mlp_with_grads()
    step = gn.compile([loss, *grads.values()], backend="cpu")
    text = Path(visualize.render(step, tmp_path / "k.html", grads=grads)).read_text("utf-8")
    kernels = [n["kernel"] for layout in page_data(text)["layouts"]
               for b in layout["boxes"].values() for n in b["nodes"] if "kernel" in n]
    assert kernels and any("gemm(" in "\n".join(k["lines"]) for k in kernels)
    assert all(k["lines"][0].strip().startswith("# step") for k in kernels if k["lines"])


def test_cli_view_writes_html(tmp_path, monkeypatch):
    import argparse
    if shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` not installed")
    script = tmp_path / "net.py"
    script.write_text("import graphnn as gn\n"
                      "def build():\n"
                      "    x = gn.input('x', (None, 3))\n"
                      "    return gn.mean(gn.nn.Dense(2, 'relu')(x), name='loss')\n")
    parser = visualize.add_view_arguments(argparse.ArgumentParser())
    assert visualize.cli_view(parser.parse_args([str(script), "--grad"])) == 0
    assert "dense1" in (tmp_path / "net.html").read_text("utf-8")


def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"playwright is not installed: {INSTALL}")
    if CHROMIUM is None:
        pytest.skip(f"chromium is not installed: {INSTALL}")
    return sync_playwright


@needs_dot
def test_viewer_in_headless_chromium(tmp_path):
    sync_playwright = browser()
    loss, grads = mlp_with_grads()
    path = visualize.render(loss, tmp_path / "mlp.html", grads=grads)
    hostile_loss, hostile_grads = mlp_with_grads(hostile=True)
    hostile = visualize.render(hostile_loss, tmp_path / "x.html", grads=hostile_grads)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = chromium.new_page(viewport={"width": 1280, "height": 800})
        errors, dialogs = [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(Path(path).as_uri())
        assert errors == []
        # click the first matmul box: the panel shows its op, shapes, parameters, file:line
        matmul = page.locator("#layout0 g.node", has_text="matmul").first
        matmul.click()
        panel = page.locator("#panel")
        assert panel.is_visible()
        text = panel.inner_text()
        assert "matmul" in text and "dense1/W" in text and "float32" in text
        assert "mean / std" in text and "test_viewer.py:" in text
        # search: matching boxes highlighted, the others dimmed
        page.fill("#search", "relu")
        assert page.locator("#layout0 g.node.hit").count() >= 1
        assert "match" in page.inner_text("#hits")
        assert page.eval_on_selector("#view", "v => v.classList.contains('searching')")
        page.fill("#search", "")
        # hovering a forward box lights its gradient boxes
        page.locator("#layout0 g.node", has_text="relu").first.hover()
        assert page.locator("#layout0 g.node.linked").count() >= 1
        # layer groups: collapse them, then open one
        page.click("#toggle-groups")
        assert page.locator("#layout1").is_visible()
        page.locator("#layout1 g.node", has_text="dense1").first.click()
        assert "dense1" in page.inner_text("#panel-title")
        page.click("#toggle-groups")
        page.click("#fit")
        shot = os.environ.get("GRAPHNN_VIEWER_SCREENSHOT", str(tmp_path / "viewer.png"))
        page.locator("#layout0 g.node", has_text="matmul").first.click()
        page.screenshot(path=shot)
        assert Path(shot).read_bytes()[:4] == b"\x89PNG"
        # a node named </script><script>alert(1)</script>: shown, never run
        page.goto(Path(hostile).as_uri())
        page.locator("#layout0 g.node", has_text="matmul").last.click()
        assert dialogs == [] and errors == []
        assert "alert(1)" in page.inner_text("body")
        chromium.close()


@needs_dot
def test_screenshot_opens_the_panel_of_the_box_clicked(tmp_path):
    browser()  # skips, saying how to install, without chromium or playwright
    loss, grads = mlp_with_grads()
    page = visualize.render(loss, tmp_path / "m.html", grads=grads)
    png = screenshot(page, tmp_path / "m.png", click="matmul")
    data = Path(png).read_bytes()
    assert data[:4] == b"\x89PNG" and len(data) > 10_000
