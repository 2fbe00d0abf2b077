// The chatmesh web page: development sign-in, then chat over an edge's
// WebSocket (/v1/ws) with the protocol in docs/protocol.md.
//
// The page keeps one cursor per conversation. After every (re)connect it
// sends a sync frame with those cursors, so nothing sent meanwhile is missed,
// and it keys messages by sequence number, so nothing is shown twice.
//
// Failover: the page reads the regions, nearest first, from GET /v1/regions.
// When its connection fails it moves to the next region, with exponential
// backoff and full jitter between attempts, and resends the messages not yet
// seen committed, in order and with their ids, so each is stored once. It
// pings every 2 s and leaves an edge whose pong is 3 s late. While
// away from the nearest region it probes that region's health URL and moves
// back after two healthy answers in a row.
"use strict";

const STORAGE_KEY = "chatmesh.sign-in";
const BACKOFF_MIN_MS = 200;
const BACKOFF_MAX_MS = 5000;
const CONNECT_TIMEOUT_MS = 5000;
const PING_INTERVAL_MS = 2000;
const PING_TIMEOUT_MS = 3000;
const PROBE_INTERVAL_MS = 2000;
const PROBE_INTERVAL_MAX_MS = 60000;
const PROBE_TIMEOUT_MS = 1000;
const HEALTHY_PROBES = 2;
// After this many sends in a row rejected as `unavailable`, leave the region.
const UNAVAILABLE_LIMIT = 3;
const CLOSE_INVALID_TOKEN = 4001;
const CLOSE_WRONG_EDGE = 4009;
// "Service restart": the edge serves again at once, so stay in the region.
const CLOSE_SERVICE_RESTART = 1012;
// Sent by the page when it gives up on a connection.
const CLOSE_GOING_AWAY = 4000;

const state = {
  user: null,
  token: null,
  socket: null,
  signedIn: false,
  // Regions nearest first, each {name, edges: [{name, url, health_url}]}.
  regions: [],
  // Region name -> the edge URL that last served this user there.
  edgeInRegion: {},
  // The region of the open session, once its hello arrived.
  region: null,
  // Connection attempts not yet tried, each {region, url}.
  plan: [],
  attempt: 0,
  connectTimer: null,
  pingTimer: null,
  pongTimer: null,
  probeTimer: null,
  healthyProbes: 0,
  // Moves back to the nearest region that ended somewhere else, in a row.
  failedFailbacks: 0,
  failingBack: false,
  unavailableSends: 0,
  // While Date.now() is before holdUntil, new sends wait (rate limited).
  holdUntil: 0,
  holdTimer: null,
  // Why each connection was lost: {from, to, reason}, newest last.
  moves: [],
  syncing: false,
  // conversation id -> highest seq such that the page has 1..seq (or
  // everything the server let it read up to seq)
  cursors: {},
  // conversation id -> Map(seq -> message view)
  conversations: new Map(),
  // client message id -> {to, content}, until the commit arrives
  pendingSends: new Map(),
  selected: null,
};

const $ = (id) => document.getElementById(id);

// ---- sign-in ---------------------------------------------------------------

async function signIn(user) {
  $("sign-in-error").textContent = "";
  let reply;
  try {
    reply = await fetch("/v1/dev/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user }),
    });
  } catch (error) {
    $("sign-in-error").textContent = `The edge did not answer: ${error}`;
    return;
  }
  const body = await reply.json().catch(() => ({}));
  if (!reply.ok) {
    $("sign-in-error").textContent = body.message || `Sign-in failed (${reply.status})`;
    return;
  }
  sessionStorage.setItem(STORAGE_KEY, JSON.stringify({ user: body.user, token: body.token }));
  start(body.user, body.token);
}

async function start(user, token) {
  state.user = user;
  state.token = token;
  state.signedIn = true;
  $("me").textContent = user;
  $("sign-in-view").hidden = true;
  $("chat-view").hidden = false;
  $("sign-out").hidden = false;
  render();
  setStatus("connecting", "connecting");
  state.regions = await loadRegions();
  if (state.signedIn) {
    planRound(null, null);
    tryNext();
  }
}

