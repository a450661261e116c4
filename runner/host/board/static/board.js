/* runner board: the pages' behaviour. Plain browser JavaScript, no build step; the only library is
   uPlot (static/vendor/uplot, MIT), for the curves. Everything comes from the board's own origin. */
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const READ_ONLY = document.body.dataset.readOnly === "true";
const COLORS = ["#1d4ed8", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (e) { data = {error: `HTTP ${response.status}`}; }
  heard();
  if (!response.ok && !(data && data.problems)) throw new Error((data && data.error) || `HTTP ${response.status}`);
  return data;
}

function heard() {
  const live = $("#live");
  if (live) live.textContent = "updated " + new Date().toLocaleTimeString();
}

const fmt = {
  num(v) {
    if (v === null || v === undefined) return "";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(3).replace(/\.?0+e/, "e");
    return v.toPrecision(4).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
  },
  // An axis tick: as many digits as the spacing of the ticks needs (a learning rate that moves in
  // its fifth digit still gets distinct labels).
  tick(v, incr) {
    if (v === 0 || !incr) return fmt.num(v);
    const a = Math.abs(v);
    const [mantissa, exp] = Number(incr.toPrecision(6)).toExponential().split("e");
    const last = Number(exp) - (mantissa.split(".")[1] || "").length;  // the spacing's last digit: 10^last
    const text = a < 1e-3 || a >= 1e5
      ? v.toExponential(Math.min(9, Math.max(0, Math.floor(Math.log10(a)) - last)))
      : v.toFixed(Math.min(10, Math.max(0, -last)));
    return text.replace(/\.(\d*?)0+(e|$)/, (m, d, e) => (d ? `.${d}` : "") + e);
  },
  duration(s) {
    if (s === null || s === undefined) return "";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
  },
  time(stamp) {
    if (!stamp) return "";
    const t = new Date(stamp.replace(/([+-]\d\d)(\d\d)$/, "$1:$2"));
    return isNaN(t) ? stamp : t.toLocaleString();
  },
  size(n) {
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  },
  step(run) {
    if (run.step === null || run.step === undefined) return "";
    return run.total ? `${run.step}/${run.total}` : String(run.step);
  },
};

function stateBadge(state) { return el("span", {class: `state ${state}`, text: state}); }

/* --- curves ------------------------------------------------------------------------------- */

// [steps, series...] for uPlot from rows: one value per step and key (the last logged wins).
function align(rowSets, keys) {
  const steps = new Set();
  const maps = rowSets.map((rows, i) => {
    const m = new Map();
    for (const r of rows) if (typeof r[keys[i]] === "number") { m.set(r.step, r[keys[i]]); steps.add(r.step); }
    return m;
  });
  const xs = [...steps].sort((a, b) => a - b);
  return [xs, ...maps.map((m) => xs.map((x) => (m.has(x) ? m.get(x) : null)))];
}

class Chart {
  constructor(node, title, series, yLabel) {
    this.node = node; this.title = title; this.series = series; this.yLabel = yLabel; this.plot = null;
    this.empty = el("div", {class: "empty", text: `${title}: nothing logged yet`});
    node.append(this.empty);
    window.addEventListener("resize", () => this.plot && this.plot.setSize(this.size()));
  }
  size() { return {width: Math.max(300, this.node.clientWidth - 16), height: this.node.classList.contains("wide") ? 400 : 260}; }
  update(data) {
    const any = data.slice(1).some((ys) => ys.some((y) => y !== null));
    this.empty.hidden = any;
    if (!any) return;
    if (this.plot && this.plot.series.length === data.length) { this.plot.setData(data); return; }
    if (this.plot) this.plot.destroy();
    this.plot = new uPlot({
      title: this.title, ...this.size(),
      scales: {x: {time: false}},
      axes: [{label: "step"}, {label: this.yLabel, size: 80, values: (u, ticks, axis, space, incr) => ticks.map((v) => fmt.tick(v, incr))}],
      series: [{label: "step"}, ...this.series.map((s) => ({
        label: s.label, stroke: s.color, width: 2, spanGaps: true, dash: s.dash,
        points: {show: !!s.points, size: 6}, value: (u, v) => fmt.num(v),
      }))],
    }, data, this.node);
  }
}

/* --- the runs list ---------------------------------------------------------------------- */

