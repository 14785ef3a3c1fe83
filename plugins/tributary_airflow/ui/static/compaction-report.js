// Compaction report: draws the charts of the page from the report's JSON (the
// <script type="application/json" id="report-data"> block) with ECharts, which the page loads
// before this file (the copy scripts/install_js.sh fetched from npm; never a CDN).
// Sets data-rendered="true" on each chart element once its options are set.
"use strict";

(() => {
  const source = document.getElementById("report-data");
  if (!source) return;
  const report = JSON.parse(source.textContent);
  const partitions = report.partitions || [];
  const charts = document.querySelectorAll("[data-chart]");
  if (!charts.length || !partitions.length) return;
  if (typeof echarts === "undefined") {
    for (const el of charts) {
      el.textContent = "ECharts is not installed: run scripts/install_js.sh";
      el.classList.add("error-text");
    }
    return;
  }

  const dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  const categories = partitions.map((p) => `${p.table} ${p.day}`);
  const integers = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

  function formatBytes(value) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = Math.abs(value);
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return `${i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
  }

  function base(valueFormatter) {
    return {
      animation: false, // screenshots and tests see the final state at once
      backgroundColor: "transparent",
      grid: { left: 16, right: 16, top: 40, bottom: 8, containLabel: true },
      legend: { top: 0 },
      tooltip: { trigger: "axis", axisPointer: { type: "shadow" }, valueFormatter },
      xAxis: { type: "category", data: categories, axisLabel: { interval: 0, hideOverlap: true } },
      yAxis: { type: "value", axisLabel: { formatter: valueFormatter } },
    };
  }

  const options = {
    rows: {
      ...base((v) => integers.format(v)),
      series: [
        { name: "Rows before", type: "bar", data: partitions.map((p) => p.rows_before) },
        { name: "Rows after", type: "bar", data: partitions.map((p) => p.rows_after) },
        { name: "Rows in lake", type: "bar", data: partitions.map((p) => p.lake_rows) },
      ],
    },
    bytes: {
      ...base(formatBytes),
      series: [
        { name: "Reclaimed in PostgreSQL", type: "bar", data: partitions.map((p) => p.bytes_reclaimed) },
        { name: "Written to the lake", type: "bar", data: partitions.map((p) => p.bytes_written) },
      ],
    },
  };

  for (const el of charts) {
    const option = options[el.dataset.chart];
    if (!option) continue;
    const chart = echarts.init(el, dark ? "dark" : null, { renderer: "canvas" });
    chart.setOption(option);
    el.dataset.rendered = "true";
    window.addEventListener("resize", () => chart.resize());
  }
})();
