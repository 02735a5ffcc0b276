// The console's own script: copy buttons, and the overview's charts fed from live.json.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-copy]");
    if (!button) return;
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (source && navigator.clipboard) {
      navigator.clipboard.writeText(source.textContent).then(function () { button.textContent = "Copied"; });
    }
  });

  var script = document.getElementById("console-js");
  var url = script && script.getAttribute("data-live");
  if (!url || typeof uPlot === "undefined") return;

  var charts = {};
  function make(id, series) {
    var el = document.getElementById(id);
    var opts = {
      width: Math.max(el.clientWidth, 200), height: 200,
      series: [{}].concat(series.map(function (s) { return { label: s[0], stroke: s[1], width: 2, spanGaps: true }; })),
      axes: [{}, { size: 50 }],
      legend: { show: true },
    };
    var empty = [[]].concat(series.map(function () { return []; }));
    return new uPlot(opts, empty, el);
  }
  charts.rps = make("chart-rps", [["req/s", "#2456c7"]]);
  charts.latency = make("chart-latency", [["P50", "#1f7a3a"], ["P95", "#c77a00"], ["P99", "#b3261e"]]);

  function refresh() {
    fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } })
      .then(function (r) { if (r.status === 200) return r.json(); if (r.redirected || r.status === 401) location.href = location.pathname; })
      .then(function (data) {
        if (!data) return;
        var h = data.history;
        var ts = h.map(function (p) { return p.ts; });
        charts.rps.setData([ts, h.map(function (p) { return p.rps; })]);
        charts.latency.setData([ts, h.map(function (p) { return p.p50_ms; }), h.map(function (p) { return p.p95_ms; }), h.map(function (p) { return p.p99_ms; })]);
      })
      .catch(function () {});
  }
  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (k) {
      var el = charts[k].root.parentNode;
      charts[k].setSize({ width: Math.max(el.clientWidth, 200), height: 200 });
    });
  });
  refresh();
  setInterval(refresh, 2000);
})();
