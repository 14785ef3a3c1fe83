// Log dashboard: draws the five charts from `api/dashboard` with ECharts (loaded before this file,
// the copy scripts/install_js.sh fetched from npm; never a CDN) and refreshes them every
// data-refresh-s seconds while a preset range is selected (a custom range is fixed in time).
// URLs are relative (the page's <base> is its mount point). Values from the logs (paths, user
// agents) reach the DOM as text only; the one HTML tooltip escapes them.
"use strict";

(() => {
  const REFRESH_MS = Number(document.body.dataset.refreshS || 15) * 1000;
  const form = document.getElementById("range-form");
  const select = document.getElementById("range");
  const custom = document.getElementById("custom");
  const startInput = document.getElementById("start");
  const endInput = document.getElementById("end");
  const status = document.getElementById("status");
  const summary = document.getElementById("summary");
  const empty = document.getElementById("empty");
  const chartsSection = document.getElementById("charts");
  const dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  const integers = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const decimals = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const charts = new Map(); // data-chart name -> ECharts instance
  let timer = null;
  let pending = null; // AbortController of the request in flight
  let lastRange = null; // the `range` of the last answer, to prefill the custom inputs

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  }

  function showStatus(text, isError, link) {
    status.replaceChildren(document.createTextNode(text));
    status.classList.toggle("error", isError);
    if (link) {
      const anchor = element("a", null, link.text);
      anchor.href = link.href;
      anchor.target = "_top"; // sign in in the whole window, not inside the iframe
      status.append(" ", anchor);
    }
  }

  function formatTime(ms) {
    return new Date(ms).toLocaleString();
  }

  function formatInterval(seconds) {
    if (seconds % 3600 === 0) return `${seconds / 3600} h`;
    if (seconds % 60 === 0) return `${seconds / 60} min`;
    return `${seconds} s`;
  }

  // datetime-local wants local time without an offset: YYYY-MM-DDTHH:MM:SS.
  function toLocalInput(date) {
    const pad = (n) => String(n).padStart(2, "0");
    return (
      `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
      `T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`
    );
  }

  function query() {
    if (select.value !== "custom") return new URLSearchParams({ range: select.value });
    const start = new Date(startInput.value);
    const end = new Date(endInput.value);
    if (Number.isNaN(start.getTime()) || Number.isNaN(end.getTime())) return null;
    return new URLSearchParams({ start: start.toISOString(), end: end.toISOString() });
  }

  // ------------------------------------------------------------------ chart options

  function base() {
    return {
      animation: false, // screenshots and tests see the final state at once
      backgroundColor: "transparent",
      grid: { left: 12, right: 20, top: 36, bottom: 8, containLabel: true },
    };
  }

  function timeAxis(range) {
    return { type: "time", min: Date.parse(range.start), max: Date.parse(range.end) };
  }

  function requestsOption(data) {
    return {
      ...base(),
      tooltip: { trigger: "axis", valueFormatter: (v) => `${decimals.format(v)} req/min` },
      xAxis: timeAxis(data.range),
      yAxis: { type: "value", name: "req/min", minInterval: 1 },
      series: [
        {
          name: "Requests per minute",
          type: "line",
          showSymbol: false,
          areaStyle: { opacity: 0.25 },
          data: data.requests_per_minute,
        },
      ],
    };
  }

  // Small symbols: a bucket between two empty ones (gaps) is a point without a line to show it.
  function errorSeries(name, color, points) {
    return { name, type: "line", symbolSize: 4, connectNulls: false, color, data: points };
  }

  function errorsOption(data) {
    return {
      ...base(),
      legend: { top: 0 },
      tooltip: { trigger: "axis", valueFormatter: (v) => (v === null || v === undefined ? "no requests" : `${v} %`) },
      xAxis: timeAxis(data.range),
      yAxis: { type: "value", min: 0, axisLabel: { formatter: "{value} %" } },
      series: [
        errorSeries("4xx", "#d48806", data.error_rates["4xx"]),
        errorSeries("5xx", "#cf1322", data.error_rates["5xx"]),
      ],
    };
  }

  function endpointsOption(data) {
    const endpoints = data.top_endpoints;
    const labels = endpoints.map((e) => `${e.method} ${e.path_template}`);
    const bar = (name, color, values) => ({ name, type: "bar", stack: "requests", color, barMaxWidth: 22, data: values });
    return {
      ...base(),
      legend: { top: 0 },
      tooltip: {
        trigger: "axis",
        axisPointer: { type: "shadow" },
        formatter: (params) => {
          const e = endpoints[params[0].dataIndex];
          const latency = e.avg_latency_ms === null ? "–" : `${decimals.format(e.avg_latency_ms)} ms`;
          return (
            `<b>${escapeHtml(labels[params[0].dataIndex])}</b><br>` +
            `${integers.format(e.requests)} requests, ${e.error_pct} % errors<br>` +
            `4xx ${integers.format(e.errors_4xx)} · 5xx ${integers.format(e.errors_5xx)} · mean latency ${latency}`
          );
        },
      },
      xAxis: { type: "value", minInterval: 1 },
      yAxis: { type: "category", inverse: true, data: labels, axisLabel: { width: 220, overflow: "truncate" } },
      series: [
        bar("2xx/3xx", "#389e0d", endpoints.map((e) => e.requests - e.errors_4xx - e.errors_5xx)),
        bar("4xx", "#d48806", endpoints.map((e) => e.errors_4xx)),
        bar("5xx", "#cf1322", endpoints.map((e) => e.errors_5xx)),
      ],
    };
  }

  function agentsOption(data) {
    const groups = [
      ["Browser", data.user_agents.browser],
      ["OS", data.user_agents.os],
      ["Device", data.user_agents.device],
    ];
    const centers = ["17%", "50%", "83%"];
    return {
      ...base(),
      tooltip: { trigger: "item", valueFormatter: (v) => `${integers.format(v)} requests` },
      title: groups.map(([name], i) => ({
        text: name,
        left: centers[i],
        top: 0,
        textAlign: "center",
        textStyle: { fontSize: 13 },
      })),
      series: groups.map(([name, entries], i) => ({
        name,
        type: "pie",
        radius: ["30%", "55%"],
        center: [centers[i], "55%"],
        label: { formatter: "{b} {d}%", fontSize: 11, width: 110, overflow: "truncate" },
        labelLine: { length: 6, length2: 6 },
        data: entries.map((e) => ({ name: e.name, value: e.count })),
      })),
    };
  }

  function heatmapOption(data) {
    const heat = data.heatmap;
    // Hours without requests stay blank (the split areas show the grid) rather than the lowest colour.
    const cells = heat.counts.flatMap((row, day) => row.map((count, hour) => [hour, day, count])).filter((c) => c[2] > 0);
    return {
      ...base(),
      grid: { left: 12, right: 20, top: 8, bottom: 56, containLabel: true },
      tooltip: {
        trigger: "item",
        formatter: (p) => `${heat.weekdays[p.value[1]]} ${p.value[0]}:00–${p.value[0]}:59 UTC: ${integers.format(p.value[2])} requests`,
      },
      xAxis: { type: "category", data: heat.hours.map(String), splitArea: { show: true } },
      yAxis: { type: "category", data: heat.weekdays, inverse: true, splitArea: { show: true } },
      visualMap: {
        min: 0,
        max: Math.max(1, heat.max),
        calculable: true,
        orient: "horizontal",
        left: "center",
        bottom: 0,
        itemHeight: 200,
        inRange: { color: ["#c6dbef", "#08519c"] },
      },
      series: [{ name: "Requests", type: "heatmap", data: cells, emphasis: { itemStyle: { borderColor: "#333", borderWidth: 1 } } }],
    };
  }

  const OPTIONS = {
    requests: requestsOption,
    errors: errorsOption,
    endpoints: endpointsOption,
    agents: agentsOption,
    heatmap: heatmapOption,
  };

  // ------------------------------------------------------------------ rendering

  function renderSummary(data) {
    const s = data.summary;
    const facts = [
      ["Requests", integers.format(s.requests)],
      ["4xx", `${integers.format(s.errors_4xx)} (${s.error_4xx_pct ?? 0} %)`],
      ["5xx", `${integers.format(s.errors_5xx)} (${s.error_5xx_pct ?? 0} %)`],
      ["Mean latency", s.avg_latency_ms === null ? "–" : `${decimals.format(s.avg_latency_ms)} ms`],
      ["Clients", integers.format(s.unique_clients)],
    ];
    summary.replaceChildren(
      ...facts.map(([label, value]) => {
        const div = element("div");
        div.append(element("dt", null, label), element("dd", "num", value));
        return div;
      }),
    );
    summary.hidden = false;
  }

  function renderCharts(data) {
    if (typeof echarts === "undefined") {
      empty.textContent = "ECharts is not installed: run scripts/install_js.sh (part of `make setup`).";
      empty.classList.add("error-text");
      empty.hidden = false;
      chartsSection.hidden = true;
      return;
    }
    chartsSection.hidden = false; // before init: ECharts measures its element
    for (const el of chartsSection.querySelectorAll("[data-chart]")) {
      const name = el.dataset.chart;
      let chart = charts.get(name);
      if (!chart) {
        chart = echarts.init(el, dark ? "dark" : null, { renderer: "canvas" });
        charts.set(name, chart);
      } else {
        chart.resize();
      }
      chart.setOption(OPTIONS[name](data), { notMerge: true });
      el.dataset.rendered = "true";
    }
  }

  function render(data) {
    lastRange = data.range;
    renderSummary(data);
    const when = `between ${formatTime(Date.parse(data.range.start))} and ${formatTime(Date.parse(data.range.end))}`;
    if (data.total === 0) {
      empty.classList.remove("error-text");
      empty.textContent =
        `No requests in ${data.index_pattern} ${when}. The app_logs streaming job indexes them; ` +
        "pick a longer range, or check that the job runs (Streaming jobs page).";
      empty.hidden = false;
      chartsSection.hidden = true;
    } else {
      empty.hidden = true;
      renderCharts(data);
    }
    const every = select.value === "custom" ? "fixed range" : `refreshes every ${REFRESH_MS / 1000} s`;
    showStatus(
      `Updated ${new Date().toLocaleTimeString()} · ${integers.format(data.total)} requests ${when}, ` +
        `${formatInterval(data.range.interval_s)} buckets · ${every}`,
      false,
    );
    document.body.dataset.total = String(data.total);
  }

  async function refresh() {
    window.clearTimeout(timer);
    timer = null;
    const params = query();
    if (params === null) {
      showStatus("Pick a start and an end for the custom range.", true);
      return;
    }
    if (pending) pending.abort();
    const controller = new AbortController();
    pending = controller;
    try {
      const response = await fetch(`api/dashboard?${params}`, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
        signal: controller.signal,
      });
      if (response.status === 401 || response.status === 403) {
        showStatus("Your Airflow session has ended.", true, {
          text: "Sign in again",
          href: new URL("../../auth/login", document.baseURI).href,
        });
        return; // no refresh: every request would fail the same way
      }
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? response.statusText);
        showStatus(`Could not load the dashboard (HTTP ${response.status}): ${detail}`, true);
      } else {
        render(await response.json());
      }
    } catch (error) {
      if (error.name === "AbortError") return; // a newer request replaced this one
      showStatus(`Could not reach the Airflow api-server: ${error}`, true);
    } finally {
      if (pending === controller) {
        pending = null;
        if (select.value !== "custom") timer = window.setTimeout(refresh, REFRESH_MS);
      }
    }
  }

  select.addEventListener("change", () => {
    const isCustom = select.value === "custom";
    custom.hidden = !isCustom;
    if (isCustom) {
      // Start from the range on screen, so "custom" means "this one, adjusted".
      const end = lastRange ? new Date(Date.parse(lastRange.end)) : new Date();
      const start = lastRange ? new Date(Date.parse(lastRange.start)) : new Date(end.getTime() - 3600 * 1000);
      startInput.value = toLocalInput(start);
      endInput.value = toLocalInput(end);
      window.clearTimeout(timer);
      showStatus("Pick a start and an end, then Apply.", false);
      return;
    }
    refresh();
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    refresh();
  });

  window.addEventListener("resize", () => {
    for (const chart of charts.values()) chart.resize();
  });

  refresh();
})();