function runsPage() {
  const tbody = $("#runs tbody");
  const picked = new Set();
  let runs = [], sortKey = "started", sortDir = -1;

  function visible() {
    const words = $("#filter").value.toLowerCase().split(/\s+/).filter(Boolean);
    const state = $("#state-filter").value;
    return runs.filter((r) => {
      if (state && r.state !== state) return false;
      const hay = [r.name, r.id, r.model, r.method, r.stage, r.state, r.executor, r.gpus].join(" ").toLowerCase();
      return words.every((w) => hay.includes(w));
    }).sort((a, b) => {
      const x = a[sortKey], y = b[sortKey];
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * sortDir;
    });
  }

  function render() {
    const rows = visible();
    tbody.replaceChildren(...rows.map((r) => {
      const box = el("input", {type: "checkbox", "aria-label": `select ${r.id}`, checked: picked.has(r.id)});
      box.addEventListener("change", () => { box.checked ? picked.add(r.id) : picked.delete(r.id); tools(); });
      const bar = r.total ? el("span", {class: "progress"}, el("span")) : "";
      if (bar) bar.firstChild.style.width = `${Math.min(100, (100 * r.step) / r.total)}%`;
      const link = el("a", {href: `/runs/${encodeURIComponent(r.id)}`, title: r.id, text: r.name});
      return el("tr", {"data-run": r.id},
        el("td", {}, box),
        el("td", {}, link, el("div", {class: "muted", text: r.id})),
        el("td", {text: r.stage || ""}),
        el("td", {text: r.method || ""}),
        el("td", {text: r.model || "", title: r.model || ""}),
        el("td", {}, stateBadge(r.state)),
        el("td", {class: "num"}, bar, fmt.step(r)),
        el("td", {class: "num", text: fmt.num(r.loss)}),
        el("td", {text: fmt.time(r.started)}),
        el("td", {class: "num", text: fmt.duration(r.duration_s)}),
        el("td", {text: r.gpus || ""}));
    }));
    $("#empty").hidden = runs.length > 0;
    $("#count").textContent = `${rows.length} of ${runs.length} runs`;
    tools();
  }

  function tools() {
    $("#compare").disabled = picked.size < 1;
    $("#compare").textContent = picked.size ? `Compare selected (${picked.size})` : "Compare selected";
  }

  async function refresh() {
    try { runs = (await api("/api/runs")).runs; render(); }
    catch (e) { $("#live").textContent = `board unreachable: ${e.message}`; }
  }

  document.querySelectorAll("#runs th[data-key]").forEach((th) => th.addEventListener("click", () => {
    const key = th.dataset.key;
    sortDir = key === sortKey ? -sortDir : 1;
    sortKey = key;
    document.querySelectorAll("#runs th").forEach((h) => h.classList.remove("sorted", "asc", "desc"));
    th.classList.add("sorted", sortDir > 0 ? "asc" : "desc");
    render();
  }));
  $("#filter").addEventListener("input", render);
  $("#state-filter").addEventListener("change", render);
  $("#compare").addEventListener("click", () => { location.href = `/compare?runs=${[...picked].map(encodeURIComponent).join(",")}`; });
  refresh();
  setInterval(refresh, 3000);
}

/* --- one run -------------------------------------------------------------------------------- */

