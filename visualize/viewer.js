// The graphnn viewer: pan and zoom, search, a side panel per box, forward <-> gradient
// highlighting, layer groups collapsed or expanded. User text is only ever set with
// textContent (never innerHTML), so a name holding markup stays text.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("graph-data").textContent);
  const view = document.getElementById("view");
  const search = document.getElementById("search");
  const hits = document.getElementById("hits");
  const panel = document.getElementById("panel");
  const panelTitle = document.getElementById("panel-title");
  const panelBody = document.getElementById("panel-body");
  const toggle = document.getElementById("toggle-groups");
  let current = 0;
  const boxes = {};  // per layout: the viewBox [x, y, w, h] shown

  function layout() { return data.layouts[current]; }
  function svg() { return document.querySelector(`#layout${current} svg`); }
  function boxId(element) { return element.id.slice(layout().prefix.length); }
  function element(id) { return document.getElementById(layout().prefix + id); }

  // -- pan and zoom: the svg's viewBox ---------------------------------------------------
  function setBox(b) {
    boxes[current] = b;
    svg().setAttribute("viewBox", b.join(" "));
  }
  const whole = {};  // per layout: the viewBox Graphviz gave (the whole graph)
  function fit() { setBox(whole[current].slice()); }
  function prepare(k) {
    const s = document.querySelector(`#layout${k} svg`);
    whole[k] = s.getAttribute("viewBox").trim().split(/[\s,]+/).map(Number);
    s.removeAttribute("width");
    s.removeAttribute("height");
    s.setAttribute("preserveAspectRatio", "xMidYMid meet");
  }
  data.layouts.forEach((_, k) => prepare(k));
  function toSvgPoint(clientX, clientY) {
    const s = svg();
    const pt = s.createSVGPoint();
    pt.x = clientX; pt.y = clientY;
    return pt.matrixTransform(s.getScreenCTM().inverse());
  }
  view.addEventListener("wheel", (event) => {
    event.preventDefault();
    const b = boxes[current];
    const p = toSvgPoint(event.clientX, event.clientY);
    const f = Math.exp(event.deltaY * 0.0015);
    setBox([p.x - (p.x - b[0]) * f, p.y - (p.y - b[1]) * f, b[2] * f, b[3] * f]);
  }, { passive: false });
  let drag = null;
  view.addEventListener("mousedown", (event) => {
    drag = { x: event.clientX, y: event.clientY, box: boxes[current].slice(), moved: false };
  });
  window.addEventListener("mousemove", (event) => {
    if (!drag) return;
    const s = svg().getScreenCTM();
    const dx = (event.clientX - drag.x) / s.a, dy = (event.clientY - drag.y) / s.d;
    if (Math.abs(dx) + Math.abs(dy) > 2) { drag.moved = true; view.classList.add("dragging"); }
    setBox([drag.box[0] - dx, drag.box[1] - dy, drag.box[2], drag.box[3]]);
  });
  window.addEventListener("mouseup", () => {
    setTimeout(() => { drag = null; }, 0);
    view.classList.remove("dragging");
  });
  function centerOn(target) {
    if (!target) return;
    // getBBox is in the coordinates of the graph's <g>, which Graphviz translates
    const m = svg().getScreenCTM().inverse().multiply(target.getScreenCTM());
    const raw = target.getBBox();
    const bb = { x: raw.x * m.a + m.e, y: raw.y * m.d + m.f,
                 width: raw.width * m.a, height: raw.height * m.d };
    const b = boxes[current];
    const w = Math.max(b[2], 1), h = Math.max(b[3], 1);
    setBox([bb.x + bb.width / 2 - w / 2, bb.y + bb.height / 2 - h / 2, w, h]);
  }

  // -- layouts: layer groups collapsed or expanded ----------------------------------------
  function show(k, focusId) {
    document.getElementById(`layout${current}`).hidden = true;
    current = k;
    document.getElementById(`layout${current}`).hidden = false;
    if (!boxes[current]) fit(); else setBox(boxes[current]);
    toggle.textContent = layout().collapsed ? "expand layers" : "collapse layers";
    runSearch();
    if (focusId) {
      const target = element(focusId) || element(focusId + "x");
      centerOn(target);
      if (target && target.classList.contains("node")) select(focusId);
    }
  }
  if (data.layouts.length > 1) {
    toggle.hidden = false;
    toggle.addEventListener("click", () => show(1 - current));
  }
  document.getElementById("fit").addEventListener("click", fit);

  // -- search -----------------------------------------------------------------------------
  function matches(id, text, query) {
    const box = layout().boxes[id];
    if (text.toLowerCase().includes(query)) return true;
    if (!box) return false;
    return [box.title].concat(box.nodes.map((n) => n.name), box.nodes.map((n) => n.op))
      .some((s) => String(s).toLowerCase().includes(query));
  }
  function runSearch() {
    const query = search.value.trim().toLowerCase();
    let count = 0;
    svg().querySelectorAll("g.node").forEach((g) => {
      const hit = query !== "" && matches(boxId(g), g.textContent, query);
      g.classList.toggle("hit", hit);
      if (hit) count += 1;
    });
    view.classList.toggle("searching", query !== "");
    hits.textContent = query ? `${count} match${count === 1 ? "" : "es"}` : "";
  }
  search.addEventListener("input", runSearch);
  search.addEventListener("keydown", (event) => {
    if (event.key === "Enter") centerOn(svg().querySelector("g.node.hit"));
  });

  // -- the side panel ---------------------------------------------------------------------
  function add(parent, tag, text) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    parent.appendChild(e);
    return e;
  }
  function table(parent, rows) {
    const t = add(parent, "table");
    rows.forEach(([key, value]) => {
      if (value === undefined || value === "") return;
      const tr = add(t, "tr");
      add(tr, "td", key);
      add(tr, "td", value);
    });
    return t;
  }
  function number(x) { return x === undefined ? "" : Number(x).toPrecision(4); }
  function describe(node, parent) {
    add(parent, "h3", (node.gradient ? "\u2207 " : "") + node.op + " \u2014 " + node.name);
    table(parent, [["op", node.op], ["name", node.name], ["shape", node.shape],
                   ["dtype", node.dtype], ["made at", node.where],
                   ["inputs", node.inputs.join(", ")]]);
    const attrs = Object.entries(node.attrs);
    if (attrs.length) { add(parent, "h3", "attributes"); table(parent, attrs); }
    if (node.params.length) {
      add(parent, "h3", "parameters");
      node.params.forEach((p) => table(parent, [
        [p.kind, p.name], ["shape", p.shape],
        ["min / max", p.min === undefined ? "" : `${number(p.min)} / ${number(p.max)}`],
        ["mean / std", p.mean === undefined ? "" : `${number(p.mean)} / ${number(p.std)}`]]));
    }
    if (node.kernel) {
      add(parent, "h3", "generated code: " + node.kernel.kernel);
      add(parent, "pre", node.kernel.lines.join("\n"));
    }
  }
  function select(id) {
    svg().querySelectorAll("g.node.selected").forEach((g) => g.classList.remove("selected"));
    const box = layout().boxes[id];
    const target = element(id);
    if (target) target.classList.add("selected");
    if (!box) return;
    if (box.kind === "stub") {  // a reference to a forward value: go there
      centerOn(element(box.target));
      select(box.target);
      return;
    }
    panel.hidden = false;
    panelTitle.textContent = box.title;
    panelBody.replaceChildren();
    if (box.kind === "group" && data.layouts.length > 1) {
      const button = add(panelBody, "button", "expand this layer");
      button.type = "button";
      button.addEventListener("click", () => show(1 - current, id));
    }
    box.nodes.forEach((node) => describe(node, panelBody));
  }
  view.addEventListener("click", (event) => {
    if (drag && drag.moved) return;
    const node = event.target.closest("g.node");
    if (node) { event.preventDefault(); select(boxId(node)); return; }
    const cluster = event.target.closest("g.cluster");
    if (cluster) {  // an expanded layer group: collapse it (the other layout)
      const id = boxId(cluster).replace(/x$/, "");
      if (layout().groups[id] !== undefined && data.layouts.length > 1) show(1 - current, id);
    }
  });
  document.getElementById("close").addEventListener("click", () => { panel.hidden = true; });

  // -- forward <-> gradient ---------------------------------------------------------------
  function link(g, on) {
    (layout().links[boxId(g)] || []).forEach((id) => {
      const other = element(id);
      if (other) other.classList.toggle("linked", on);
    });
  }
  data.layouts.forEach((_, k) => {
    document.querySelectorAll(`#layout${k} g.node`).forEach((g) => {
      g.addEventListener("mouseenter", () => link(g, true));
      g.addEventListener("mouseleave", () => link(g, false));
    });
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "/" && document.activeElement !== search) {
      event.preventDefault();
      search.focus();
    }
  });
  show(0);
  window.graphnnViewer = { select, show, data };  // for tests and the console
})();
