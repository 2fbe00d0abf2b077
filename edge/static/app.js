// The chatmesh web page: development sign-in, then chat over the edge's
// WebSocket (/v1/ws) with the protocol in docs/protocol.md.
//
// The page keeps one cursor per conversation. After every (re)connect it
// sends a sync frame with those cursors, so nothing sent meanwhile is missed,
// and it keys messages by sequence number, so nothing is shown twice.
"use strict";

const STORAGE_KEY = "chatmesh.sign-in";
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10000;
const CLOSE_INVALID_TOKEN = 4001;
const CLOSE_WRONG_EDGE = 4009;

const state = {
  user: null,
  token: null,
  socket: null,
  socketUrl: null,
  signedIn: false,
  backoffMs: BACKOFF_MIN_MS,
  reconnectTimer: null,
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

function start(user, token) {
  state.user = user;
  state.token = token;
  state.signedIn = true;
  state.socketUrl = defaultSocketUrl();
  $("me").textContent = user;
  $("sign-in-view").hidden = true;
  $("chat-view").hidden = false;
  $("sign-out").hidden = false;
  render();
  connect();
}

function signOut(reason) {
  state.signedIn = false;
  clearTimeout(state.reconnectTimer);
  if (state.socket) {
    state.socket.close(1000, "signed out");
  }
  sessionStorage.removeItem(STORAGE_KEY);
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
}

// ---- connection ------------------------------------------------------------

function defaultSocketUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/v1/ws`;
}

function connect() {
  setStatus("connecting", "connecting");
  const socket = new WebSocket(state.socketUrl);
  state.socket = socket;
  socket.onopen = () => socket.send(JSON.stringify({ type: "auth", token: state.token }));
  socket.onmessage = (message) => handleEvent(JSON.parse(message.data));
  socket.onclose = (close) => onClose(socket, close);
}

function onClose(socket, close) {
  if (state.socket !== socket) {
    return;
  }
  state.socket = null;
  state.syncing = false;
  if (!state.signedIn) {
    return;
  }
  if (close.code === CLOSE_INVALID_TOKEN) {
    signOut("The edge rejected the token; sign in again.");
    return;
  }
  if (close.code === CLOSE_WRONG_EDGE && close.reason) {
    // The close reason is the WebSocket URL of the edge that serves this user.
    state.socketUrl = close.reason;
    connect();
    return;
  }
  scheduleReconnect();
}

function scheduleReconnect() {
  // Full jitter, so many pages cut off at once do not return at once.
  const delayMs = Math.round(Math.random() * state.backoffMs);
  state.backoffMs = Math.min(state.backoffMs * 2, BACKOFF_MAX_MS);
  setStatus("reconnecting", `reconnecting in ${(delayMs / 1000).toFixed(1)} s`);
  state.reconnectTimer = setTimeout(connect, delayMs);
}

function send(frame) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
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

function handleEvent(event) {
  switch (event.type) {
    case "hello":
      state.backoffMs = BACKOFF_MIN_MS;
      setStatus("online", `online at ${event.edge} (${event.region})`);
      requestSync();
      resendPending();
      break;
    case "message":
      addMessage(event.message);
      break;
    case "committed":
      onCommitted(event);
      break;
    case "synced":
      onSynced(event.cursors);
      break;
    case "error":
      onError(event);
      break;
    default:
      // accepted, pong and event types this page does not use yet.
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

function onError(event) {
  if (event.ref && state.pendingSends.has(event.ref)) {
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
  // Without a connection the message waits; `resendPending` sends it on the
  // next hello with the same id, which the edge stores once.
  send({ type: "send", id, to, content });
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
