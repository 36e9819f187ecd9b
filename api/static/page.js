// The distnmf page: jobs with live progress (server-sent events read through fetch, so a bearer token
// can travel with them), a job's components, and most / least similar rows for a clicked row.
"use strict";

const API = "/api/v1";
const NEIGHBOURS = 12;
const TOP_ROWS = 6;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const jobs = new Map();        // id -> {record, row (tr), errors: [], streaming: bool}
let selected = null;           // {job, matrix}
let token = sessionStorage.getItem("distnmf-token");

class Unauthorized extends Error {}

function headers(extra = {}) {
  return token ? {...extra, Authorization: `Bearer ${token}`} : extra;
}

async function api(path, options = {}) {
  const response = await fetch(API + path, {...options, headers: headers(options.headers)});
  if (response.status === 401) { askToken("the token was refused"); throw new Unauthorized(); }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return response;
}

const json = async (path, options) => (await api(path, options)).json();

function askToken(message) {
  document.getElementById("token-form").hidden = false;
  document.getElementById("token-error").textContent = message || "";
}

async function setImage(img, path) {
  if (!token) { img.src = API + path; return; }
  const blob = await (await api(path)).blob();
  img.src = URL.createObjectURL(blob);
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// ------------------------------------------------------------------ jobs and their live progress

async function listJobs() {
  const records = [];
  let cursor = null;
  do {
    const page = await json(`/jobs?limit=200${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    const items = Array.isArray(page) ? page : page.items;
    records.push(...items);
    cursor = Array.isArray(page) ? null : page.next_cursor;
  } while (cursor);
  return records;
}

async function refreshJobs() {
  const records = await listJobs();
  document.getElementById("jobs-empty").hidden = records.length > 0;
  const body = document.querySelector("#jobs tbody");
  for (const record of records) {
    let entry = jobs.get(record.id);
    if (!entry) {
      entry = {record, errors: [...record.error_history], streaming: false, row: jobRow(record)};
      jobs.set(record.id, entry);
      body.append(entry.row);
    }
    if (!entry.streaming && !TERMINAL.has(entry.record.status)) follow(entry);
    render(entry);
  }
}

function jobRow(record) {
  const row = el("tr", {dataset: {job: record.id}, onclick: () => selectJob(record.id)});
  row.append(el("td", {}, record.id), el("td", {}, record.matrix_id), el("td", {class: "status"}),
             el("td", {}, el("progress", {max: "1", value: "0"})), el("td", {class: "error"}),
             el("td", {}, el("canvas", {class: "loss", width: "160", height: "36"})));
  return row;
}

function render(entry) {
  const {record, row, errors} = entry;
  row.querySelector(".status").textContent = record.status;
  const bar = row.querySelector("progress");
  bar.max = record.status === "succeeded" ? Math.max(1, record.iteration) : record.max_iter;
  bar.value = record.iteration;
  row.querySelector(".error").textContent = record.error == null ? "" : record.error.toFixed(5);
  drawLoss(row.querySelector("canvas"), errors);
}

function drawLoss(canvas, errors) {
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const values = errors.filter((e) => e > 0).map(Math.log);
  if (values.length < 2) return;
  const low = Math.min(...values), high = Math.max(...values), span = high - low || 1;
  context.beginPath();
  values.forEach((v, i) => {
    const x = (i / (values.length - 1)) * (canvas.width - 2) + 1;
    const y = canvas.height - 2 - ((v - low) / span) * (canvas.height - 4);
    if (i === 0) context.moveTo(x, y); else context.lineTo(x, y);
  });
  context.strokeStyle = "#3a7bd5";
  context.stroke();
}

// Server-sent events over fetch: resumed with Last-Event-ID when the connection drops.
async function follow(entry) {
  entry.streaming = true;
  let lastId = null;
  for (let attempt = 0; attempt < 20 && !TERMINAL.has(entry.record.status); attempt++) {
    try {
      const extra = lastId === null ? {} : {"Last-Event-ID": String(lastId)};
      const response = await api(`/jobs/${entry.record.id}/events`, {headers: extra});
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
          if (!data) continue;
          const event = JSON.parse(data);
          lastId = event.id;
          onEvent(entry, event);
        }
      }
    } catch (error) {
      if (error instanceof Unauthorized) break;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  entry.streaming = false;
}

function onEvent(entry, event) {
  const record = entry.record;
  if (event.kind === "progress") {
    entry.errors.length = event.iteration - 1;
    entry.errors.push(event.error);
    Object.assign(record, {iteration: event.iteration, error: event.error, status: "running"});
  } else {
    Object.assign(record, {status: event.status, iteration: event.iteration, error: event.error});
  }
  render(entry);
  if (event.kind === "state" && event.status === "succeeded" && selected && selected.job.id === record.id) {
    selectJob(record.id);
  }
}

// ------------------------------------------------------------------ a job: components and search

async function selectJob(id) {
  const entry = jobs.get(id);
  document.querySelectorAll("#jobs tbody tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.job === id));
  const section = document.getElementById("job");
  section.hidden = false;
  document.getElementById("job-id").textContent = id;
  document.getElementById("results").hidden = true;
  const components = document.getElementById("components");
  components.replaceChildren();
  const record = entry.record;
  const matrix = await json(`/matrices/${record.matrix_id}`).catch(() => null);
  selected = {job: record, matrix};
  const shape = matrix ? `${matrix.name}, ${matrix.shape[0]} x ${matrix.shape[1]}` : record.matrix_id;
  document.getElementById("job-summary").textContent =
    `${record.status}; matrix ${shape}; k = ${record.params.n_components}`;
  if (record.status !== "succeeded") return;
  for (let c = 0; c < record.params.n_components; c++) {
    const card = el("div", {class: "component", dataset: {component: String(c)}}, el("h4", {}, `component ${c}`));
    components.append(card);
    const top = await json(`/jobs/${id}/components/${c}?top=${TOP_ROWS}`);
    if (matrix && matrix.image_shape) {
      const img = el("img", {class: "picture", alt: `component ${c}`});
      card.append(img);
      setImage(img, `/jobs/${id}/components/${c}.png`);
    } else {
      card.append(el("ol", {}, ...top.columns.map((h) => el("li", {}, h.label ?? String(h.index)))));
    }
    card.append(el("div", {class: "row-items"}, ...top.rows.map((hit) => rowItem(hit, "row-item"))));
  }
}

function rowItem(hit, cls, score) {
  const item = el("div", {class: cls, title: hit.label ?? `row ${hit.index}`, dataset: {index: String(hit.index)},
                          onclick: () => search(String(hit.index))});
  if (selected.matrix && selected.matrix.image_shape) {
    const img = el("img", {alt: hit.label ?? `row ${hit.index}`});
    item.append(img);
    setImage(img, `/jobs/${selected.job.id}/rows/${hit.index}.png`);
  } else {
    item.append(hit.label ?? `row ${hit.index}`);
  }
  if (score !== undefined) item.append(el("div", {class: "score"}, score.toFixed(3)));
  return item;
}

async function search(row) {
  const error = document.getElementById("search-error");
  error.textContent = "";
  const id = selected.job.id;
  try {
    const query = `row=${encodeURIComponent(row)}&k=${NEIGHBOURS}`;
    const [most, least] = await Promise.all([json(`/jobs/${id}/similar?${query}`),
                                             json(`/jobs/${id}/similar?${query}&least=true`)]);
    document.getElementById("search-row").value = most.label ?? String(most.index);
    const head = rowItem({index: most.index, label: most.label}, "query-item");
    document.getElementById("query").replaceChildren(el("strong", {}, "Rows like"), head);
    document.getElementById("most").replaceChildren(...most.hits.map((h) => rowItem(h, "hit", h.score)));
    document.getElementById("least").replaceChildren(...least.hits.map((h) => rowItem(h, "hit", h.score)));
    document.getElementById("results").hidden = false;
  } catch (e) {
    if (!(e instanceof Unauthorized)) error.textContent = e.message;
  }
}

// ------------------------------------------------------------------ start

async function start() {
  const health = await (await fetch(`${API}/health`)).json();
  if (health.auth && !token) { askToken(); return; }
  try {
    await refreshJobs();
    setInterval(() => refreshJobs().catch(() => {}), 5000);
  } catch (e) {
    if (!(e instanceof Unauthorized)) throw e;
  }
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("distnmf-token", token);
  document.getElementById("token-form").hidden = true;
  start();
});
document.getElementById("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  search(document.getElementById("search-row").value.trim());
});
start();
