// The dashboard at GET /: polls GET /api/stats, tails one channel over a WebSocket with
// client.js, and publishes with POST /api/publish. No framework: a few functions that
// write into the elements of index.html (always as text, never as HTML: channel names
// and message data come from clients).

import { Clarion } from "./client.js";

/** How often to poll /api/stats: `?interval=SECONDS` (at least 0.2), 2 by default. */
const POLL_INTERVAL_MS = Math.max(
  200,
  1000 * (Number(new URLSearchParams(location.search).get("interval")) || 2),
);
/** The tail keeps this many entries, newest first. */
const TAIL_ENTRIES = 200;
/** Longest data shown for one message, in characters. */
const TAIL_DATA_CHARS = 2000;
/** Where the API key is kept: for this tab's session only. */
const KEY_STORAGE = "clarion.apiKey";
/** The WebSocket endpoint's path, as the last /api/stats gave it (with the mount's path). */
let websocketPath = "/ws";

function websocketUrl() {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${websocketPath}`;
}

const $ = (id) => document.getElementById(id);

// API key ----------------------------------------------------------------------------------

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

/** Headers for the HTTP API: the key, when one was entered. */
function apiHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** Show the key field, saying why (`message`), and stop until a key comes. */
function askForKey(message) {
  $("key-message").textContent = message;
  $("key-panel").hidden = false;
  $("key").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  $("key").value = "";
  poll();
});

// Statistics -------------------------------------------------------------------------------

/** The previous poll, for rates: `{time, published, delivered, channels: Map}`. */
let previous = null;
let pollTimer = null;

/** Fetch /api/stats once, show it, and schedule the next poll. */
async function poll() {
  clearTimeout(pollTimer);
  try {
    const response = await fetch("api/stats", { headers: apiHeaders(), cache: "no-store" });
    const body = await response.json();
    if (response.status === 401) {
      const hadKey = apiKey() !== null;
      sessionStorage.removeItem(KEY_STORAGE);
      askForKey(
        hadKey
          ? `That key was refused (${body.message}). Enter another one.`
          : "This server has API keys: enter one to see its statistics.",
      );
      showStatus("API key needed", "warn");
      return; // the key form polls again
    }
    if (!response.ok) throw new Error(`${response.status}: ${body.message ?? "error"}`);
    $("key-panel").hidden = true;
    websocketPath = body.websocket_path ?? websocketPath;
    show(body);
  } catch (error) {
    showStatus("unreachable", "bad");
    $("updated").textContent = `last poll failed: ${error.message}`;
  }
  pollTimer = setTimeout(poll, POLL_INTERVAL_MS);
}

function show(stats) {
  const now = performance.now();
  const seconds = previous === null ? null : (now - previous.time) / 1000;
  const rate = (value, before) =>
    seconds === null || before === undefined || value < before ? null : (value - before) / seconds;

  showStatus(stats.ready ? "ready" : `not ready: ${stats.reason}`, stats.ready ? "good" : "bad");
  $("broker").textContent = stats.broker;
  $("uptime").textContent = formatDuration(stats.uptime_seconds);
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  $("connections").textContent = formatCount(stats.connections);
  $("subscriptions").textContent = formatCount(stats.subscriptions);
  $("published").textContent = formatCount(stats.published);
  $("delivered").textContent = formatCount(stats.delivered);
  $("published-rate").textContent = formatRate(rate(stats.published, previous?.published));
  $("delivered-rate").textContent = formatRate(rate(stats.delivered, previous?.delivered));

  const rows = stats.channels.map((channel) => {
    const messagesPerSecond = rate(channel.messages, previous?.channels.get(channel.channel));
    return channelRow(channel, messagesPerSecond);
  });
  if (rows.length === 0) {
    const empty = element("td", { className: "empty", textContent: "no channel yet" });
    empty.colSpan = 4;
    rows.push(element("tr", {}, [empty]));
  }
  $("channels").replaceChildren(...rows);

  previous = {
    time: now,
    published: stats.published,
    delivered: stats.delivered,
    channels: new Map(stats.channels.map((channel) => [channel.channel, channel.messages])),
  };
}

function channelRow(channel, messagesPerSecond) {
  const name = element("button", {
    className: "link",
    type: "button",
    title: "Tail this channel",
    textContent: channel.channel,
  });
  name.addEventListener("click", () => {
    $("tail-channel").value = channel.channel;
    tail(channel.channel);
  });
  const row = element("tr", {}, [
    element("td", { className: "channel" }, [name]),
    element("td", { className: "number subscribers", textContent: formatCount(channel.subscribers) }),
    element("td", { className: "number messages", textContent: formatCount(channel.messages) }),
    element("td", { className: "number rate", textContent: formatRate(messagesPerSecond, "–") }),
  ]);
  row.dataset.channel = channel.channel;
  return row;
}

function showStatus(text, tone) {
  const status = $("status");
  status.textContent = text;
  status.className = `badge ${tone}`;
}

// Live tail --------------------------------------------------------------------------------

/** The dashboard's WebSocket client, made on the first tail. */
let client = null;
let subscription = null;

function connection() {
  if (client === null) {
    client = new Clarion(websocketUrl(), { maxReconnectDelayMs: 5000 });
    client.on("state", ({ state, error }) => {
      if (subscription === null || !subscription.active) return;
      if (state === "connected") showTailState(`connected, subscribing to ${subscription.channel}…`);
      else showTailState(`${state}${error ? `: ${error.message}` : ""}`, state !== "connecting");
    });
  }
  return client;
}

/** Show `channel`'s messages from now on, instead of the previous channel's. */
function tail(channel) {
  subscription?.unsubscribe();
  $("tail-list").replaceChildren();
  showTailState(`subscribing to ${channel}…`);
  const subscribed = ({ offset }) => showTailState(`subscribed to ${channel} at offset ${offset}`);
  try {
    subscription = connection().subscribe(channel, (data, message) => addEntry(message), {
      onResubscribed: (info) => {
        subscribed(info);
        addNotice(
          info.recovered
            ? "reconnected: the messages missed meanwhile were recovered"
            : "reconnected: the messages missed meanwhile could not be recovered",
        );
      },
      onGap: ({ first, last }) => addNotice(`gap: messages ${first} to ${last} were dropped`),
      onRestart: ({ epoch }) => addNotice(`the channel's stream restarted (epoch ${epoch})`),
      onUnsubscribed: (error) =>
        showTailState(`not subscribed to ${channel}: ${error.message} (${error.code})`, true),
    });
  } catch (error) {
    showTailState(error.message, true);
    return;
  }
  subscription.ready.then(subscribed, () => {}); // a refusal: onUnsubscribed said it
}

