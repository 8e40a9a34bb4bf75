// The tianci playground: plain JS, no build step. Talks to /api/cipai, /api/compose and /v1/completions.
"use strict";
const $ = (sel) => document.querySelector(sel);
const SYM = { "平": "○", "仄": "●", "中": "◐" };
const state = { list: [], form: null, poem: null, busy: null, lastReq: null };

// ---------------------------------------------------------------- server-sent events over fetch
async function postStream(url, body, onData, signal) {
  const resp = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" },
                                  body: JSON.stringify(body), signal });
  if (!resp.ok) {
    let msg = `HTTP ${resp.status}`;
    try {
      const j = await resp.json();
      msg = j.error.message;
    } catch (e) { /* not JSON: keep the status line */ }
    throw new Error(msg);
  }
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i); buf = buf.slice(i + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const obj = JSON.parse(data);
        if (obj.error) throw new Error(obj.error.message);
        onData(obj);
      }
    }
  }
}

function setStatus(el, text, isError) {
  el.textContent = text || "";
  el.classList.toggle("error", !!isError);
}

// ---------------------------------------------------------------- 词牌 picker
async function loadList() {
  const resp = await fetch("/api/cipai");
  const j = await resp.json();
  if (!resp.ok) { setStatus($("#status"), j.error.message, true); return; }
  state.list = j.data;
  renderList("");
  const wanted = decodeURIComponent(location.hash.slice(1));
  const first = state.list.find((r) => r.name === wanted) || state.list[0];
  if (first) selectCipai(first.name);
}

function renderList(q) {
  const key = q.trim().toLowerCase();
  const ul = $("#cipai-list");
  ul.textContent = "";
  const rows = state.list.filter((r) => !key || [r.name, ...r.aliases, ...r.pinyin]
    .some((s) => s.toLowerCase().includes(key))).slice(0, 80);
  for (const r of rows) {
    const li = document.createElement("li");
    li.setAttribute("role", "option");
    li.dataset.name = r.name;
    li.setAttribute("aria-selected", String(state.form && state.form.name === r.name));
    li.title = r.aliases.length ? "又名 " + r.aliases.join("、") : r.name;
    const nm = document.createElement("span"); nm.textContent = r.name;
    const n = document.createElement("span"); n.className = "n"; n.textContent = r.count ? `${r.count} 首` : "";
    li.append(nm, n);
    li.addEventListener("click", () => selectCipai(r.name));
    ul.append(li);
  }
  if (!rows.length) {
    const li = document.createElement("li"); li.textContent = "没有这个词牌"; ul.append(li);
  }
}

async function selectCipai(name) {
  const resp = await fetch("/api/cipai/" + encodeURIComponent(name));
  const j = await resp.json();
  if (!resp.ok) { setStatus($("#status"), j.error.message, true); return; }
  state.form = j;
  history.replaceState(null, "", "#" + encodeURIComponent(j.name));
  for (const li of document.querySelectorAll("#cipai-list li"))
    li.setAttribute("aria-selected", String(li.dataset.name === j.name));
  renderForm(j);
  layoutPoem(j, j.title, "");
  setStatus($("#status"), "");
}

function slotHTML(sym, rhyme) {
  const span = document.createElement("span");
  span.textContent = sym;
  if (rhyme) { const r = document.createElement("span"); r.className = "rh"; r.textContent = rhyme; span.append(r); }
  return span;
}

function renderForm(f) {
  const v = $("#form-view");
  v.textContent = "";
  const hd = document.createElement("div"); hd.className = "hd";
  hd.textContent = `${f.name} · ${f.n_chars} 字 · ${f.lines.length} 句` +
    (f.rhyme_groups ? ` · ${f.rhyme_groups > 1 ? f.rhyme_groups + " 韵" : "一韵到底"}` : "") +
    (f.source === "词谱" ? (f.n_variants > 1 ? ` · 体 ${f.variant + 1}/${f.n_variants}` : "") : " · 据语料");
  v.append(hd);
  let k = 0;
  for (const line of f.lines) {
    const div = document.createElement("div");
    for (const ch of line) {
      if (ch === "*") {
        const g = f.rhyme[k];
        div.append(slotHTML(SYM[f.tones[k]] || "◐", g >= 0 ? String.fromCharCode(65 + g) : ""));
        k++;
      } else div.append(document.createTextNode(ch));
    }
    v.append(div);
  }
}

// ---------------------------------------------------------------- the poem layout
function layoutPoem(f, title, author) {
  const poem = $("#poem");
  poem.dataset.state = "idle";
  poem.querySelector(".poem-cipai").textContent = title;
  poem.querySelector(".poem-author").textContent = author;
  poem.querySelector(".poem-meta").textContent = "";
  const box = poem.querySelector(".poem-lines");
  box.textContent = "";
  state.cells = [];
  let k = 0;
  for (const line of f.lines) {
    const div = document.createElement("div"); div.className = "line";
    for (const ch of line) {
      const c = document.createElement("span");
      if (ch === "*") { c.className = "cell slot"; c.textContent = SYM[f.tones[k]] || "◐"; k++; }
      else { c.className = "cell punct pending"; c.textContent = ch; }
      div.append(c); state.cells.push(c);
    }
    box.append(div);
  }
  state.ptr = 0;
  markNext();
}

function markNext() {
  for (const c of document.querySelectorAll(".cell.next")) c.classList.remove("next");
  const c = state.cells[state.ptr];
  if (c) c.classList.add("next");
}