function runPage() {
  const id = document.body.dataset.run;
  const rows = [];
  const charts = {
    loss: new Chart($("#chart-loss"), "loss", [
      {label: "train loss", color: COLORS[0]}, {label: "eval loss", color: COLORS[1], points: true}], "loss"),
    lr: new Chart($("#chart-lr"), "learning rate", [{label: "learning rate", color: COLORS[2]}], "lr"),
    grad: new Chart($("#chart-grad"), "grad norm", [{label: "grad norm", color: COLORS[3]}], "norm"),
  };
  let logOffset = null, metricsAt = 0, source = null, ended = false, detail = null, current = null, heardAt = 0;

  function drawCharts() {
    const train = rows.filter((r) => "loss" in r);
    charts.loss.update(align([train, rows.filter((r) => "eval_loss" in r)], ["loss", "eval_loss"]));
    charts.lr.update(align([train], ["learning_rate"]));
    charts.grad.update(align([train], ["grad_norm"]));
  }

  function showSummary(s) {
    current = s; heardAt = Date.now();
    $("#run-name").textContent = s.name;
    $("#run-state").replaceWith(Object.assign(stateBadge(s.state), {id: "run-state"}));
    const items = [["stage", s.stage], ["method", s.method], ["model", s.model], ["step", fmt.step(s)],
      ["latest loss", fmt.num(s.loss)], ["started", fmt.time(s.started)], ["duration", fmt.duration(s.duration_s)],
      ["GPUs", s.gpus], ["executor", s.executor], ["host", s.host]];
    $("#summary").replaceChildren(...items.map(([k, v]) => el("div", {}, el("dt", {text: k}), el("dd", {text: v ?? "", title: v ?? ""}))));
    const msg = $("#run-message");
    msg.textContent = s.state === "running" ? "" : s.message || "";  // a resumed run's record keeps the last stop's
    msg.className = `message${s.state === "failed" ? " error" : ""}`;
    if (!READ_ONLY) {
      $("#stop").hidden = s.state !== "running";
      $("#resume").hidden = !["stopped", "failed"].includes(s.state);
    }
    document.title = `${s.name} ${s.state} · runner board`;
  }

  function showDetail(d) {
    detail = d;
    showSummary(d.summary);
    const spec = $("#spec");
    spec.replaceChildren(...(d.spec || "").split("\n").map((line) => {
      const isDefault = /#\s*default\s*$/.test(line);
      const isKey = /^\s*-?\s*[\w.-]+:/.test(line);
      return el("span", {class: isDefault ? "default" : isKey && !line.startsWith("#") ? "set" : null, text: line + "\n"});
    }));
    $("#command").textContent = d.command || "(not started)";
    kvTable($("#results"), d.results);
    $("#evaluation-block").hidden = !d.evaluation;
    if (d.evaluation) kvTable($("#evaluation"), d.evaluation);
    $("#tensorboard-block").hidden = !d.tensorboard;
    if (d.tensorboard) { $("#tensorboard-dir").textContent = d.tensorboard; $("#tensorboard-command").textContent = d.tensorboard_command; }
    $("#files").replaceChildren(...d.files.map((f) => el("li", {},
      el("a", {href: `/runs/${encodeURIComponent(id)}/files/${f.path.split("/").map(encodeURIComponent).join("/")}`, text: f.path}),
      el("span", {class: "size", text: fmt.size(f.size)}))));
    const chat = $("#chat-panel");
    if (chat) chat.hidden = !d.result;
  }

  function kvTable(table, obj) {
    const flat = [];
    const walk = (prefix, v) => {
      if (v && typeof v === "object" && !Array.isArray(v)) for (const [k, w] of Object.entries(v)) walk(prefix ? `${prefix}.${k}` : k, w);
      else flat.push([prefix, Array.isArray(v) ? v.join(", ") : fmt.num(v)]);
    };
    walk("", obj || {});
    table.replaceChildren(...(flat.length ? flat : [["", "none yet"]]).map(([k, v]) => el("tr", {}, el("td", {text: k}), el("td", {text: v}))));
  }

  function appendLog(text) {
    const log = $("#log");
    log.append(text);
    if (log.textContent.length > 4e6) log.textContent = log.textContent.slice(-3e6);  // keep the page light
    if ($("#follow").checked) log.scrollTop = log.scrollHeight;
  }

  function follow() {
    const params = new URLSearchParams({metrics: metricsAt});
    if (logOffset !== null) params.set("log", logOffset);
    source = new EventSource(`/api/runs/${encodeURIComponent(id)}/events?${params}`);
    source.addEventListener("hello", (e) => {
      const h = JSON.parse(e.data);
      if (logOffset === null && h.skipped) {
        const p = $("#log-skipped");
        p.hidden = false;
        p.replaceChildren(`The first ${fmt.size(h.skipped)} of the log are not shown: `,
          el("a", {href: `/runs/${encodeURIComponent(id)}/files/train.log`, text: "the whole log"}));
      }
      if (logOffset === null) logOffset = h.log;
      heard();
    });
    source.addEventListener("log", (e) => { const d = JSON.parse(e.data); logOffset = d.offset; appendLog(d.text); heard(); });
    source.addEventListener("metrics", (e) => {
      const d = JSON.parse(e.data);
      metricsAt = d.next; rows.push(...d.rows); drawCharts(); heard();
      if (current) {  // the summary moves with the metrics; the log's "step N/M" names the total
        const losses = rows.filter((r) => typeof r.loss === "number");
        const total = [...$("#log").textContent.matchAll(/step \d+\/(\d+)/g)].pop();
        showSummary({...current, step: Math.max(current.step || 0, ...rows.map((r) => r.step || 0)),
          total: total ? Number(total[1]) : current.total, loss: losses.length ? losses[losses.length - 1].loss : current.loss,
          duration_s: current.duration_s === null ? null : current.duration_s + (Date.now() - heardAt) / 1000});
      }
    });
    source.addEventListener("state", async (e) => {
      const s = JSON.parse(e.data);
      showSummary(s);
      if (detail && detail.summary.state !== s.state) showDetail(await api(`/api/runs/${encodeURIComponent(id)}`));
      heard();
    });
    source.addEventListener("end", async () => {
      ended = true; source.close(); heard();
      showDetail(await api(`/api/runs/${encodeURIComponent(id)}`));
    });
    source.onerror = () => {
      if (ended) return;
      source.close();  // reopened from where it stopped, not from the start
      setTimeout(() => { if (!ended) follow(); }, 2000);
    };
  }

  async function act(what) {
    const out = $("#action-message");
    out.className = "message";
    out.textContent = what === "stop" ? "Stopping: the run saves a checkpoint after this step…" : "Resuming…";
    try {
      const r = await api(`/api/runs/${encodeURIComponent(id)}/${what}`, {});
      out.textContent = `${what}: ${r.state}`;
      if (what === "resume") { ended = false; logOffset = null; $("#log").textContent = ""; rows.length = 0; metricsAt = 0; if (source) source.close(); follow(); }
    } catch (e) { out.className = "message error"; out.textContent = e.message; }
  }

  const chatLog = [];
  async function send(event) {
    event.preventDefault();
    const input = $("#chat-input");
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    chatLog.push({role: "user", content: text});
    $("#chat-log").append(el("div", {class: "msg user", text}));
    const waiting = el("div", {class: "msg assistant muted", text: "…"});
    $("#chat-log").append(waiting);
    $("#chat-send").disabled = true;
    try {
      const r = await api(`/api/runs/${encodeURIComponent(id)}/chat`, {messages: chatLog});
      chatLog.push({role: "assistant", content: r.answer});
      waiting.className = "msg assistant"; waiting.textContent = r.answer || "(an empty answer)";
    } catch (e) {
      chatLog.pop();
      waiting.className = "msg error"; waiting.textContent = e.message;
    } finally { $("#chat-send").disabled = false; }
  }

  $("#show-defaults").addEventListener("change", (e) => $("#spec").classList.toggle("hide-defaults", !e.target.checked));
  if (!READ_ONLY) {
    $("#stop").addEventListener("click", () => act("stop"));
    $("#resume").addEventListener("click", () => act("resume"));
    $("#chat-form").addEventListener("submit", send);
    $("#chat-reset").addEventListener("click", () => { chatLog.length = 0; $("#chat-log").replaceChildren(); });
    $("#chat-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) send(e); });
  }

  (async () => {
    try {
      showDetail(await api(`/api/runs/${encodeURIComponent(id)}`));
      const m = await api(`/api/runs/${encodeURIComponent(id)}/metrics`);
      rows.push(...m.rows); metricsAt = m.next; drawCharts();
    } catch (e) { $("#run-message").className = "message error"; $("#run-message").textContent = e.message; }
    follow();
  })();
}

/* --- several runs on one chart ------------------------------------------------------------ */

function comparePage() {
  const chosen = new Set((new URLSearchParams(location.search).get("runs") || "").split(",").filter(Boolean));
  const metrics = new Map();
  let runs = [], chart = null;

  function names() { return new Map(runs.map((r) => [r.id, r])); }

  async function draw() {
    const key = $("#metric").value;
    const ids = [...chosen];
    await Promise.all(ids.map(async (id) => {
      const run = names().get(id);
      if (!metrics.has(id) || (run && run.state === "running")) metrics.set(id, (await api(`/api/runs/${encodeURIComponent(id)}/metrics`)).rows);
    }));
    const byId = names();
    const node = $("#chart-compare");
    node.replaceChildren();
    chart = new Chart(node, `${$("#metric").selectedOptions[0].text} of ${ids.length} run${ids.length === 1 ? "" : "s"}`,
      ids.map((id, i) => ({label: byId.has(id) ? `${byId.get(id).name} ${id}` : id, color: COLORS[i % COLORS.length]})), key);
    chart.update(align(ids.map((id) => metrics.get(id) || []), ids.map(() => key)));
    history.replaceState(null, "", `/compare?runs=${ids.map(encodeURIComponent).join(",")}`);
  }

  function renderPicker() {
    const colorOf = new Map([...chosen].map((id, i) => [id, COLORS[i % COLORS.length]]));
    $("#pick").replaceChildren(...[...runs].reverse().map((r) => {
      const box = el("input", {type: "checkbox", value: r.id, checked: chosen.has(r.id)});
      box.addEventListener("change", () => { box.checked ? chosen.add(r.id) : chosen.delete(r.id); renderPicker(); draw(); });
      const swatch = el("span", {class: "swatch"});
      swatch.style.background = colorOf.get(r.id) || "transparent";
      return el("li", {}, el("label", {}, box, " ", swatch, `${r.name} `, el("span", {class: "muted", text: r.id}), " ", stateBadge(r.state)));
    }));
  }

  $("#metric").addEventListener("change", draw);
  (async () => {
    runs = (await api("/api/runs")).runs;
    renderPicker();
    await draw();
    setInterval(async () => {
      runs = (await api("/api/runs")).runs;
      if ([...chosen].some((id) => (names().get(id) || {}).state === "running")) await draw();
    }, 5000);
  })();
}

/* --- submit a job spec ----------------------------------------------------------------------- */

function jobsPage() {
  let current = null, lines = [];

  function showText(problems = []) {
    const byLine = new Map();
    for (const p of problems) if (p.line) byLine.set(p.line, [...(byLine.get(p.line) || []), p]);
    const out = [];
    lines.forEach((line, i) => {
      const n = i + 1;
      out.push(el("span", {class: `line${byLine.has(n) ? " bad" : ""}`, id: `L${n}`, "data-n": n, text: line + "\n"}));
      for (const p of byLine.get(n) || []) out.push(el("span", {class: "note", text: `${" ".repeat(Math.max(0, p.col - 1))}^ ${p.path ? p.path + ": " : ""}${p.message}\n`}));
    });
    $("#job-text").replaceChildren(...out);
  }

  function verdict(text, ok) {
    const v = $("#verdict");
    v.className = `verdict ${ok ? "ok" : "bad"}`;
    v.replaceChildren(...(Array.isArray(text) ? text : [text]));
  }

  function showProblems(result) {
    const list = $("#problems");
    list.replaceChildren(...result.problems.map((p) => {
      const li = el("li", {text: p.text});
      li.addEventListener("click", () => { const line = $(`#L${p.line}`); if (line) line.scrollIntoView({block: "center"}); });
      return li;
    }));
    showText(result.problems);
    if (!result.ok) verdict(`${result.problems.length} problem${result.problems.length === 1 ? "" : "s"}; nothing was started.`, false);
  }

  async function open(name) {
    current = name;
    document.querySelectorAll("#job-list a").forEach((a) => a.classList.toggle("current", a.dataset.job === name));
    $("#job-title").textContent = name;
    const job = await api(`/api/jobs/${name.split("/").map(encodeURIComponent).join("/")}`);
    lines = job.text.replace(/\n$/, "").split("\n");
    $("#problems").replaceChildren(); $("#verdict").replaceChildren();
    showText();
    $("#validate").disabled = $("#submit").disabled = false;
  }

  async function check(submit) {
    if (!current) return;
    $("#validate").disabled = $("#submit").disabled = true;
    verdict(submit ? "Validating, then starting…" : "Validating…", true);
    try {
      const r = await api(submit ? "/api/jobs/submit" : "/api/jobs/validate", {job: current, executor: $("#executor").value});
      showProblems(r);
      if (r.ok && submit) verdict(["Started run ", el("a", {href: `/runs/${encodeURIComponent(r.run)}`, id: "started-run", text: r.run})], true);
      else if (r.ok) verdict(`${current} is valid.`, true);
    } catch (e) { verdict(e.message, false); }
    finally { $("#validate").disabled = $("#submit").disabled = false; }
  }

  $("#validate").addEventListener("click", () => check(false));
  $("#submit").addEventListener("click", () => check(true));
  (async () => {
    const jobs = await api("/api/jobs");
    $("#jobs-root").textContent = jobs.root;
    $("#executor").replaceChildren(...jobs.executors.map((x) => el("option", {value: x, text: x, selected: x === jobs.executor})));
    $("#job-list").replaceChildren(...jobs.jobs.map((name) => {
      const a = el("a", {href: "#", "data-job": name, text: name});
      a.addEventListener("click", (e) => { e.preventDefault(); open(name); });
      return el("li", {}, a);
    }));
    if (!jobs.jobs.length) $("#job-list").append(el("li", {class: "muted", text: "no job specs here"}));
    const wanted = new URLSearchParams(location.search).get("job");
    if (wanted && jobs.jobs.includes(wanted)) open(wanted);
  })();
}

const PAGES = {runs: runsPage, run: runPage, compare: comparePage, jobs: jobsPage};
if (PAGES[document.body.dataset.page]) PAGES[document.body.dataset.page]();