function showTailState(text, isError = false) {
  const state = $("tail-state");
  state.textContent = text;
  state.classList.toggle("error", isError);
}

$("tail-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const channel = $("tail-channel").value.trim();
  if (channel) tail(channel);
});

function addEntry(message) {
  let data = JSON.stringify(message.data);
  if (data.length > TAIL_DATA_CHARS) data = `${data.slice(0, TAIL_DATA_CHARS)}…`;
  const entry = element("li", {}, [
    element("span", { className: "when", textContent: timestamp() }),
    element("span", { className: "offset", textContent: `#${message.offset}` }),
    element("span", { className: "data", textContent: data }),
  ]);
  entry.dataset.offset = String(message.offset);
  prepend(entry);
}

function addNotice(text) {
  prepend(
    element("li", { className: "notice" }, [
      element("span", { className: "when", textContent: timestamp() }),
      element("span", { textContent: text }),
    ]),
  );
}

function prepend(entry) {
  const list = $("tail-list");
  list.prepend(entry);
  while (list.children.length > TAIL_ENTRIES) list.lastElementChild.remove();
}

// Publish ----------------------------------------------------------------------------------

$("publish-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = $("publish-result");
  result.classList.remove("error");
  const channel = $("tail-channel").value.trim();
  if (!channel) {
    result.classList.add("error");
    result.textContent = "enter a channel above first";
    return;
  }
  const text = $("publish-data").value;
  let data;
  let note = "";
  try {
    data = JSON.parse(text);
  } catch {
    data = text;
    note = " (not JSON: sent as a string)";
  }
  try {
    const response = await fetch("api/publish", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...apiHeaders() },
      body: JSON.stringify({ channel, data }),
    });
    const body = await response.json();
    if (!response.ok) {
      if (response.status === 401) askForKey(`Publishing needs an API key (${body.message}).`);
      throw new Error(`${body.message} (${body.code})`);
    }
    result.textContent = `published at offset ${body.offset}${note}`;
  } catch (error) {
    result.classList.add("error");
    result.textContent = `not published: ${error.message}`;
  }
});

// Formatting -------------------------------------------------------------------------------

function element(tag, properties = {}, children = []) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children);
  return node;
}

function formatCount(value) {
  return Number(value).toLocaleString("en-US");
}

function formatRate(perSecond, unknown = "") {
  if (perSecond === null) return unknown;
  return `${perSecond.toFixed(perSecond < 10 ? 1 : 0)}/s`;
}

function formatDuration(seconds) {
  const whole = Math.floor(seconds);
  const [d, h, m, s] = [whole / 86400, (whole % 86400) / 3600, (whole % 3600) / 60, whole % 60].map(
    Math.floor,
  );
  const pad = (value) => String(value).padStart(2, "0");
  if (d > 0) return `${d}d ${pad(h)}h ${pad(m)}m`;
  if (h > 0) return `${h}h ${pad(m)}m ${pad(s)}s`;
  return m > 0 ? `${m}m ${pad(s)}s` : `${s}s`;
}

function timestamp() {
  const now = new Date();
  return `${now.toLocaleTimeString("en-GB")}.${String(now.getMilliseconds()).padStart(3, "0")}`;
}

poll();
