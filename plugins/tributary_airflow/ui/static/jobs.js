// Streaming jobs page: renders `api/jobs` into the table and refreshes it every 5 s.
// URLs are relative (the page's <base> is its mount point), so the page works under any prefix.
// Every value is put into the DOM as text, never as HTML.
"use strict";

(() => {
  const REFRESH_MS = 5000;
  const RECENT_ACTIONS_SHOWN = 5;
  const tbody = document.getElementById("jobs");
  const status = document.getElementById("status");
  const numbers = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  const integers = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function formatNumber(value, format) {
    return value === null || value === undefined ? "–" : format.format(value);
  }

  function formatTime(iso) {
    return iso ? new Date(iso).toLocaleString() : "";
  }

  function jobCell(job) {
    const td = element("td");
    td.append(element("div", "job-name", job.job));
    td.append(element("div", "muted", job.description));
    const where = [job.deploy_mode, job.pid !== null ? `pid ${job.pid}` : null, job.app_id].filter(Boolean);
    if (where.length) td.append(element("div", "muted", where.join(" · ")));
    return td;
  }

  // The cell holds the badge alone, so its text is the state (tests and screen readers read it).
  function stateCell(job) {
    const state = job.state.toUpperCase();
    const td = element("td");
    td.dataset.state = state;
    const badge = element("span", `badge state-${job.state}`, state);
    badge.title = `wanted: ${job.desired_state}`;
    if (job.desired_state !== job.state) badge.classList.add("unsettled");
    td.append(badge);
    return td;
  }

  function lastBatchCell(job) {
    const td = element("td");
    td.dataset.lastBatchAgeS = job.last_batch_age_s ?? "";
    td.append(element("div", null, job.last_batch_at ? `${formatDuration(job.last_batch_age_s)} ago` : "never"));
    if (job.last_batch_at) {
      td.title = formatTime(job.last_batch_at);
    }
    return td;
  }

  function restartsCell(job) {
    const td = element("td", "num", integers.format(job.restarts));
    if (job.consecutive_failures > 0) {
      td.append(element("div", "muted", `${job.consecutive_failures} failed in a row`));
    }
    return td;
  }

  function errorCell(job) {
    const td = element("td");
    if (job.last_error) {
      const text = element("div", "error-text", job.last_error);
      text.title = job.last_error;
      td.append(text);
    }
    if (job.next_restart_at) {
      td.append(element("div", "muted", `next restart: ${formatTime(job.next_restart_at)}`));
    }
    return td;
  }

  function actionsCell(job) {
    const td = element("td");
    const list = element("ul", "actions");
    for (const entry of job.recent_actions.slice(0, RECENT_ACTIONS_SHOWN)) {
      const item = element("li");
      item.title = formatTime(entry.at);
      item.append(element("span", "muted", `${new Date(entry.at).toLocaleTimeString()} `));
      item.append(element("span", "action", entry.action));
      if (entry.reason) item.append(document.createTextNode(`: ${entry.reason}`));
      list.append(item);
    }
    td.append(list);
    return td;
  }

  function row(job) {
    const tr = element("tr");
    tr.dataset.job = job.job;
    tr.append(
      jobCell(job),
      stateCell(job),
      lastBatchCell(job),
      element("td", "num", formatNumber(job.input_rows_per_s, numbers)),
      element("td", "num", formatNumber(job.processed_rows_per_s, numbers)),
      element("td", "num", formatNumber(job.lag, integers)),
      restartsCell(job),
      errorCell(job),
      actionsCell(job),
    );
    return tr;
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

  async function refresh() {
    try {
      const response = await fetch("api/jobs", {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      if (response.status === 401 || response.status === 403) {
        showStatus("Your Airflow session has ended.", true, {
          text: "Sign in again",
          href: new URL("../../auth/login", document.baseURI).href,
        });
        return;
      }
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        showStatus(`Could not load the jobs (HTTP ${response.status}): ${body.detail ?? response.statusText}`, true);
        return;
      }
      const jobs = await response.json();
      tbody.replaceChildren(...jobs.map(row));
      showStatus(`Updated ${new Date().toLocaleTimeString()} · refreshes every ${REFRESH_MS / 1000} s`, false);
    } catch (error) {
      showStatus(`Could not reach the Airflow api-server: ${error}`, true);
    } finally {
      window.setTimeout(refresh, REFRESH_MS);
    }
  }

  refresh();
})();