function push(text) {
  for (const ch of text) {
    if (ch === "\n") continue; // the layout already breaks the lines
    const c = state.cells[state.ptr++];
    if (!c) break;
    c.textContent = ch;
    c.classList.add("filled"); c.classList.remove("pending");
  }
  markNext();
}

async function compose(again) {
  if (!state.form || state.busy) return;
  const req = again && state.lastReq ? { ...state.lastReq } : {
    cipai: state.form.name, temperature: Number($("#temperature").value), min_p: Number($("#min-p").value) || null,
    start: $("#start").value.trim() || null, acrostic: $("#acrostic").value.trim() || null,
    theme: $("#theme").value.trim() || null };
  delete req.seed;
  state.lastReq = req;
  const f = state.form;
  layoutPoem(f, f.title, "");
  const poem = $("#poem");
  poem.dataset.state = "composing";
  setStatus($("#status"), "正在填词……");
  $("#copy-btn").disabled = $("#regen-btn").disabled = true;
  $("#compose-btn").disabled = true;
  const ctrl = new AbortController();
  state.busy = ctrl;
  let author = "";
  try {
    await postStream("/api/compose", req, (ev) => {
      if (ev.type === "author") { author += ev.text; poem.querySelector(".poem-author").textContent = author; }
      else if (ev.type === "text") push(ev.text);
      else if (ev.type === "done") {
        const r = ev.result;
        state.poem = r;
        poem.querySelector(".poem-author").textContent = r.author;
        poem.querySelector(".poem-meta").textContent =
          `韵：${r.rhyme.join(" → ") || "—"} · ${r.seconds.toFixed(2)} 秒 · seed ${r.seed}` +
          (r.backoffs.length ? ` · ${r.backoffs.length} 处放宽格律` : "") +
          (r.theme && r.theme.length ? ` · 主题 ${r.theme_found.length}/${r.theme.length}` : "");
      }
    }, ctrl.signal);
    poem.dataset.state = "done";
    setStatus($("#status"), "");
    $("#copy-btn").disabled = false;
  } catch (e) {
    poem.dataset.state = "error";
    setStatus($("#status"), e.message, true);
  } finally {
    state.busy = null;
    $("#compose-btn").disabled = false;
    $("#regen-btn").disabled = !state.lastReq;
    markNext();
  }
}

async function copyText(text, statusEl) {
  try { await navigator.clipboard.writeText(text); }
  catch (e) { // http on a LAN address has no clipboard API: fall back to a selection
    const t = document.createElement("textarea"); t.value = text; document.body.append(t); t.select();
    document.execCommand("copy"); t.remove();
  }
  setStatus(statusEl, "已复制");
}

// ---------------------------------------------------------------- free continuation
async function continueText() {
  if (state.freeBusy) return;
  const prompt = $("#prompt").value;
  const out = $("#free-out");
  out.querySelector(".given").textContent = prompt;
  const written = out.querySelector(".written");
  written.textContent = "";
  out.dataset.state = "composing";
  const ctrl = new AbortController();
  state.freeBusy = ctrl;
  $("#continue-btn").disabled = true; $("#stop-btn").disabled = false; $("#free-copy-btn").disabled = true;
  setStatus($("#free-status"), "正在续写……");
  try {
    await postStream("/v1/completions", { prompt, max_tokens: Number($("#max-tokens").value),
      temperature: Number($("#free-temperature").value), stream: true },
      (chunk) => { for (const c of chunk.choices) written.textContent += c.text; }, ctrl.signal);
    setStatus($("#free-status"), "");
  } catch (e) {
    if (e.name === "AbortError") setStatus($("#free-status"), "已停止");
    else setStatus($("#free-status"), e.message, true);
  } finally {
    out.dataset.state = "done";
    state.freeBusy = null;
    $("#continue-btn").disabled = false; $("#stop-btn").disabled = true; $("#free-copy-btn").disabled = false;
  }
}

// ---------------------------------------------------------------- wiring
function bindRange(id) {
  const el = $("#" + id), out = $("#" + id + "-out");
  const show = () => { out.textContent = el.step.includes(".") ? Number(el.value).toFixed(2) : el.value; };
  el.addEventListener("input", show); show();
}

function setMode(mode) {
  for (const b of document.querySelectorAll(".modes button")) b.setAttribute("aria-selected", String(b.dataset.mode === mode));
  $("#compose-panel").hidden = mode !== "compose";
  $("#free-panel").hidden = mode !== "free";
}

document.addEventListener("DOMContentLoaded", () => {
  bindRange("temperature"); bindRange("min-p"); bindRange("free-temperature"); bindRange("max-tokens");
  for (const b of document.querySelectorAll(".modes button")) b.addEventListener("click", () => setMode(b.dataset.mode));
  $("#cipai-search").addEventListener("input", (e) => renderList(e.target.value));
  $("#cipai-search").addEventListener("keydown", (e) => {
    if (e.key === "Enter") { const li = $("#cipai-list li[data-name]"); if (li) selectCipai(li.dataset.name); }
  });
  $("#compose-btn").addEventListener("click", () => compose(false));
  $("#regen-btn").addEventListener("click", () => compose(true));
  $("#copy-btn").addEventListener("click", () => {
    const p = state.poem; if (p) copyText(`${p.title} ${p.author}\n${p.text}`, $("#status"));
  });
  $("#continue-btn").addEventListener("click", continueText);
  $("#stop-btn").addEventListener("click", () => state.freeBusy && state.freeBusy.abort());
  $("#free-copy-btn").addEventListener("click", () =>
    copyText($("#free-out").textContent, $("#free-status")));
  loadList().catch((e) => setStatus($("#status"), e.message, true));
});
