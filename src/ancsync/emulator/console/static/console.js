// The emulator console's page: renders the snapshots of /api/events and posts the actions.
// Plain JavaScript, no framework, no build step; every value shown goes in as text.
"use strict";

const token = new URLSearchParams(location.search).get("token");
let latest = null;
let selected = null;

function api(path) {
  return token ? `${path}?token=${encodeURIComponent(token)}` : path;
}

async function post(path, body, result) {
  result.textContent = "…";
  result.className = "result";
  try {
    const response = await fetch(api(path), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (answer.error) {
      result.textContent = answer.error;
      result.className = "result error";
    } else {
      result.textContent = "done" + (answer.version !== undefined ? ` (version ${answer.version})` : "");
    }
    return answer;
  } catch (error) {
    result.textContent = `the console did not answer: ${error}`;
    result.className = "result error";
    return { error: String(error) };
  }
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "—" : String(text);
  if (className) td.className = className;
  return td;
}

function ago(epoch, now) {
  if (!epoch) return null;
  const seconds = Math.max(0, now - epoch);
  return seconds < 60 ? `${seconds.toFixed(1)} s ago` : `${Math.round(seconds / 60)} min ago`;
}

function pretty(value) {
  return value === undefined || value === null ? "" : JSON.stringify(value, null, 2);
}

function renderThings(snapshot) {
  const body = document.querySelector("#things tbody");
  body.replaceChildren();
  for (const thing of snapshot.things) {
    const row = body.insertRow();
    row.dataset.thing = thing.name;
    cell(row, thing.name);
    const status = cell(row, thing.status);
    status.innerHTML = "";
    const badge = document.createElement("span");
    badge.className = `badge ${["online", "offline"].includes(thing.status) ? thing.status : "unknown"}`;
    badge.textContent = thing.status;
    status.append(badge);
    cell(row, thing.firmware_version);
    const cert = thing.certificate || {};
    cell(row, cert.cn ? `${cert.cn}${cert.serial ? ` · ${cert.serial} · until ${cert.expires}` : ""}` : null);
    cell(row, ago(thing.last_seen, snapshot.now));
    cell(row, thing.rate);
  }
  const select = document.getElementById("thing-select");
  const names = snapshot.things.map((thing) => thing.name);
  if (select.options.length !== names.length) {
    select.replaceChildren(...names.map((name) => new Option(name, name)));
  }
  if (!selected || !names.includes(selected)) selected = names[0];
  select.value = selected;
}

function renderShadow(thing) {
  const shadow = thing.shadow || {};
  const state = shadow.state || {};
  const metadata = shadow.metadata || {};
  document.getElementById("shadow-version").textContent =
    shadow.version !== undefined ? `version ${shadow.version}` : "(no shadow yet)";
  document.getElementById("shadow-reported").textContent = pretty(state.reported);
  document.getElementById("shadow-desired").textContent = pretty(state.desired);
  document.getElementById("shadow-delta").textContent = pretty(state.delta);
  document.getElementById("shadow-metadata").textContent = pretty(metadata);
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  return element;
}

// One line chart: time on x (from the oldest point kept, at most `window` seconds ago, to now),
// the metric on y (its own range).
function chart(title, points, now, window) {
  const width = 400, height = 140, left = 34, bottom = 16;
  const figure = document.createElement("div");
  figure.className = "chart";
  figure.dataset.points = String(points.length);
  const heading = document.createElement("h3");
  heading.textContent = `${title}: ${points.length ? points[points.length - 1][1].toFixed(1) : "no data"}`;
  const drawing = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" });
  figure.append(heading, drawing);
  if (!points.length) return figure;
  const values = points.map((point) => point[1]);
  let low = Math.min(...values), high = Math.max(...values);
  if (high - low < 1e-9) { low -= 1; high += 1; }
  const start = Math.max(now - window, points[0][0]);
  const span = Math.max(1, now - start);
  const x = (at) => left + ((at - start) / span) * (width - left - 4);
  const y = (value) => 4 + (1 - (value - low) / (high - low)) * (height - bottom - 8);
  const line = svg("polyline", {
    points: points.map(([at, value]) => `${x(at).toFixed(1)},${y(value).toFixed(1)}`).join(" "),
  });
  const top = svg("text", { x: 2, y: 12 });
  top.textContent = high.toFixed(1);
  const base = svg("text", { x: 2, y: height - bottom });
  base.textContent = low.toFixed(1);
  const axis = svg("text", { x: left, y: height - 3 });
  axis.textContent = span < 120 ? `-${Math.round(span)} s` : `-${Math.round(span / 60)} min`;
  const nowLabel = svg("text", { x: width - 24, y: height - 3 });
  nowLabel.textContent = "now";
  drawing.append(line, top, base, axis, nowLabel);
  return figure;
}

function renderCharts(snapshot, thing) {
  document.getElementById("chart-thing").textContent = thing.name;
  document.getElementById("chart-window").textContent = `${Math.round(snapshot.window / 60)} min`;
  const charts = Object.entries(snapshot.metrics).map(([metric, title]) => {
    const figure = chart(title, thing.series[metric] || [], snapshot.now, snapshot.window);
    figure.dataset.metric = metric;
    return figure;
  });
  document.getElementById("charts").replaceChildren(...charts);
}

function renderEmergencies(snapshot) {
  const body = document.querySelector("#emergencies tbody");
  body.replaceChildren();
  for (const event of snapshot.emergencies) {
    const row = body.insertRow();
    row.dataset.event = event.event_id;
    cell(row, event.timestamp);
    cell(row, event.device_id);
    cell(row, event.predicted_class);
    cell(row, event.confidence);
    cell(row, event.action);
    cell(row, event.event_id);
    const actions = row.insertCell();
    if (event.acknowledged) {
      actions.textContent = "acknowledged";
      actions.className = "acknowledged";
    } else {
      const button = document.createElement("button");
      button.textContent = "Acknowledge";
      button.className = "ack";
      const result = document.createElement("span");
      result.className = "result";
      button.addEventListener("click", () =>
        post(`/api/emergencies/${encodeURIComponent(event.event_id)}/ack`, {}, result));
      actions.append(button, result);
    }
  }
}

function renderMqtt(snapshot) {
  document.getElementById("subscriptions").textContent = snapshot.subscriptions.length
    ? `subscribed: ${snapshot.subscriptions.join(", ")}` : "";
  const body = document.querySelector("#messages tbody");
  body.replaceChildren();
  for (const message of [...snapshot.messages].reverse()) {
    const row = body.insertRow();
    cell(row, message.at);
    cell(row, message.topic);
    cell(row, message.payload);
  }
}

// Panels of other services (see ConsoleSection): each a table of its rows.
function renderSections(snapshot) {
  const panels = Object.entries(snapshot.sections).map(([key, section]) => {
    const panel = document.createElement("section");
    panel.id = `section-${key}`;
    const heading = document.createElement("h2");
    heading.textContent = section.title;
    if (!section.rows.length) {
      const empty = Object.assign(document.createElement("p"), { className: "empty", textContent: "none yet" });
      panel.append(heading, empty);
      return panel;
    }
    const table = document.createElement("table");
    const columns = [...new Set(section.rows.flatMap((row) => Object.keys(row)))];
    const head = table.createTHead().insertRow();
    for (const column of columns) head.append(Object.assign(document.createElement("th"), { textContent: column }));
    const body = table.createTBody();
    for (const row of section.rows) {
      const line = body.insertRow();
      for (const column of columns) {
        const value = row[column];
        const text = value !== null && typeof value === "object" ? JSON.stringify(value) : value;
        // A status column is a badge, coloured by its value (QUEUED, IN_PROGRESS, SUCCEEDED...).
        const td = cell(line, text, column === "status" ? `badge status-${value}` : undefined);
        td.dataset.column = column;
      }
    }
    panel.append(heading, table);
    return panel;
  });
  document.getElementById("sections").replaceChildren(...panels);
}

function render(snapshot) {
  latest = snapshot;
  renderThings(snapshot);
  const thing = snapshot.things.find((candidate) => candidate.name === selected);
  if (thing) {
    renderShadow(thing);
    renderCharts(snapshot, thing);
  }
  renderEmergencies(snapshot);
  renderMqtt(snapshot);
  renderSections(snapshot);
}

function connect() {
  const badge = document.getElementById("connection");
  const events = new EventSource(api("/api/events"));
  events.addEventListener("snapshot", (event) => {
    badge.textContent = "live";
    badge.className = "badge online";
    render(JSON.parse(event.data));
  });
  events.onerror = () => {
    badge.textContent = "disconnected (retrying)";
    badge.className = "badge offline";
  };
}

document.getElementById("thing-select").addEventListener("change", (event) => {
  selected = event.target.value;
  if (latest) render(latest);
});

document.getElementById("desired-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const result = document.getElementById("desired-result");
  let desired;
  try {
    desired = JSON.parse(document.getElementById("desired-input").value);
  } catch (error) {
    result.textContent = `not JSON: ${error.message}`;
    result.className = "result error";
    return;
  }
  post(`/api/things/${encodeURIComponent(selected)}/desired`, { desired }, result);
});

document.getElementById("subscribe-form").addEventListener("submit", (event) => {
  event.preventDefault();
  post("/api/subscribe", { filter: document.getElementById("subscribe-filter").value },
    document.getElementById("subscribe-result"));
});

document.getElementById("publish-form").addEventListener("submit", (event) => {
  event.preventDefault();
  post("/api/publish", {
    topic: document.getElementById("publish-topic").value,
    payload: document.getElementById("publish-payload").value,
    retain: document.getElementById("publish-retain").checked,
    qos: 1,
  }, document.getElementById("publish-result"));
});

connect();
