// antiprof flame graph: rebuilds the frame tree from the inline JSON and draws it as positioned
// <div>s (root on top). Click zooms into a frame, the search box highlights matching frames and
// says what share of all samples they cover. No network, no libraries.
(function () {
  "use strict";

  var ROW = 18;          // pixels per stack level
  var MIN_PIXELS = 0.5;  // narrower frames are not drawn (their samples stay in their parent)
  var PALETTE = {        // [hue, saturation, lightness] per kind; the SVG renderer uses the same
    root: [0, 0, 62], process: [210, 8, 72], kernel: [28, 85, 58],
    native: [4, 72, 62], jit: [110, 55, 52], cpython: [190, 65, 55]
  };
  var KIND_NAMES = { kernel: "kernel", native: "native", jit: "JIT", cpython: "Python" };

  var data = JSON.parse(document.getElementById("flamegraph-data").textContent);
  var graph = document.getElementById("flamegraph");
  var details = document.getElementById("details");
  var search = document.getElementById("search");
  var matchLine = document.getElementById("match");
  var reset = document.getElementById("reset");

  // --- the tree: node i has label[i], value[i], parent[i], depth[i], x[i] (left edge in samples)
  var count = data.nodes.length / 3;
  var label = new Int32Array(count), value = new Float64Array(count), parent = new Int32Array(count);
  var depth = new Int32Array(count), x = new Float64Array(count), children = new Array(count);
  var maxDepth = 0;
  (function build() {
    var open = [];  // open[d]: the latest node at depth d; a node's parent is the latest one level up
    for (var i = 0; i < count; i++) {
      label[i] = data.nodes[3 * i];
      value[i] = data.nodes[3 * i + 1];
      depth[i] = data.nodes[3 * i + 2];
      children[i] = [];
      open.length = depth[i];
      parent[i] = depth[i] > 0 ? open[depth[i] - 1] : -1;
      if (parent[i] >= 0) children[parent[i]].push(i);
      open.push(i);
      if (depth[i] > maxDepth) maxDepth = depth[i];
    }
    // widest child first, each child's left edge right after its older siblings
    for (var p = 0; p < count; p++) {
      var kids = children[p], next = x[p];
      kids.sort(function (a, b) { return value[b] - value[a] || a - b; });
      for (var k = 0; k < kids.length; k++) { x[kids[k]] = next; next += value[kids[k]]; }
    }
  })();
  var total = count ? value[0] : 0;

  function name(i) { return data.labels[label[i]][0]; }
  function module(i) { return data.labels[label[i]][1]; }
  function kind(i) { return data.kinds[data.labels[label[i]][2]]; }
  function lines(i) { return data.labels[label[i]][3]; }  // source lines of an interpreted frame, or undefined

  // crc32 of the UTF-8 name: the same colour as the SVG picture gives it
  var crcTable = (function () {
    var table = new Uint32Array(256);
    for (var n = 0; n < 256; n++) {
      var c = n;
      for (var k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
    return table;
  })();
  function crc32(text) {
    var bytes = new TextEncoder().encode(text), crc = 0xffffffff;
    for (var i = 0; i < bytes.length; i++) crc = crcTable[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
    return (crc ^ 0xffffffff) >>> 0;
  }
  function colour(i) {
    var base = PALETTE[kind(i)] || [270, 30, 65], hue = base[0], light = base[2];
    if (base[1] > 20) {
      var spread = (crc32(name(i)) % 1000) / 1000;
      hue += Math.round(spread * 24) - 12;
      light += Math.round(spread * 12) - 6;
    }
    return "hsl(" + ((hue + 360) % 360) + "," + base[1] + "%," + light + "%)";
  }

  function percent(part, whole) { return whole ? (100 * part / whole).toFixed(2) + "%" : "0%"; }
  function describe(i) {
    var where = module(i) ? " (" + module(i) + (lines(i) ? ":" + lines(i).join(", ") : "") + ")" : "";
    var what = KIND_NAMES[kind(i)] ? ", " + KIND_NAMES[kind(i)] : "";
    return name(i) + where + what + ": " + value[i].toLocaleString("en-US") + " samples, " +
      percent(value[i], total) + " of all" + (zoomed > 0 ? ", " + percent(value[i], value[zoomed]) + " of the zoomed frame" : "");
  }

  // --- drawing -----------------------------------------------------------------------------
  var zoomed = 0;
  var matched = null;  // Uint8Array: 1 where the frame's name matches the search

  function draw() {
    graph.textContent = "";
    if (!count) { graph.textContent = "No samples in this profile."; return; }
    var width = graph.clientWidth || 1, left = x[zoomed], span = value[zoomed] || 1;
    var perPixel = span / width, fragment = document.createDocumentFragment();
    for (var a = parent[zoomed]; a >= 0; a = parent[a]) place(a, 0, 100, true, fragment);
    (function walk(i) {
      place(i, 100 * (x[i] - left) / span, 100 * value[i] / span, false, fragment);
      var kids = children[i];
      for (var k = 0; k < kids.length; k++) if (value[kids[k]] / perPixel >= MIN_PIXELS) walk(kids[k]);
    })(zoomed);
    graph.style.height = (maxDepth + 1) * ROW + "px";
    graph.appendChild(fragment);
  }

  function place(i, leftPercent, widthPercent, ancestor, into) {
    var box = document.createElement("div");
    box.className = "frame k-" + kind(i) + (ancestor ? " ancestor" : "") + (matched && matched[i] ? " match" : "");
    box.style.left = leftPercent + "%";
    box.style.width = widthPercent + "%";
    box.style.top = depth[i] * ROW + "px";
    box.style.background = colour(i);
    box.dataset.node = i;
    box.textContent = name(i);
    into.appendChild(box);
  }

  function zoom(i) {
    zoomed = i;
    reset.disabled = i === 0;
    draw();
  }

  // --- search ------------------------------------------------------------------------------
  function pattern(text) {
    try { return new RegExp(text, "i"); } catch (error) {
      return new RegExp(text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"), "i");
    }
  }

  function runSearch() {
    var text = search.value;
    if (!text) { matched = null; matchLine.textContent = ""; draw(); return; }
    var re = pattern(text), byLabel = new Int8Array(data.labels.length);
    for (var l = 0; l < data.labels.length; l++) byLabel[l] = re.test(data.labels[l][0]) ? 1 : 0;
    matched = new Uint8Array(count);
    var covered = 0;  // samples under a matching frame, each counted once (recursion too)
    for (var i = 1; i < count; i++) {
      matched[i] = byLabel[label[i]];
      if (!matched[i]) continue;
      var outer = false;
      for (var a = parent[i]; a > 0; a = parent[a]) if (matched[a]) { outer = true; break; }
      if (!outer) covered += value[i];
    }
    matchLine.textContent = "Matched: " + percent(covered, total) + " (" + covered.toLocaleString("en-US") + " of " +
      total.toLocaleString("en-US") + " samples)";
    matchLine.dataset.share = total ? String(covered / total) : "0";
    draw();
  }

  // --- events ------------------------------------------------------------------------------
  function frameOf(event) {
    var box = event.target.closest ? event.target.closest(".frame") : null;
    return box ? Number(box.dataset.node) : -1;
  }
  graph.addEventListener("mousemove", function (event) {
    var i = frameOf(event);
    if (i >= 0) details.textContent = describe(i);
  });
  graph.addEventListener("click", function (event) {
    var i = frameOf(event);
    if (i >= 0) zoom(i === zoomed ? Math.max(parent[i], 0) : i);
  });
  reset.addEventListener("click", function () { zoom(0); });
  search.addEventListener("input", runSearch);
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") { if (document.activeElement === search && search.value) { search.value = ""; runSearch(); } else zoom(0); }
    if ((event.ctrlKey || event.metaKey) && event.key === "f") { event.preventDefault(); search.focus(); search.select(); }
  });
  var resizing = 0;
  window.addEventListener("resize", function () { clearTimeout(resizing); resizing = setTimeout(draw, 100); });

  (function legend() {
    var list = document.getElementById("legend");
    ["kernel", "native", "jit", "cpython"].forEach(function (k) {
      var item = document.createElement("li"), base = PALETTE[k];
      item.style.setProperty("--swatch", "hsl(" + base[0] + "," + base[1] + "%," + base[2] + "%)");
      item.textContent = KIND_NAMES[k];
      list.appendChild(item);
    });
  })();

  draw();
})();
