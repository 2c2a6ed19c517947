// The web chat: draws the emulated chat and turns what the person does into Telegram updates.
//
// The server sends each message as a view (see _webchat_view.py) whose text is a tree of nodes
// it has already parsed and checked; this script creates one element per node from the TAGS table
// and puts every string in as text. No bot text is ever given to the page as HTML.
"use strict";

const USER = Number(document.body.dataset.user);
const log = document.getElementById("log");
const toastBox = document.getElementById("toast");
const composer = document.getElementById("composer");
const input = document.getElementById("text");

// Node tag -> element. Anything else is drawn as its children only.
const TAGS = { b: "b", i: "i", u: "u", s: "s", code: "code", pre: "pre", blockquote: "blockquote",
  a: "a", "tg-spoiler": "span" };

async function api(method, path, payload) {
  const init = { method, headers: {} };
  if (payload !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify({ user: USER, ...payload });
  }
  const response = await fetch("/webchat/api/" + path, init);
  const data = await response.json().catch(() => ({ ok: false, error: response.statusText }));
  if (!response.ok || !data.ok) throw new Error(data.error || "HTTP " + response.status);
  return data;
}

function toast(text, alert) {
  toastBox.textContent = text;
  toastBox.className = alert ? "alert" : "";
  toastBox.hidden = false;
  clearTimeout(toast.timer);
  if (!alert) toast.timer = setTimeout(() => { toastBox.hidden = true; }, 3000);
}
toastBox.addEventListener("click", () => { toastBox.hidden = true; });

function renderNodes(nodes, parent) {
  for (const node of nodes) {
    if (typeof node === "string") {
      parent.append(node);  // a string argument becomes a text node
      continue;
    }
    const tag = TAGS[node.t];
    const safeLink = node.t !== "a" || /^https?:\/\//i.test(node.href || "");
    if (!tag || !safeLink) {
      renderNodes(node.c || [], parent);
      continue;
    }
    const el = document.createElement(tag);
    if (node.t === "a") {
      el.href = node.href;
      el.target = "_blank";
      el.rel = "noopener noreferrer";
    } else if (node.t === "tg-spoiler") {
      el.className = "spoiler";
      el.addEventListener("click", () => el.classList.add("shown"));
    }
    renderNodes(node.c || [], el);
    parent.append(el);
  }
}

function div(className, ...children) {
  const el = document.createElement("div");
  el.className = className;
  el.append(...children);
  return el;
}

function fileLink(file) {
  if (!file.url) return div("missing", "[" + file.name + "]");
  const a = document.createElement("a");
  a.href = file.url;
  a.textContent = "📄 " + file.name;
  return a;
}

// A button that calls the server; disabled while its request runs, so one click is one update.
function actionButton(label, className, action) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = label;
  button.className = className;
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await action();
    } catch (err) {
      toast(err.message, false);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

function keyboardButton(message, button, row, column) {
  if (button.kind === "url") {
    const a = document.createElement("a");
    a.href = button.url;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    a.textContent = button.text;
    return a;
  }
  if (button.kind === "callback") {
    return actionButton(button.text, "", async () => {
      const data = await api("POST", "press", { message_id: message.id, row, column });
      if (data.answer && data.answer.text) toast(data.answer.text, data.answer.show_alert);
    });
  }
  if (button.kind === "pay") {
    return actionButton(button.text, "pay", async () => {
      const data = await api("POST", "pay", { message_id: message.id });
      if (!data.paid) toast(data.reason, true);
    });
  }
  const inert = actionButton(button.text, "", async () => {});
  inert.disabled = true;
  return inert;
}

function bubble(message) {
  const el = div("msg " + message.side);
  el.dataset.id = String(message.id);
  if (message.photo) {
    if (message.photo.url) {
      const img = document.createElement("img");
      img.src = message.photo.url;
      img.alt = message.photo.name;
      // Its height is known only once loaded: keep the newest message in view. (The bubble is
      // found from the image: an edit moves the image into the element already on the page.)
      img.addEventListener("load", () => {
        if (img.closest(".msg") === log.lastElementChild) log.scrollTop = log.scrollHeight;
      });
      el.append(img);
    } else {
      el.append(div("missing", "[" + message.photo.name + "]"));
    }
  }
  if (message.document) el.append(fileLink(message.document));
  if (message.invoice) {
    const card = div("invoice", div("title"), div("description", message.invoice.description),
      div("amount", message.invoice.amount));
    card.firstChild.append(Object.assign(document.createElement("b"), { textContent: message.invoice.title }));
    el.append(card);
  }
  if (message.payment) el.append(div("payment", message.payment));
  if (message.text) {
    const text = div("text");
    renderNodes(message.text, text);
    if (message.edited) text.append(Object.assign(document.createElement("span"),
      { className: "edited", textContent: message.edited }));
    el.append(text);
  }
  if (message.keyboard) {
    const keyboard = div("keyboard");
    message.keyboard.forEach((buttons, row) => {
      keyboard.append(div("row", ...buttons.map((b, column) => keyboardButton(message, b, row, column))));
    });
    el.append(keyboard);
  }
  return el;
}

function apply(update) {
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
  if (update.reset) log.replaceChildren();
  for (const id of update.deleted) {
    const gone = log.querySelector(`[data-id="${id}"]`);
    if (gone) gone.remove();
  }
  for (const message of update.messages) {
    const drawn = bubble(message);
    const old = log.querySelector(`[data-id="${message.id}"]`);
    if (old) {
      // An edit: the message changes where it is and stays the same element, as a Telegram
      // message does (its place in the log, and whatever holds the bubble, stay).
      old.className = drawn.className;
      old.replaceChildren(...drawn.childNodes);
      continue;
    }
    const later = [...log.children].find((el) => Number(el.dataset.id) > message.id);
    log.insertBefore(drawn, later || null);
  }
  if (atBottom || update.reset) log.scrollTop = log.scrollHeight;
  document.body.dataset.cursor = update.cursor;  // tests and curious people can see it is live
}

async function poll() {
  let cursor = null;
  for (;;) {
    try {
      const query = new URLSearchParams({ user: String(USER) });
      if (cursor) {
        query.set("since", cursor);
        query.set("wait", "20");  // parked on the server until the chat changes, at most 20 s
      }
      const update = await api("GET", "history?" + query);
      apply(update);
      cursor = update.cursor;
    } catch (err) {
      toast(err.message, false);
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

composer.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = input.value;
  if (!text.trim()) return;
  input.value = "";
  try {
    await api("POST", "send", { text });
  } catch (err) {
    input.value = text;
    toast(err.message, false);
  }
});

poll();
