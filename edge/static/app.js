// The chatmesh web page: development sign-in, then chat over an edge's
// WebSocket (/v1/ws) with the protocol in docs/protocol.md.
//
// The page keeps one cursor per conversation. After every (re)connect it
// sends a sync frame with those cursors, so nothing sent meanwhile is missed,
// and it keys messages by sequence number, so nothing is shown twice.
//
// Sending: messages wait in `pendingSends` until their commit arrives. The
// page sends them in order, one at a time: the next goes out when the edge
// has accepted the one before. So a sender's messages are committed in the
// order they were written, whichever region commits them.
//
// Failover: the page reads the regions, nearest first, from GET /v1/regions.
// When its connection fails it moves to the next region, with exponential
// backoff and full jitter between attempts, and sends the messages not yet
// committed again, in order and with their ids, so each is stored once. It
// pings every 2 s and leaves an edge whose pong is 5 s late. While away
// from the nearest region it probes that region's health URL and moves back
// after two healthy probes in a row.
"use strict";

const STORAGE_KEY = "chatmesh.sign-in";
const BACKOFF_MIN_MS = 200;
const BACKOFF_MAX_MS = 5000;
const CONNECT_TIMEOUT_MS = 5000;
const REGIONS_TIMEOUT_MS = 5000;
// A session that lasted this long counts as stable: the next loss starts
// the backoff from its first step again.
const STABLE_SESSION_MS = 10000;
const PING_INTERVAL_MS = 2000;
// The edge handles frames in order, so a pong may wait behind a sync or a
// group request (each up to a few seconds when the core is slow).
const PING_TIMEOUT_MS = 5000;
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

// Returns the state of a fresh sign-in, which `resetSession` restores.
function sessionState() {
  return {
    // Regions nearest first, each {name, edges: [{name, url, health_url}]}.
    regions: [],
    // True while the page could not read the regions and uses its own edge.
    regionsUnknown: false,
    // Region name -> the edge URL that last served this user there.
    edgeInRegion: {},
    // The region of the open session, once its hello arrived.
    region: null,
    // Connection attempts not yet tried, each {region, url}.
    plan: [],
    attempt: 0,
    // Moves back to the nearest region that ended somewhere else, in a row.
    failedFailbacks: 0,
    failingBack: false,
    unavailableSends: 0,
    syncFailures: 0,
    // Why each connection was lost: {from, to, reason}, newest last.
    moves: [],
    syncing: false,
    // conversation id -> highest seq such that the page has 1..seq (or
    // everything the server let it read up to seq)
    cursors: {},
    // conversation id -> Map(seq -> message view)
    conversations: new Map(),
    // client message id -> {to, content, accepted}, in the order written,
    // until the commit arrives. `accepted` is the socket that accepted it.
    pendingSends: new Map(),
    // The id of the send waiting for its `accepted`, or null.
    inFlight: null,
    // user -> {online, region, last_seen_ms}, from presence events.
    presence: new Map(),
    // Users whose presence the current connection subscribed to.
    watched: new Set(),
    selected: null,
  };
}

const state = {
  user: null,
  token: null,
  signedIn: false,
  // Counts sign-ins, so work started for an earlier one stops.
  generation: 0,
  socket: null,
  onlineSince: 0,
  connectTimer: null,
  pingTimer: null,
  pongTimer: null,
  probeTimer: null,
  syncTimer: null,
  sendTimer: null,
  healthyProbes: 0,
  presenceRequests: 0,
  ...sessionState(),
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
  resetSession();
  const generation = state.generation;
  state.user = user;
  state.token = token;
  state.signedIn = true;
  $("me").textContent = user;
  $("sign-in-view").hidden = true;
  $("chat-view").hidden = false;
  $("sign-out").hidden = false;
  render();
  setStatus("connecting", "connecting");
  const regions = await loadRegions();
  if (state.generation !== generation || !state.signedIn) {
    return;
  }
  useRegions(regions);
  planRound(null, null);
  tryNext();
}