function signOut(reason) {
  state.signedIn = false;
  stopTimers();
  if (state.socket) {
    state.socket.close(1000, "signed out");
    state.socket = null;
  }
  sessionStorage.removeItem(STORAGE_KEY);
  state.region = null;
  state.plan = [];
  state.cursors = {};
  state.conversations = new Map();
  state.pendingSends = new Map();
  state.selected = null;
  $("me").textContent = "";
  $("sign-out").hidden = true;
  $("chat-view").hidden = true;
  $("sign-in-view").hidden = false;
  $("sign-in-error").textContent = reason || "";
  setStatus("signed-out", "signed out");
  delete $("status").dataset.region;
}

// ---- regions ---------------------------------------------------------------

function defaultSocketUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/v1/ws`;
}

// The regions, nearest to the edge that served this page first. Without the
// list the page still works, with this page's edge as its only region.
async function loadRegions() {
  try {
    const reply = await fetch("/v1/regions", { cache: "no-store" });
    if (reply.ok) {
      const body = await reply.json();
      if (Array.isArray(body.regions) && body.regions.length > 0) {
        return body.regions;
      }
    }
    console.warn(`GET /v1/regions returned ${reply.status}; no failover`);
  } catch (error) {
    console.warn(`GET /v1/regions failed (${error}); no failover`);
  }
  const url = defaultSocketUrl();
  const health = `${location.origin}/healthz`;
  return [{ name: null, edges: [{ name: null, url, health_url: health }] }];
}

function nearestRegion() {
  return state.regions.length > 0 ? state.regions[0].name : null;
}

// Plan one round of attempts: `first` region first, the `failed` one last,
// the rest nearest first; in each region the edge that served last first.
function planRound(first, failed) {
  const ordered = [
    ...state.regions.filter((r) => r.name === first),
    ...state.regions.filter((r) => r.name !== first && r.name !== failed),
    ...state.regions.filter((r) => r.name === failed && r.name !== first),
  ];
  const plan = [];
  for (const region of ordered) {
    const known = state.edgeInRegion[region.name];
    const urls = new Set([...(known ? [known] : []), ...region.edges.map((e) => e.url)]);
    for (const url of urls) {
      plan.push({ region: region.name, url });
    }
  }
  state.plan = plan;
}

// ---- connection ------------------------------------------------------------

// Full jitter: a uniform delay up to a cap that doubles with each attempt,
// so many pages cut off at once do not all return at once.
function backoffMs(attempt) {
  if (attempt === 0) {
    return 0;
  }
  const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (attempt - 1));
  return Math.round(Math.random() * cap);
}

function tryNext() {
  if (!state.signedIn) {
    return;
  }
  if (state.plan.length === 0) {
    planRound(null, null);
  }
  const candidate = state.plan.shift();
  const delayMs = backoffMs(state.attempt);
  state.attempt += 1;
  const where = candidate.region || "this edge";
  setStatus("reconnecting", `connecting to ${where} in ${(delayMs / 1000).toFixed(1)} s`);
  clearTimeout(state.connectTimer);
  state.connectTimer = setTimeout(() => open(candidate), delayMs);
}

function open(candidate) {
  if (!state.signedIn) {
    return;
  }
  setStatus("connecting", `connecting to ${candidate.region || "this edge"}`);
  const socket = new WebSocket(candidate.url);
  socket.candidate = candidate;
  socket.helloed = false;
  state.socket = socket;
  socket.onopen = () => socket.send(JSON.stringify({ type: "auth", token: state.token }));
  socket.onmessage = (message) => {
    if (state.socket === socket) {
      handleEvent(socket, JSON.parse(message.data));
    }
  };
  socket.onclose = (close) => onClose(socket, close);
  state.connectTimer = setTimeout(() => {
    if (state.socket === socket && !socket.helloed) {
      abandon(socket, "connect timeout");
      tryNext();
    }
  }, CONNECT_TIMEOUT_MS);
}

// Stop using `socket` at once; its close event, when it comes, is ignored.
function abandon(socket, reason) {
  if (state.socket === socket) {
    state.socket = null;
  }
  socket.onclose = null;
  socket.onmessage = null;
  try {
    socket.close(CLOSE_GOING_AWAY, reason);
  } catch (error) {
    console.warn(`closing the WebSocket failed: ${error}`);
  }
}

function stopTimers() {
  clearTimeout(state.connectTimer);
  clearInterval(state.pingTimer);
  clearTimeout(state.pongTimer);
  clearTimeout(state.probeTimer);
  state.pongTimer = null;
}

function onOpened(socket, hello) {
  socket.helloed = true;
  clearTimeout(state.connectTimer);
  const from = state.region;
  const region = socket.candidate.region;
  state.region = region;
  state.attempt = 0;
  state.unavailableSends = 0;
  state.edgeInRegion[region] = socket.url;
  const nearest = nearestRegion();
  if (region === nearest) {
    state.failedFailbacks = 0;
  } else if (state.failingBack) {
    state.failedFailbacks += 1;
  }
  state.failingBack = false;
  const away = region !== nearest ? `, away from ${nearest}` : "";
  setStatus("online", `online at ${hello.edge} (${hello.region}${away})`);
  $("status").dataset.region = region || "";
  startPings(socket);
  if (region !== nearest) {
    scheduleProbe();
  }
  const last = state.moves[state.moves.length - 1];
  if (last && last.to === null) {
    last.to = region;
  } else if (!last) {
    state.moves.push({ from, to: region, reason: "start" });
  }
}

// The session on `socket` is over: connect again, in the same region after a
// service restart, elsewhere otherwise.
function lose(socket, reason, code) {
  const region = socket.candidate.region;
  const wasOnline = socket.helloed;
  stopTimers();
  if (state.socket === socket) {
    state.socket = null;
  }
  state.syncing = false;
  if (!state.signedIn) {
    return;
  }
  if (!wasOnline) {
    // The attempt failed before the hello: try the next candidate.
    tryNext();
    return;
  }
  state.moves.push({ from: region, to: null, reason });
  delete $("status").dataset.region;
  console.info(`connection to ${region} lost: ${reason}`);
  if (code === CLOSE_SERVICE_RESTART) {
    planRound(region, null);
  } else {
    planRound(null, region);
  }
  tryNext();
}

function onClose(socket, close) {
  if (state.socket !== socket) {
    return;
  }
  if (close.code === CLOSE_INVALID_TOKEN) {
    stopTimers();
    state.socket = null;
    signOut("The edge rejected the token; sign in again.");
    return;
  }
  if (close.code === CLOSE_WRONG_EDGE && close.reason) {
    // The close reason is the WebSocket URL of the edge that serves this
    // user in the same region.
    stopTimers();
    state.socket = null;
    const region = socket.candidate.region;
    state.edgeInRegion[region] = close.reason;
    open({ region, url: close.reason });
    return;
  }
  lose(socket, `closed with code ${close.code}`, close.code);
}

// ---- heartbeats and failback -------------------------------------------------

function startPings(socket) {
  clearInterval(state.pingTimer);
  state.pingTimer = setInterval(() => {
    if (state.socket !== socket || state.pongTimer !== null) {
      return;
    }
    send({ type: "ping" });
    state.pongTimer = setTimeout(() => {
      if (state.socket === socket) {
        abandon(socket, "no pong");
        lose(socket, "no pong", CLOSE_GOING_AWAY);
      }
    }, PING_TIMEOUT_MS);
  }, PING_INTERVAL_MS);
}

function onPong() {
  clearTimeout(state.pongTimer);
  state.pongTimer = null;
}

// Each move back that ended in another region doubles the wait, so a region
// that passes its health check but cannot serve is not retried too often.
function scheduleProbe() {
  clearTimeout(state.probeTimer);
  state.healthyProbes = 0;
  const intervalMs = Math.min(
    PROBE_INTERVAL_MS * 2 ** state.failedFailbacks,
    PROBE_INTERVAL_MAX_MS,
  );
  const probe = async () => {
    const socket = state.socket;
    if (!socket || state.region === nearestRegion()) {
      return;
    }
    state.healthyProbes = (await nearestHealthy()) ? state.healthyProbes + 1 : 0;
    if (state.socket !== socket) {
      return;
    }
    if (state.healthyProbes >= HEALTHY_PROBES) {
      failBack(socket);
      return;
    }
    state.probeTimer = setTimeout(probe, intervalMs);
  };
  state.probeTimer = setTimeout(probe, intervalMs);
}

async function nearestHealthy() {
  const nearest = state.regions[0];
  const known = state.edgeInRegion[nearest.name];
  const url = known ? healthUrlOf(known) : nearest.edges[0].health_url;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), PROBE_TIMEOUT_MS);
  try {
    const reply = await fetch(url, { cache: "no-store", signal: abort.signal });
    return reply.ok;
  } catch (error) {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

function healthUrlOf(socketUrl) {
  const url = new URL(socketUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  url.pathname = "/healthz";
  return url.toString();
}

function failBack(socket) {
  const from = state.region;
  console.info(`moving back from ${from} to ${nearestRegion()}`);
  abandon(socket, "failback");
  stopTimers();
  state.moves.push({ from, to: null, reason: "failback" });
  delete $("status").dataset.region;
  state.attempt = 0;
  planRound(nearestRegion(), null);
  state.failingBack = true;
  open(state.plan.shift());
}

function send(frame) {
  if (state.socket && state.socket.helloed && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(frame));
    return true;
  }
  return false;
}

function requestSync() {
  if (send({ type: "sync", cursors: state.cursors })) {
    state.syncing = true;
  }
}

// ---- events ----------------------------------------------------------------

function handleEvent(socket, event) {
  switch (event.type) {
    case "hello":
      onOpened(socket, event);
      requestSync();
      resendPending();
      break;
    case "message":
      addMessage(event.message);
      break;
    case "accepted":
      state.unavailableSends = 0;
      break;
    case "committed":
      onCommitted(event);
      break;
    case "synced":
      onSynced(event.cursors);
      break;
    case "pong":
      onPong();
      break;
    case "error":
      onError(socket, event);
      break;
    default:
      // Event types this page does not use yet.
      break;
  }
}

function addMessage(message) {
  const conversation = message.conversation;
  if (message.sender === state.user) {
    // A resent message the edge had already stored arrives as a message
    // event, not as a commit.
    state.pendingSends.delete(message.client_msg_id);
  }
  if (!state.conversations.has(conversation)) {
    state.conversations.set(conversation, new Map());
  }
  state.conversations.get(conversation).set(message.seq, message);
  if (state.selected === null) {
    selectConversation(conversation);
  }
  const cursor = state.cursors[conversation] || 0;
  if (message.seq > cursor + 1 && !state.syncing) {
    // A gap: the messages in between come with a sync from the cursor.
    requestSync();
  }
  advanceCursor(conversation);
  render();
}

function advanceCursor(conversation) {
  const messages = state.conversations.get(conversation) || new Map();
  let cursor = state.cursors[conversation] || 0;
  while (messages.has(cursor + 1)) {
    cursor += 1;
  }
  state.cursors[conversation] = cursor;
}

function onCommitted(event) {
  const pending = state.pendingSends.get(event.id);
  state.pendingSends.delete(event.id);
  if (!pending) {
    // Without the content the page cannot show it; the cursor stays, so the
    // next sync brings the message.
    return;
  }
  addMessage({
    message_id: event.message_id,
    conversation: event.conversation,
    seq: event.seq,
    sender: state.user,
    recipient: pending.to,
    content: pending.content,
    timestamp_ms: event.timestamp_ms,
    client_msg_id: event.id,
  });
}

function onSynced(cursors) {
  state.syncing = false;
  for (const [conversation, synced] of Object.entries(cursors)) {
    if (!state.conversations.has(conversation)) {
      state.conversations.set(conversation, new Map());
    }
    // The server sent everything readable up to `synced`.
    state.cursors[conversation] = Math.max(state.cursors[conversation] || 0, synced);
    advanceCursor(conversation);
  }
  render();
}

function onError(socket, event) {
  const pending = event.ref && state.pendingSends.has(event.ref);
  if (pending && event.code === "unavailable") {
    // The region cannot store messages now; the message stays pending and
    // goes out again on the next connection.
    state.unavailableSends += 1;
    if (state.unavailableSends >= UNAVAILABLE_LIMIT) {
      abandon(socket, "sends unavailable");
      lose(socket, "sends unavailable", CLOSE_GOING_AWAY);
    }
  } else if (pending && event.code === "rate_limited") {
    // Hold every send until the edge takes messages again, then send what
    // is pending in order, with the same ids.
    clearTimeout(state.holdTimer);
    state.holdUntil = Date.now() + (event.retry_after_ms || 1000);
    state.holdTimer = setTimeout(() => {
      state.holdUntil = 0;
      resendPending();
    }, event.retry_after_ms || 1000);
  } else if (pending) {
    state.pendingSends.delete(event.ref);
    render();
  }
  if (event.ref === "sync") {
    state.syncing = false;
  }
  $("compose-error").textContent = `${event.code}: ${event.message}`;
}

// ---- sending ---------------------------------------------------------------

function newClientId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function sendMessage(to, content) {
  $("compose-error").textContent = "";
  const id = newClientId();
  state.pendingSends.set(id, { to, content });
  // Without a connection, or while the edge asked to wait, the message stays
  // pending. `resendPending` sends it later with the same id, so the store
  // keeps one copy.
  if (Date.now() >= state.holdUntil) {
    send({ type: "send", id, to, content });
  }
  selectConversation(directConversation(state.user, to));
  render();
}

function resendPending() {
  for (const [id, pending] of state.pendingSends) {
    send({ type: "send", id, to: pending.to, content: pending.content });
  }
}

function directConversation(a, b) {
  const [low, high] = [a, b].sort();
  return `dm:${low}:${high}`;
}

function peerOf(conversation) {
  if (!conversation.startsWith("dm:")) {
    return null;
  }
  const [, low, high] = conversation.split(":");
  return low === state.user ? high : low;
}

// ---- rendering -------------------------------------------------------------

function setStatus(name, text) {
  $("status").dataset.state = name;
  $("status").textContent = text;
}

function selectConversation(conversation) {
  state.selected = conversation;
  const peer = peerOf(conversation);
  if (peer) {
    $("to").value = peer;
  }
  render();
}

function render() {
  renderConversations();
  renderMessages();
  renderPresence(conversationPeers().map((user) => ({ user, online: null })));
}

function lastTimestamp(conversation) {
  let last = 0;
  for (const message of state.conversations.get(conversation).values()) {
    last = Math.max(last, message.timestamp_ms);
  }
  return last;
}

function renderConversations() {
  const list = $("conversations");
  const ids = [...state.conversations.keys()];
  ids.sort((a, b) => lastTimestamp(b) - lastTimestamp(a));
  list.replaceChildren(
    ...ids.map((conversation) => {
      const item = document.createElement("li");
      item.dataset.conversation = conversation;
      item.textContent = peerOf(conversation) || conversation;
      item.setAttribute("aria-current", String(conversation === state.selected));
      item.onclick = () => selectConversation(conversation);
      return item;
    }),
  );
}

function renderMessages() {
  const conversation = state.selected;
  $("conversation-title").textContent = conversation
    ? `Conversation with ${peerOf(conversation) || conversation}`
    : "No conversation selected";
  const messages = conversation ? state.conversations.get(conversation) : null;
  const sorted = messages ? [...messages.values()].sort((a, b) => a.seq - b.seq) : [];
  const items = sorted.map((message) => messageItem(message, false));
  for (const pending of state.pendingSends.values()) {
    if (conversation === directConversation(state.user, pending.to)) {
      items.push(messageItem({ sender: state.user, content: pending.content }, true));
    }
  }
  $("messages").replaceChildren(...items);
  $("messages").scrollTop = $("messages").scrollHeight;
}

function messageItem(message, pending) {
  const item = document.createElement("li");
  item.classList.toggle("mine", message.sender === state.user);
  item.classList.toggle("pending", pending);
  if (!pending) {
    item.dataset.seq = String(message.seq);
  }
  const time = document.createElement("time");
  if (message.timestamp_ms) {
    const at = new Date(message.timestamp_ms);
    time.dateTime = at.toISOString();
    time.textContent = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  } else {
    time.textContent = "sending";
  }
  const sender = document.createElement("span");
  sender.className = "sender";
  sender.textContent = message.sender;
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = message.content;
  item.append(time, sender, content);
  return item;
}

function conversationPeers() {
  const peers = new Set();
  for (const conversation of state.conversations.keys()) {
    const peer = peerOf(conversation);
    if (peer) {
      peers.add(peer);
    }
  }
  return [...peers].sort();
}

// Presence hook: draws the "People" list from entries {user, online}, where
// online is true, false or null (unknown). Until the page receives presence
// from the edge, `render` passes the conversation peers with online = null.
function renderPresence(entries) {
  $("presence").replaceChildren(
    ...entries.map(({ user, online }) => {
      const item = document.createElement("li");
      item.dataset.user = user;
      item.dataset.online = online === null ? "unknown" : String(online);
      item.textContent = user;
      item.title = online === null ? "presence unknown" : online ? "online" : "offline";
      item.onclick = () => selectConversation(directConversation(state.user, user));
      return item;
    }),
  );
}

// ---- start-up --------------------------------------------------------------

function init() {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("user-name").value.trim());
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("compose").addEventListener("submit", (event) => {
    event.preventDefault();
    const to = $("to").value.trim();
    const content = $("message").value;
    if (to && content) {
      sendMessage(to, content);
      $("message").value = "";
    }
  });
  const saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "null");
  if (saved && saved.user && saved.token) {
    start(saved.user, saved.token);
  }
}

init();
