// The circuit viewer of the `circuits` package: draws the data embedded in #circuit-data.
// Self-contained: no library, no network. Written for this project.
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("circuit-data").textContent);
  var NODES = D.nodes, EDGES = D.edges, N = EDGES.length;
  var MAX_DRAW = 5000;
  var POS = "#1f5fbf", NEG = "#c0392b", SHARED = "#2e9d4a", ONLY_A = "#1f5fbf", ONLY_B = "#e08a00";
  var PORT = { q: -0.32, k: 0, v: 0.32 };
  var $ = function (id) { return document.getElementById(id); };

  var layers = NODES.filter(function (n) { return n.layer !== null; }).map(function (n) { return n.layer; });
  var minLayer = layers.length ? Math.min.apply(null, layers) : 0;
  var maxLayer = layers.length ? Math.max.apply(null, layers) : 0;
  var byName = {};
  NODES.forEach(function (n, i) { byName[n.name] = i; });
  var inB = {};
  var nodesB = {};
  if (D.compare) {
    D.compare.edges.forEach(function (key) { inB[key] = true; });
    D.compare.nodes.forEach(function (i) { nodesB[i] = true; });
  }
  var state = { mode: "circuit", k: D.kept, lo: minLayer, hi: maxLayer, kinds: { head: true, mlp: true, neuron: true },
                compare: !!D.compare, selected: null, shown: [] };

  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }
  function fmt(x) {
    if (x === null || x === undefined) { return "\u2014"; }
    var a = Math.abs(x);
    return (a !== 0 && (a < 1e-3 || a >= 1e4)) ? x.toExponential(3) : x.toPrecision(4);
  }
  function thousands(x) { return String(x).replace(/\B(?=(\d{3})+(?!\d))/g, ","); }
  function edgeKey(e) { return e[0] + ":" + e[1] + ":" + e[2]; }
  function edgeName(e) { return NODES[e[0]].name + "->" + NODES[e[1]].name + (e[2] ? "<" + e[2] + ">" : ""); }

  // ---- which edges are shown
  function passes(i) {
    var n = NODES[i];
    if (n.kind === "input" || n.kind === "logits") { return true; }
    if (!state.kinds[n.kind]) { return false; }
    return n.layer >= state.lo && n.layer <= state.hi;
  }
  function selectEdges() {
    var out = [];
    for (var i = 0; i < N; i++) {
      var e = EDGES[i];
      if (state.mode === "circuit" ? !e[4] : i >= state.k) { continue; }
      if (passes(e[0]) && passes(e[1])) { out.push(i); }
    }
    return out;
  }

  // ---- geometry (the same curves as circuit.svg)
  function portX(n, q) { return n.kind === "head" ? n.x + (PORT[q || "k"] || 0) * n.w : n.x; }
  function path(e) {
    var s = NODES[e[0]], t = NODES[e[1]];
    var x1 = s.x, y1 = s.y - s.h / 2, x2 = portX(t, e[2]), y2 = t.y + t.h / 2;
    var dy = Math.max(y1 - y2, 1), bend = 0;
    if (Math.abs(x1 - x2) < s.w && dy > 60) { bend = Math.min(18 + dy * 0.08, 70); }
    var c = dy * 0.45;
    return "M" + x1 + "," + y1 + " C" + (x1 + bend) + "," + (y1 - c) + " " + (x2 + bend) + "," + (y2 + c) + " " + x2 + "," + y2;
  }

  // ---- drawing
  var svg = $("graph");
  function drawStatic() {
    var L = D.layout, parts = [];
    svg.setAttribute("viewBox", "0 0 " + L.width + " " + L.height);
    L.rows.forEach(function (r) {
      parts.push('<rect class="band ' + r.kind + '" x="0" y="' + r.top + '" width="' + L.width + '" height="' + (r.bottom - r.top) + '"/>');
      parts.push('<text class="rowlabel" x="6" y="' + (r.y + 3.5) + '">' + esc(r.label) + "</text>");
    });
    (L.bands || []).forEach(function (b, i) {  // a positional circuit: one column band per span
      if (i % 2 === 0) { parts.push('<rect class="spanband" x="' + b[0] + '" y="0" width="' + (b[1] - b[0]) + '" height="' + L.height + '"/>'); }
      parts.push('<text class="spanlabel" x="' + ((b[0] + b[1]) / 2) + '" y="30">' + esc(b[2]) + "</text>");
    });
    L.columns.forEach(function (c) {
      parts.push('<text class="collabel" x="' + c[0] + '" y="' + (L.height - 10) + '">' + esc(c[1]) + "</text>");
    });
    parts.push('<g id="edges"></g><g id="bedges"></g><g id="nodes">');
    NODES.forEach(function (n, i) {
      var link = "";
      if (n.link && n.parent && byName[n.parent] !== undefined) {
        var p = NODES[byName[n.parent]];
        link = '<line class="nlink" x1="' + (p.x + p.w / 2) + '" y1="' + p.y + '" x2="' + (n.x - n.w / 2) + '" y2="' + n.y + '"/>';
      }
      parts.push('<g class="node ' + n.kind + '" data-i="' + i + '" data-name="' + esc(n.name) + '">' + link +
        '<rect x="' + (n.x - n.w / 2) + '" y="' + (n.y - n.h / 2) + '" width="' + n.w + '" height="' + n.h + '" rx="' +
        (n.kind === "head" ? 10 : 3) + '"/><text x="' + n.x + '" y="' + (n.y + 3.5) + '">' + esc(n.label) + "</text></g>");
    });
    parts.push('</g><g id="ports"></g>');
    svg.innerHTML = parts.join("");
    fit();
  }
  var zoom = 1;
  function fit() {
    var L = D.layout, avail = Math.max(200, $("canvas").clientWidth - 14);
    var s = Math.min(1.8, Math.max(0.4, avail / L.width)) * zoom;
    svg.setAttribute("width", (L.width * s).toFixed(0));
    svg.setAttribute("height", (L.height * s).toFixed(0));
  }
  $("zoom-in").addEventListener("click", function () { zoom *= 1.25; fit(); });
  $("zoom-out").addEventListener("click", function () { zoom /= 1.25; fit(); });
  window.addEventListener("resize", fit);

  function colourOf(e) {
    if (state.compare && D.compare) { return inB[edgeKey(e)] ? SHARED : ONLY_A; }
    return e[3] < 0 ? NEG : POS;
  }

  function draw() {
    var shown = selectEdges();
    state.shown = shown;
    var drawn = shown.slice(0, MAX_DRAW);
    var maxAbs = 0;
    drawn.forEach(function (i) { maxAbs = Math.max(maxAbs, Math.abs(EDGES[i][3])); });
    var parts = [], ports = {}, active = {};
    for (var j = drawn.length - 1; j >= 0; j--) { // weakest first, strongest on top
      var i = drawn[j], e = EDGES[i];
      var t = maxAbs > 0 ? Math.abs(e[3]) / maxAbs : 1;
      // a kept edge with a bootstrap inclusion frequency (e[5]) is shaded by it: faint when few resamples keep it
      var opacity = e.length > 5 ? 0.12 + 0.83 * e[5] : 0.3 + 0.6 * t;
      parts.push('<path class="edge" data-e="' + i + '" d="' + path(e) + '" stroke="' + colourOf(e) + '" stroke-width="' +
        (0.5 + 5.5 * t).toFixed(2) + '" stroke-opacity="' + opacity.toFixed(2) + '"/>');
      active[e[0]] = true; active[e[1]] = true;
      if (e[2]) { ports[e[1] + e[2]] = [e[1], e[2]]; }
    }
    $("edges").innerHTML = parts.join("");
    var bparts = [];
    var onlyB = 0;
    if (state.compare && D.compare) {
      var shownKeys = {};
      shown.forEach(function (i) { shownKeys[edgeKey(EDGES[i])] = true; });
      D.compare.edges.forEach(function (key) {
        if (shownKeys[key]) { return; }
        var f = key.split(":"), e = [+f[0], +f[1], f[2], 0, 0];
        if (!(passes(e[0]) && passes(e[1]))) { return; }
        onlyB++;
        bparts.push('<path class="edge onlyb" data-b="' + esc(key) + '" d="' + path(e) + '" stroke="' + ONLY_B + '" stroke-width="2"/>');
        active[e[0]] = true; active[e[1]] = true;
      });
    }
    $("bedges").innerHTML = bparts.join("");
    $("ports").innerHTML = Object.keys(ports).sort().map(function (k) {
      var n = NODES[ports[k][0]], q = ports[k][1];
      return '<text class="port" x="' + portX(n, q) + '" y="' + (n.y + n.h / 2 + 8) + '">' + q + "</text>";
    }).join("");
    var nActive = 0;
    var groups = $("nodes").children;
    for (var g = 0; g < groups.length; g++) {
      var idx = +groups[g].getAttribute("data-i"), n = NODES[idx];
      var on = !!active[idx] || (n.kind === "neuron" && n.kept && passes(idx) && !!active[byName[n.parent]]);
      if (on) { nActive++; }
      groups[g].classList.toggle("active", on);
      groups[g].classList.toggle("hidden", !passes(idx));
      groups[g].classList.toggle("selected", state.selected === "n" + idx);
    }
    var more = shown.length > MAX_DRAW ? " (drawing the strongest " + MAX_DRAW + ")" : "";
    $("count").textContent = nActive + " nodes \u00b7 " + shown.length + " edges" + more +
      (state.mode === "circuit" ? " \u00b7 kept circuit" : " \u00b7 top " + thousands(state.k) + " of " + thousands(N) + " by |score|");
    $("count").setAttribute("data-nodes", nActive);
    $("count").setAttribute("data-edges", shown.length);
    syncSlider();
    drawCompare(shown, onlyB);
    drawCurveMarker();
  }

  // ---- slider: log scale over 0..N edges
  var slider = $("k-slider"), number = $("k-number");
  number.max = N;
  function kToPos(k) { return N > 0 ? Math.round(1000 * Math.log(k + 1) / Math.log(N + 1)) : 0; }
  function posToK(p) { return Math.min(N, Math.max(0, Math.round(Math.exp(p / 1000 * Math.log(N + 1)) - 1))); }
  function syncSlider() {
    var k = state.mode === "circuit" ? D.kept : state.k;
    slider.value = kToPos(k);
    if (document.activeElement !== number) { number.value = k; }
  }
  function setK(k) {
    state.mode = "top";
    state.k = Math.min(N, Math.max(0, k | 0));
    draw();
  }
  slider.addEventListener("input", function () { setK(posToK(+slider.value)); });
  number.addEventListener("change", function () { setK(+number.value); });
  $("show-circuit").addEventListener("click", function () { state.mode = "circuit"; draw(); });

  // ---- filters
  var lo = $("layer-lo"), hi = $("layer-hi");
  lo.min = hi.min = minLayer; lo.max = hi.max = maxLayer; lo.value = minLayer; hi.value = maxLayer;
  function readLayers() {
    state.lo = isNaN(parseInt(lo.value, 10)) ? minLayer : parseInt(lo.value, 10);
    state.hi = isNaN(parseInt(hi.value, 10)) ? maxLayer : parseInt(hi.value, 10);
    draw();
  }
  lo.addEventListener("change", readLayers);
  hi.addEventListener("change", readLayers);
  Array.prototype.forEach.call(document.querySelectorAll("input.kind"), function (box) {
    box.addEventListener("change", function () { state.kinds[box.value] = box.checked; draw(); });
  });
  if (D.compare) {
    $("compare-toggle").hidden = false;
    $("compare").addEventListener("change", function () { state.compare = $("compare").checked; draw(); });
  }

  // ---- details, hover
  var tooltip = $("tooltip");
  function edgeRank(i) { return i + 1; }
  function nodeScoreText(n) {
    if (n.score !== null) { return fmt(n.score); }
    if (n.out_sum !== null && n.out_sum !== undefined) { return fmt(n.out_sum) + " (sum of its out-edges)"; }
    return "\u2014";
  }
  function edgeList(title, list) {
    if (!list.length) { return "<h3>" + title + " (0)</h3>"; }
    var rows = list.slice(0, 12).map(function (i) {
      var e = EDGES[i];
      return '<li><a href="#" data-pick="e' + i + '">' + esc(edgeName(e)) + "</a> " + fmt(e[3]) + "</li>";
    });
    var more = list.length > 12 ? "<li>\u2026 " + (list.length - 12) + " more</li>" : "";
    return "<h3>" + title + " (" + list.length + ")</h3><ul>" + rows.join("") + more + "</ul>";
  }
  function nodeDetails(idx) {
    var n = NODES[idx], ins = [], outs = [];
    state.shown.forEach(function (i) {
      if (EDGES[i][1] === idx) { ins.push(i); }
      if (EDGES[i][0] === idx) { outs.push(i); }
    });
    var html = '<h2 id="detail-name">' + esc(n.name) + "</h2><table>" +
      "<tr><th>kind</th><td>" + n.kind + "</td></tr>" +
      (n.layer !== null ? "<tr><th>layer</th><td>" + n.layer + "</td></tr>" : "") +
      '<tr><th>score</th><td id="detail-score">' + nodeScoreText(n) + "</td></tr>" +
      "<tr><th>in circuit</th><td>" + (n.kept ? "yes" : "no") + (D.compare ? " \u00b7 in " + esc(D.compare.label) + ": " + (nodesB[idx] ? "yes" : "no") : "") + "</td></tr></table>";
    if (n.top_neurons && n.top_neurons.length) {
      html += "<h3>top neurons</h3><ul>" + n.top_neurons.slice(0, 10).map(function (p) {
        return "<li>" + esc(n.name) + ".n" + p[0] + " " + fmt(p[1]) + "</li>";
      }).join("") + "</ul>";
    }
    if (n.neurons && n.neurons.length) {
      html += "<h3>kept neurons (" + n.neurons.length + ")</h3><p>" + n.neurons.slice(0, 40).map(function (x) { return "n" + x; }).join(", ") +
        (n.neurons.length > 40 ? ", \u2026" : "") + "</p>";
    }
    var qkvIns = { q: 0, k: 0, v: 0 };
    ins.forEach(function (i) { if (EDGES[i][2]) { qkvIns[EDGES[i][2]]++; } });
    if (n.kind === "head") { html += "<p>inputs shown: q " + qkvIns.q + ", k " + qkvIns.k + ", v " + qkvIns.v + "</p>"; }
    return html + edgeList("in-edges", ins) + edgeList("out-edges", outs);
  }
  function edgeDetails(i) {
    var e = EDGES[i];
    return '<h2 id="detail-name">' + esc(edgeName(e)) + "</h2><table>" +
      '<tr><th>score</th><td id="detail-score">' + fmt(e[3]) + "</td></tr>" +
      "<tr><th>rank by |score|</th><td>" + edgeRank(i) + " of " + N + "</td></tr>" +
      "<tr><th>input</th><td>" + (e[2] ? e[2] + " (of the head)" : "single input") + "</td></tr>" +
      "<tr><th>in circuit</th><td>" + (e[4] ? "yes" : "no") + (D.compare ? " \u00b7 in " + esc(D.compare.label) + ": " + (inB[edgeKey(e)] ? "yes" : "no") : "") + "</td></tr>" +
      (e.length > 5 ? '<tr><th>bootstrap inclusion</th><td id="detail-frequency">' + (100 * e[5]).toFixed(0) + "% of resamples</td></tr>" : "") +
      '</table><p>from <a href="#" data-pick="n' + e[0] + '">' + esc(NODES[e[0]].name) + '</a> to <a href="#" data-pick="n' + e[1] + '">' + esc(NODES[e[1]].name) + "</a></p>";
  }
  function pick(what) {
    state.selected = what;
    $("details").innerHTML = what[0] === "n" ? nodeDetails(+what.slice(1)) : edgeDetails(+what.slice(1));
    var groups = $("nodes").children;
    for (var g = 0; g < groups.length; g++) { groups[g].classList.toggle("selected", what === "n" + groups[g].getAttribute("data-i")); }
    var paths = $("edges").children;
    for (var p = 0; p < paths.length; p++) { paths[p].classList.toggle("selected", what === "e" + paths[p].getAttribute("data-e")); }
  }
  function target(ev) {
    var el = ev.target.closest ? ev.target.closest("[data-i],[data-e],[data-b]") : null;
    if (!el) { return null; }
    if (el.hasAttribute("data-i")) { return "n" + el.getAttribute("data-i"); }
    if (el.hasAttribute("data-e")) { return "e" + el.getAttribute("data-e"); }
    return "b" + el.getAttribute("data-b");
  }
  function label(what) {
    if (what[0] === "n") { var n = NODES[+what.slice(1)]; return n.name + "  score " + nodeScoreText(n); }
    if (what[0] === "e") { var e = EDGES[+what.slice(1)]; return edgeName(e) + "  " + fmt(e[3]); }
    var f = what.slice(1).split(":");
    return NODES[+f[0]].name + "->" + NODES[+f[1]].name + (f[2] ? "<" + f[2] + ">" : "") + "  (only in " + D.compare.label + ")";
  }
  svg.addEventListener("mousemove", function (ev) {
    var what = target(ev);
    if (!what) { tooltip.hidden = true; return; }
    tooltip.textContent = label(what);
    tooltip.style.left = (ev.clientX + 14) + "px";
    tooltip.style.top = (ev.clientY + 10) + "px";
    tooltip.hidden = false;
  });
  svg.addEventListener("mouseleave", function () { tooltip.hidden = true; });
  svg.addEventListener("click", function (ev) {
    var what = target(ev);
    if (what && what[0] !== "b") { pick(what); }
  });
  $("details").addEventListener("click", function (ev) {
    var a = ev.target.closest ? ev.target.closest("[data-pick]") : null;
    if (a) { ev.preventDefault(); pick(a.getAttribute("data-pick")); }
  });

  // ---- compare
  function ratio(a, b, both) { return b ? a / b : (both ? 1 : 0); }
  function drawCompare(shown, onlyB) {
    var box = $("compare-stats");
    if (!D.compare || !state.compare) { box.hidden = true; return; }
    var shared = 0;
    shown.forEach(function (i) { if (inB[edgeKey(EDGES[i])]) { shared++; } });
    var a = shown.length, b = D.compare.edges.length, both = a === 0 && b === 0;
    var p = ratio(shared, a, both), r = ratio(shared, b, both), j = ratio(shared, a + b - shared, both);
    box.hidden = false;
    box.innerHTML = "<h2>Compare with " + esc(D.compare.label) + "</h2>" +
      '<p><span class="sw" style="background:' + SHARED + '"></span>shared ' + shared +
      ' <span class="sw" style="background:' + ONLY_A + '"></span>only shown ' + (a - shared) +
      ' <span class="sw dashed" style="background:' + ONLY_B + '"></span>only ' + esc(D.compare.label) + " " + (b - shared) + "</p>" +
      '<table id="compare-table"><tr><th></th><th>precision</th><th>recall</th><th>Jaccard</th></tr>' +
      '<tr><th>edges (shown)</th><td>' + p.toFixed(3) + "</td><td>" + r.toFixed(3) + "</td><td>" + j.toFixed(3) + "</td></tr>" +
      "<tr><th>nodes (kept)</th><td>" + D.compare.kept_stats.nodes.precision.toFixed(3) + "</td><td>" +
      D.compare.kept_stats.nodes.recall.toFixed(3) + "</td><td>" + D.compare.kept_stats.nodes.jaccard.toFixed(3) + "</td></tr></table>";
  }

  // ---- faithfulness curve (log x: edges)
  var curve = $("curve-svg"), CW = 320, CH = 190, M = { l: 38, r: 10, t: 10, b: 30 };
  function usable(list) { return (list || []).filter(function (p) { return p.edges !== null && p.faithfulness !== null; }); }
  // the manifest's curves (signed ranking: CPR; |score|: CMD), the selection's ranking first; an older page: D.curve
  var series = (D.curves && D.curves.length ? D.curves : [{ label: "faithfulness", points: D.curve }])
    .map(function (c) { return { label: c.label, points: usable(c.points) }; })
    .filter(function (c) { return c.points.length; });
  var pts = [].concat.apply([], series.map(function (c) { return c.points; }));
  var xMax = Math.max(N, D.kept, 1);
  function cx(edges) { return M.l + (CW - M.l - M.r) * Math.log(edges + 1) / Math.log(xMax + 1); }
  var fs = pts.map(function (p) { return p.faithfulness; }).concat([0, 1]);
  if (D.chosen.faithfulness !== null && D.chosen.faithfulness !== undefined) { fs.push(D.chosen.faithfulness); }
  var fLo = Math.min.apply(null, fs), fHi = Math.max.apply(null, fs);
  function cy(f) { return CH - M.b - (CH - M.t - M.b) * (f - fLo) / ((fHi - fLo) || 1); }
  function drawCurve() {
    curve.setAttribute("viewBox", "0 0 " + CW + " " + CH);
    curve.setAttribute("width", CW);
    curve.setAttribute("height", CH);
    if (!pts.length) { curve.innerHTML = '<text x="10" y="20" class="hint">no curve in manifest.json</text>'; return; }
    var parts = ['<line class="axis" x1="' + M.l + '" y1="' + (CH - M.b) + '" x2="' + (CW - M.r) + '" y2="' + (CH - M.b) + '"/>',
      '<line class="axis" x1="' + M.l + '" y1="' + M.t + '" x2="' + M.l + '" y2="' + (CH - M.b) + '"/>',
      '<line class="one" x1="' + M.l + '" y1="' + cy(1) + '" x2="' + (CW - M.r) + '" y2="' + cy(1) + '"/>',
      '<text class="tick" x="' + (M.l - 4) + '" y="' + (cy(1) + 3) + '" text-anchor="end">1</text>',
      '<text class="tick" x="' + (M.l - 4) + '" y="' + (cy(0) + 3) + '" text-anchor="end">0</text>',
      '<text class="tick" x="' + ((CW + M.l) / 2) + '" y="' + (CH - 4) + '" text-anchor="middle">edges kept (log scale), click a point</text>',
    ];
    series.forEach(function (c, j) {
      var line = c.points.map(function (p, i) { return (i ? "L" : "M") + cx(p.edges).toFixed(1) + "," + cy(p.faithfulness).toFixed(1); }).join(" ");
      parts.push('<path class="curve' + (j ? " alt" : "") + '" d="' + line + '"><title>' + esc(c.label) + "</title></path>");
      c.points.forEach(function (p) {
        parts.push('<circle class="pt' + (j ? " alt" : "") + '" data-k="' + p.edges + '" cx="' + cx(p.edges).toFixed(1) + '" cy="' + cy(p.faithfulness).toFixed(1) +
          '" r="3.5"><title>' + esc(c.label) + ": " + p.edges + " edges (" + (100 * p.fraction).toPrecision(2) + "%): f = " + fmt(p.faithfulness) + "</title></circle>");
      });
      if (series.length > 1) {
        parts.push('<line class="curve' + (j ? " alt" : "") + '" x1="' + (M.l + 6) + '" x2="' + (M.l + 22) + '" y1="' + (M.t + 6 + 12 * j) + '" y2="' + (M.t + 6 + 12 * j) + '"/>' +
          '<text class="tick" x="' + (M.l + 26) + '" y="' + (M.t + 9 + 12 * j) + '">' + esc(c.label) + "</text>");
      }
    });
    if (D.chosen.faithfulness !== null && D.chosen.faithfulness !== undefined) {
      var x = cx(D.chosen.edges), y = cy(D.chosen.faithfulness);
      parts.push('<circle id="chosen" class="chosen" cx="' + x.toFixed(1) + '" cy="' + y.toFixed(1) + '" r="5.5"><title>chosen circuit</title></circle>' +
        '<text class="tick" x="' + (x > CW * 0.55 ? x - 8 : x + 8).toFixed(1) + '" y="' + (y + 16).toFixed(1) +
        '" text-anchor="' + (x > CW * 0.55 ? "end" : "start") + '">chosen: ' + D.chosen.edges + " edges, f = " + fmt(D.chosen.faithfulness) + "</text>");
    }
    parts.push('<line id="k-marker" class="marker" x1="0" x2="0" y1="' + M.t + '" y2="' + (CH - M.b) + '"/>');
    curve.innerHTML = parts.join("");
    curve.addEventListener("click", function (ev) {
      var el = ev.target.closest ? ev.target.closest("[data-k]") : null;
      if (el) { setK(+el.getAttribute("data-k")); }
    });
  }
  function drawCurveMarker() {
    var m = $("k-marker");
    if (!m) { return; }
    var x = cx(state.mode === "circuit" ? D.kept : state.k).toFixed(1);
    m.setAttribute("x1", x); m.setAttribute("x2", x);
  }

  // ---- header and legend
  $("title").textContent = D.title || "circuit";
  var meta = D.meta, bits = [];
  if (meta.pairs_total !== null && meta.pairs_total !== undefined) {  // a positional circuit: (edge, span) pairs
    bits.push(thousands(D.kept) + " of " + thousands(meta.pairs_total) + " (edge, span) pairs kept" +
              (meta.edges_kept ? " (" + thousands(meta.edges_kept) + " edges when projected)" : ""));
  } else if (meta.edges_total !== null && meta.edges_total !== undefined) { bits.push(thousands(D.kept) + " of " + thousands(meta.edges_total) + " edges kept"); }
  ["cpr", "cmd"].forEach(function (k) { if (meta[k] !== null && meta[k] !== undefined) { bits.push(k.toUpperCase() + " " + fmt(meta[k])); } });
  if (meta.stability) { bits.push("bootstrap (" + meta.stability.k + "): edge Jaccard " + fmt(meta.stability.edge_jaccard) + ", node Jaccard " + fmt(meta.stability.node_jaccard) + "; kept edges shaded by inclusion"); }
  ["metric", "ablation", "granularity", "n", "seed"].forEach(function (k) { if (meta[k] !== null && meta[k] !== undefined) { bits.push(k + " " + meta[k]); } });
  if (!D.scores_complete) { bits.push("no scores.tsv: the slider ranks the kept edges only"); }
  $("summary").textContent = bits.join(" \u00b7 ");
  $("legend").innerHTML = "<h2>Legend</h2><p>" +
    '<span class="sw" style="background:' + POS + '"></span>positive score ' +
    '<span class="sw" style="background:' + NEG + '"></span>negative score; width grows with |score|. ' +
    "Heads are rounded, MLPs square, neurons sit right of their MLP; an edge into a head ends at its q, k or v port (left to right).</p>";

  drawStatic();
  drawCurve();
  draw();
  window.circuitViewer = { state: state, setK: setK, pick: pick, data: D };
})();