function signOut(reason) {
  resetSession();
  sessionStorage.removeItem(STORAGE_KEY);
  $("me").textContent = "";
  $("sign-out").hidden = true;
  $("chat-view").hidden = true;
  $("sign-in-view").hidden = false;
  $("sign-in-error").textContent = reason || "";
  setStatus("signed-out", "signed out");
  delete $("status").dataset.region;
}

// Forget the signed-in user: close the socket and stop every timer.
function resetSession() {
  state.generation += 1;
  state.signedIn = false;
  stopTimers();
  clearTimeout(state.sendTimer);
  if (state.socket) {
    abandon(state.socket, "signed out");
  }
  Object.assign(state, sessionState());
}

// ---- regions ---------------------------------------------------------------

function defaultSocketUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/v1/ws`;
}

// The regions, nearest to the edge that served this page first, or null if
// the edge did not list them.
async function loadRegions() {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), REGIONS_TIMEOUT_MS);
  try {
    const reply = await fetch("/v1/regions", { cache: "no-store", signal: abort.signal });
    if (!reply.ok) {
      console.warn(`GET /v1/regions returned ${reply.status}; trying again later`);
      return null;
    }
    const body = await reply.json();
    const regions = (Array.isArray(body.regions) ? body.regions : []).filter(
      (r) => Array.isArray(r.edges) && r.edges.length > 0,
    );
    // The page reaches its own edge the way it reached the page, which may
    // be through a proxy; the listed URLs are for other regions.
    const own = regions.find((r) => r.name === body.region);
    if (own) {
      own.edges = [
        { name: null, url: defaultSocketUrl(), health_url: `${location.origin}/healthz` },
        ...own.edges,
      ];
    }
    return regions.length > 0 ? regions : null;
  } catch (error) {
    console.warn(`GET /v1/regions failed (${error}); trying again later`);
    return null;
  } finally {
    clearTimeout(timer);
  }
}

// Without the list the page still works, with this page's edge as its only
// region, and reads the list again after the next connect.
function useRegions(regions) {
  state.regionsUnknown = regions === null;
  state.regions = regions || [
    {
      name: null,
      edges: [{ name: null, url: defaultSocketUrl(), health_url: `${location.origin}/healthz` }],
    },
  ];
}

function nearestRegion() {
  return state.regions[0].name;
}

// A page served over https may only open wss:// sockets.
function secureUrl(url) {
  return location.protocol === "https:" ? url.replace(/^ws:/, "wss:") : url;
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
      plan.push({ region: region.name, url: secureUrl(url) });
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
  if (state.socket) {
    abandon(state.socket, "replaced");
  }
  setStatus("connecting", `connecting to ${candidate.region || "this edge"}`);
  let socket;
  try {
    socket = new WebSocket(candidate.url);
  } catch (error) {
    console.warn(`cannot open a WebSocket to ${candidate.url}: ${error}`);
    tryNext();
    return;
  }
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
  clearTimeout(state.connectTimer);
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
  clearTimeout(state.syncTimer);
  state.pongTimer = null;
}

async function onOpened(socket, hello) {
  socket.helloed = true;
  clearTimeout(state.connectTimer);
  const from = state.region;
  const region = socket.candidate.region;
  state.region = region;
  state.onlineSince = Date.now();
  state.unavailableSends = 0;
  state.syncFailures = 0;
  state.inFlight = null;
  // Subscriptions belong to a connection: make them again on this one.
  state.watched = new Set();
  state.edgeInRegion[region] = socket.candidate.url;
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
  if (state.regionsUnknown) {
    const generation = state.generation;
    const regions = await loadRegions();
    if (regions !== null && state.generation === generation) {
      useRegions(regions);
    }
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
  state.inFlight = null;
  if (!state.signedIn) {
    return;
  }
  if (!wasOnline) {
    // The attempt failed before the hello: try the next candidate.
    tryNext();
    return;
  }
  // Back off from the first step after a stable session, and keep growing
  // the delay while sessions keep dropping soon after they start.
  const stable = Date.now() - state.onlineSince >= STABLE_SESSION_MS;
  state.attempt = stable ? 1 : Math.max(state.attempt, 1);
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
    signOut("The edge rejected the token; sign in again.");
    return;
  }
  if (close.code === CLOSE_WRONG_EDGE && close.reason && !socket.candidate.redirected) {
    // The close reason is the WebSocket URL of the edge that serves this
    // user in the same region. One redirect per attempt, so two edges that
    // disagree do not send the page back and forth.
    stopTimers();
    state.socket = null;
    const region = socket.candidate.region;
    state.edgeInRegion[region] = close.reason;
    state.plan.unshift({ region, url: secureUrl(close.reason), redirected: true });
    tryNext();
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
    const healthy = await nearestHealthy();
    if (state.socket !== socket) {
      return;
    }
    state.healthyProbes = healthy ? state.healthyProbes + 1 : 0;
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
  state.inFlight = null;
  state.moves.push({ from, to: null, reason: "failback" });
  delete $("status").dataset.region;
  state.attempt = 0;
  state.failingBack = true;
  planRound(nearestRegion(), null);
  tryNext();
}

function send(frame) {
  if (state.socket && state.socket.helloed && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(frame));
    return true;
  }
  return false;
}

function requestSync() {
  clearTimeout(state.syncTimer);
  if (send({ type: "sync", cursors: state.cursors })) {
    state.syncing = true;
  }
}

// A failed sync (the region may be cut off from the core) is tried again
// with backoff while the connection lasts.
function retrySync() {
  state.syncing = false;
  state.syncFailures += 1;
  const socket = state.socket;
  clearTimeout(state.syncTimer);
  state.syncTimer = setTimeout(() => {
    if (state.socket === socket) {
      requestSync();
    }
  }, backoffMs(state.syncFailures));
}

// ---- events ----------------------------------------------------------------

function handleEvent(socket, event) {
  switch (event.type) {
    case "hello":
      onOpened(socket, event);
      requestSync();
      pumpSends();
      break;
    case "message":
      addMessage(event.message);
      break;
    case "accepted":
      onAccepted(socket, event);
      break;
    case "committed":
      onCommitted(event);
      break;
    case "synced":
      state.syncFailures = 0;
      onSynced(event.cursors);
      break;
    case "pong":
      onPong();
      break;
    case "presence":
      onPresence(event.users);
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
    settleSend(message.client_msg_id);
  }
  const isNew = !state.conversations.has(conversation);
  if (isNew) {
    state.conversations.set(conversation, new Map());
  }
  state.conversations.get(conversation).set(message.seq, message);
  if (isNew) {
    watchPresence();
  }
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
  settleSend(event.id);
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
  watchPresence();
  render();
}

// Subscribe to the presence of conversation peers not watched yet. Only
// contacts may be watched, and a conversation in the list has at least one
// message, so every peer in it is a contact.
function watchPresence() {
  const users = conversationPeers().filter((user) => !state.watched.has(user));
  if (users.length === 0) {
    return;
  }
  state.presenceRequests += 1;
  const id = `presence-${state.presenceRequests}`;
  if (send({ type: "presence", id, users, subscribe: true })) {
    for (const user of users) {
      state.watched.add(user);
    }
  }
}

function onPresence(users) {
  for (const entry of users) {
    state.presence.set(entry.user, entry);
  }
  render();
}

function onError(socket, event) {
  if (event.ref === "sync") {
    retrySync();
  }
  if (event.ref && event.ref.startsWith("presence-")) {
    // The list shows these users as unknown; nothing to tell the user.
    console.warn(`presence request failed: ${event.code}: ${event.message}`);
    return;
  }
  // Rate limits on bytes and some unavailable errors name no frame: they
  // are about the send in flight, if any.
  const aboutSend = event.code === "rate_limited" || event.code === "unavailable";
  const ref = event.ref || (aboutSend ? state.inFlight : null);
  const inFlight = ref !== null && ref === state.inFlight;
  if (inFlight && event.code === "unavailable") {
    // The region cannot store messages now: try the same message again
    // after a backoff, and leave the region after a few failures in a row.
    state.unavailableSends += 1;
    if (state.unavailableSends >= UNAVAILABLE_LIMIT) {
      abandon(socket, "sends unavailable");
      lose(socket, "sends unavailable", CLOSE_GOING_AWAY);
    } else {
      retrySend(backoffMs(state.unavailableSends));
    }
  } else if (inFlight && event.code === "rate_limited") {
    // The edge takes no more messages for a while: send the same one again
    // once it does.
    retrySend(event.retry_after_ms || 1000);
  } else if (ref !== null && state.pendingSends.has(ref)) {
    // Refused for good (unknown recipient, not a member, too large).
    settleSend(ref);
    render();
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
  if (to === state.user) {
    $("compose-error").textContent = "You cannot send a message to yourself.";
    return;
  }
  const id = newClientId();
  state.pendingSends.set(id, { to, content, accepted: null });
  pumpSends();
  selectConversation(directConversation(state.user, to));
  render();
}

// Send the oldest message this connection has not accepted yet, unless a
// send is in flight. Without a connection the messages wait; each goes out
// later with the same id, so the store keeps one copy.
function pumpSends() {
  if (state.inFlight !== null || !state.socket || !state.socket.helloed) {
    return;
  }
  for (const [id, pending] of state.pendingSends) {
    if (pending.accepted === state.socket) {
      continue;
    }
    if (send({ type: "send", id, to: pending.to, content: pending.content })) {
      state.inFlight = id;
    }
    return;
  }
}

function retrySend(delayMs) {
  const socket = state.socket;
  clearTimeout(state.sendTimer);
  state.sendTimer = setTimeout(() => {
    if (state.socket === socket) {
      state.inFlight = null;
      pumpSends();
    }
  }, delayMs);
}

function onAccepted(socket, event) {
  state.unavailableSends = 0;
  // A retry went through: the last error no longer applies.
  $("compose-error").textContent = "";
  const pending = state.pendingSends.get(event.id);
  if (pending) {
    pending.accepted = socket;
  }
  if (event.id === state.inFlight) {
    state.inFlight = null;
    pumpSends();
  }
}

// The message is committed or refused: forget it and send the next one.
function settleSend(id) {
  state.pendingSends.delete(id);
  if (id === state.inFlight) {
    state.inFlight = null;
    pumpSends();
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
  renderPresence(
    conversationPeers().map((user) => {
      const known = state.presence.get(user);
      return known ? { ...known } : { user, online: null };
    }),
  );
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

// Draws the "People" list from entries {user, online, region,
// last_seen_ms}, where online is true, false or null (not known yet).
function renderPresence(entries) {
  $("presence").replaceChildren(
    ...entries.map(({ user, online, region, last_seen_ms: lastSeenMs }) => {
      const item = document.createElement("li");
      item.dataset.user = user;
      item.dataset.online = online === null ? "unknown" : String(online);
      item.textContent = user;
      item.title = presenceTitle(online, region, lastSeenMs);
      item.onclick = () => selectConversation(directConversation(state.user, user));
      return item;
    }),
  );
}

function presenceTitle(online, region, lastSeenMs) {
  if (online === null) {
    return "presence not known yet";
  }
  if (online) {
    return region ? `online in ${region}` : "online";
  }
  if (lastSeenMs) {
    return `offline, last seen ${new Date(lastSeenMs).toLocaleString()}`;
  }
  return "offline";
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
