// qlater dashboard: the page's only script, served by the app itself.
// - asks before a button marked data-confirm posts its form;
// - "select all" on the dead jobs;
// - on the queues page, samples stats.json (qlater_queue_stats) every 5 s
//   and draws each queue's depth (ready + scheduled + running) and lag
//   over time; the samples are kept in this tab's sessionStorage for 30 min.
(function () {
  "use strict";
  var KEEP_MS = 30 * 60 * 1000, EVERY_MS = 5000, KEY = "qlater.samples";

  document.addEventListener("click", function (ev) {
    var b = ev.target.closest && ev.target.closest("[data-confirm]");
    if (b && !window.confirm(b.getAttribute("data-confirm"))) ev.preventDefault();
  });

  document.addEventListener("change", function (ev) {
    if (ev.target.id !== "select-all") return;
    document.querySelectorAll('input[name="ids[]"][type=checkbox]').forEach(function (c) {
      c.checked = ev.target.checked;
    });
  });

  function load() {
    try { return JSON.parse(sessionStorage.getItem(KEY)) || []; } catch (e) { return []; }
  }
  function save(samples) {
    try { sessionStorage.setItem(KEY, JSON.stringify(samples)); } catch (e) { /* full: keep in memory */ }
  }
  var SVG = "http://www.w3.org/2000/svg";

  function draw(samples) {
    document.querySelectorAll("svg.live").forEach(function (svg) {
      var queue = svg.getAttribute("data-queue"), series = svg.getAttribute("data-series");
      var pts = [];
      samples.forEach(function (s) {
        var row = s.rows[queue];
        if (!row) return;
        var v = series === "depth" ? row.depth : row.lag;
        if (v !== null && v !== undefined) pts.push([s.t, v]);
      });
      while (svg.lastChild && svg.lastChild.nodeName !== "title") svg.removeChild(svg.lastChild);
      svg.setAttribute("data-samples", String(pts.length));
      svg.setAttribute("data-last", pts.length ? String(pts[pts.length - 1][1]) : "");
      if (!pts.length) return;
      var w = 300, h = 60, t1 = pts[pts.length - 1][0], t0 = t1 - KEEP_MS;
      var max = Math.max.apply(null, pts.map(function (p) { return p[1]; }).concat([1]));
      var line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", pts.map(function (p) {
        return ((p[0] - t0) / KEEP_MS * w).toFixed(1) + "," + (h - 2 - p[1] / max * (h - 12)).toFixed(1);
      }).join(" "));
      svg.appendChild(line);
      var last = pts[pts.length - 1], dot = document.createElementNS(SVG, "circle");
      dot.setAttribute("cx", ((last[0] - t0) / KEEP_MS * w).toFixed(1));
      dot.setAttribute("cy", (h - 2 - last[1] / max * (h - 12)).toFixed(1));
      dot.setAttribute("r", "2");
      svg.appendChild(dot);
      var label = document.createElementNS(SVG, "text");
      label.setAttribute("x", "2"); label.setAttribute("y", "9");
      label.textContent = "now " + pts[pts.length - 1][1] + " (max " + max + ", 30 min)";
      svg.appendChild(label);
    });
  }

  function sample() {
    var url = document.body.getAttribute("data-stats");
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (rows) {
        var s = { t: Date.now(), rows: {} };
        rows.forEach(function (r) {
          if (r.queue === null || r.ready === null) return;
          s.rows[r.queue] = {
            depth: Number(r.ready) + Number(r.scheduled) + Number(r.running),
            lag: r.lag === null ? 0 : Math.round(Number(r.lag) * 10) / 10
          };
        });
        var samples = load().filter(function (x) { return x.t > s.t - KEEP_MS; });
        samples.push(s);
        save(samples);
        draw(samples);
      })
      .catch(function () { /* the next sample tries again */ });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (document.body.getAttribute("data-page") !== "queues") return;
    draw(load());
    sample();
    setInterval(sample, EVERY_MS);
  });
})();
