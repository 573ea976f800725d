// fed_AI market dashboard: a Nostr client in the browser.
//
// It subscribes to one relay (this one, or `?relay=wss://…`) for capability ads, job requests,
// feedback, results, metering records and payment receipts; checks every event's id and Schnorr
// signature before using it; and renders with `textContent` only, so nothing an event says can
// become markup or script (the relay also serves the page under a strict Content-Security-Policy).
// Everything it keeps is bounded: a relay, honest or not, cannot make the page grow without end.
//
// Privacy: the page never renders an event's content except a capability ad's public `name`;
// prompts, outputs and streamed partials are never shown (partials are not even verified: they
// carry nothing the page uses).

import { schnorr, hashes } from './vendor/secp256k1.js';
import { sha256 } from './vendor/noble-hashes/sha2.js';

hashes.sha256 = sha256;

const K = { REQUEST: 5050, RESULT: 6050, FEEDBACK: 7000, METERING: 7060, RECEIPT: 7062, AD: 31990 };
const MAX_MESSAGE = 256 * 1024; // bigger frames are dropped unparsed
const MAX_WORKERS = 500;
const MAX_JOBS = 500;
const MAX_RECORDS = 5000; // metering records and receipts, each
const SHOWN_JOBS = 100;
const HOUR = 3600;

// ---- state -------------------------------------------------------------------------------

const state = {
  workers: new Map(), // `${pubkey}:${d}` -> ad
  jobs: new Map(), // request id -> job
  metering: new Map(), // metering event id -> record
  receipts: new Map(), // receipt event id -> receipt
  verified: 0,
  rejected: 0,
  seen: new Set(), // event ids already handled (bounded below)
};

// ---- small helpers -----------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const now = () => Math.floor(Date.now() / 1000);
const HEX = /^[0-9a-f]*$/;
const isHex = (s, n) => typeof s === 'string' && s.length === n && HEX.test(s);

function hexToBytes(h) {
  const b = new Uint8Array(h.length / 2);
  for (let i = 0; i < b.length; i++) b[i] = parseInt(h.substr(i * 2, 2), 16);
  return b;
}
function bytesToHex(b) {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/** Text for display: strings from the network are cut to `n` characters. */
function clip(s, n = 48) {
  s = String(s ?? '');
  return s.length > n ? s.slice(0, n - 1) + '…' : s;
}

/** An element with text children only: strings become text nodes, never markup. */
function el(tag, cls, ...children) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  for (const c of children) {
    if (c == null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function ago(t) {
  const s = Math.max(0, now() - t);
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}
const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });
const num = (s) => {
  const n = Number(s);
  return Number.isFinite(n) && n >= 0 ? n : null;
};
const fmt = (n) => (n == null ? '–' : Math.round(n).toLocaleString('en-US'));

// bech32 (BIP-173) for npub display: NIP-19 names keys this way.
const CHARSET = 'qpzry9x8gf2tvdw0s3jn54khce6mua7l';
function polymod(values) {
  const G = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
  let chk = 1;
  for (const v of values) {
    const top = chk >> 25;
    chk = ((chk & 0x1ffffff) << 5) ^ v;
    for (let i = 0; i < 5; i++) if ((top >> i) & 1) chk ^= G[i];
  }
  return chk;
}
function npub(hex) {
  const data = [];
  let acc = 0;
  let bits = 0;
  for (const byte of hexToBytes(hex)) {
    acc = (acc << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      data.push((acc >> bits) & 31);
    }
  }
  if (bits) data.push((acc << (5 - bits)) & 31);
  const hrp = 'npub';
  const expand = [...hrp].map((c) => c.charCodeAt(0) >> 5).concat([0], [...hrp].map((c) => c.charCodeAt(0) & 31));
  const mod = polymod(expand.concat(data, [0, 0, 0, 0, 0, 0])) ^ 1;
  const check = [0, 1, 2, 3, 4, 5].map((i) => (mod >> (5 * (5 - i))) & 31);
  return hrp + '1' + data.concat(check).map((d) => CHARSET[d]).join('');
}
const shortNpub = (hex) => {
  const n = npub(hex);
  return n.slice(0, 12) + '…' + n.slice(-6);
};

// ---- verification ------------------------------------------------------------------------

const enc = new TextEncoder();

/** NIP-01: the id is SHA-256 of the canonical serialisation, signed by `pubkey` (BIP-340). */
export function verifyEvent(ev) {
  if (!ev || typeof ev !== 'object') return false;
  if (!isHex(ev.id, 64) || !isHex(ev.pubkey, 64) || !isHex(ev.sig, 128)) return false;
  if (!Number.isSafeInteger(ev.kind) || !Number.isSafeInteger(ev.created_at)) return false;
  if (typeof ev.content !== 'string' || !Array.isArray(ev.tags)) return false;
  if (!ev.tags.every((t) => Array.isArray(t) && t.every((s) => typeof s === 'string'))) return false;
  const ser = JSON.stringify([0, ev.pubkey, ev.created_at, ev.kind, ev.tags, ev.content]);
  if (bytesToHex(sha256(enc.encode(ser))) !== ev.id) return false;
  try {
    return schnorr.verify(hexToBytes(ev.sig), hexToBytes(ev.id), hexToBytes(ev.pubkey));
  } catch {
    return false;
  }
}

const tagsOf = (ev, name) => ev.tags.filter((t) => t[0] === name);
const tag = (ev, name) => ev.tags.find((t) => t[0] === name);
/** The `e` tag with this marker, or the first `e` tag. */
function eTag(ev, marker) {
  const es = tagsOf(ev, 'e').filter((t) => isHex(t[1], 64));
  return (es.find((t) => t[3] === marker) || (marker === 'request' ? es[0] : null))?.[1];
}

// ---- event handling ----------------------------------------------------------------------

function onEvent(ev) {
  if (state.seen.has(ev.id)) return;
  // Streamed partials carry output text and nothing the page shows: skip them unverified.
  if (ev.kind === K.FEEDBACK && tag(ev, 'status')?.[1] === 'partial') return;
  if (!verifyEvent(ev)) {
    state.rejected++;
    return;
  }
  state.verified++;
  state.seen.add(ev.id);
  if (state.seen.size > 4 * (MAX_JOBS + MAX_RECORDS)) state.seen.clear();
  switch (ev.kind) {
    case K.AD: return onAd(ev);
    case K.REQUEST: return onRequest(ev);
    case K.FEEDBACK: return onFeedback(ev);
    case K.RESULT: return onResult(ev);
    case K.METERING: return onMetering(ev);
    case K.RECEIPT: return onReceipt(ev);
  }
}

function onAd(ev) {
  const d = tag(ev, 'd')?.[1] ?? '';
  const key = `${ev.pubkey}:${d}`;
  const old = state.workers.get(key);
  if (old && old.created_at >= ev.created_at) return;
  let name = '';
  try {
    const c = ev.content.length <= 65536 ? JSON.parse(ev.content) : null;
    if (c && typeof c.name === 'string') name = c.name;
  } catch { /* content is optional */ }
  const prices = new Map(tagsOf(ev, 'price').map((t) => [t[1], t.slice(2, 5).map(num)]));
  const cap = tag(ev, 'capacity');
  const hw = tag(ev, 'hardware');
  const exp = num(tag(ev, 'expiration')?.[1]);
  state.workers.set(key, {
    pubkey: ev.pubkey,
    d,
    name,
    created_at: ev.created_at,
    expires: exp,
    models: tagsOf(ev, 'model').slice(0, 16).map((t) => ({ id: t[1] ?? '', ctx: num(t[2]), quant: t[3] ?? '' })),
    prices,
    capacity: cap ? { max: num(cap[1]), busy: num(cap[2]), queue: num(cap[3]) } : null,
    hardware: hw
      ? hw[1] === 'gpu'
        ? `GPU ${clip(hw[2], 32)}${num(hw[3]) ? `, ${fmt(num(hw[3]) / 1024)} GiB` : ''}`
        : `CPU ${clip(hw[2], 32)}${num(hw[3]) ? `, ${hw[3]} cores` : ''}${num(hw[4]) ? `, ${fmt(num(hw[4]) / 1024)} GiB` : ''}`
      : '',
    runner: tag(ev, 'runner')?.[1] ?? '',
    health: tag(ev, 'health')?.[1] ?? '',
    payment: [...new Set(tagsOf(ev, 'payment').map((t) => t[1]))].slice(0, 4),
    mode: tag(ev, 'payment_mode')?.[1] ?? '',
  });
  if (state.workers.size > MAX_WORKERS) evictOldest(state.workers);
}

function evictOldest(map) {
  let oldest = null;
  for (const [k, v] of map) if (!oldest || v.created_at < oldest[1].created_at) oldest = [k, v];
  map.delete(oldest[0]);
}

function job(id, created_at) {
  let j = state.jobs.get(id);
  if (!j) {
    j = { id, created_at: created_at ?? null, model: '', state: 'sent', worker: null, error: '', latency: null, tokens: null, price: null, metered: false };
    state.jobs.set(id, j);
    if (state.jobs.size > MAX_JOBS) {
      // Drop the oldest; placeholders (no request seen) count as oldest.
      let oldest = null;
      for (const [k, v] of state.jobs) if (!oldest || (v.created_at ?? 0) < (oldest[1].created_at ?? 0)) oldest = [k, v];
      state.jobs.delete(oldest[0]);
    }
  }
  return j;
}

function onRequest(ev) {
  const j = job(ev.id, ev.created_at);
  j.created_at = ev.created_at;
  j.customer = ev.pubkey;
  j.encrypted = !!tag(ev, 'encrypted');
  const model = ev.tags.find((t) => t[0] === 'param' && t[1] === 'model');
  j.model = j.encrypted ? '(encrypted)' : model?.[2] ?? '';
}

const RANK = { sent: 0, 'payment-required': 1, processing: 2, error: 3, success: 4 };

function setState(j, s, at) {
  // Feedback can arrive out of order: a later state never goes back to an earlier one.
  if ((RANK[s] ?? 0) >= (RANK[j.state] ?? 0)) j.state = s;
  if ((s === 'success' || s === 'error') && j.created_at && j.latency == null) j.latency = (at - j.created_at) * 1000;
}

function onFeedback(ev) {
  const rid = eTag(ev, 'request');
  if (!rid) return;
  const st = tag(ev, 'status');
  const s = st?.[1];
  if (!(s in RANK)) return;
  const j = job(rid);
  j.worker = j.worker ?? ev.pubkey;
  if (s === 'error') j.error = clip(tag(ev, 'code')?.[1] ?? st[2] ?? 'error', 40);
  setState(j, s, ev.created_at);
}

function onResult(ev) {
  const rid = eTag(ev, 'request');
  if (!rid) return;
  const j = job(rid);
  j.worker = ev.pubkey;
  j.result = ev.id;
  setState(j, 'success', ev.created_at);
}

function onMetering(ev) {
  const rid = eTag(ev, 'request');
  if (!rid) return;
  const tokens = tag(ev, 'tokens');
  const rec = {
    id: ev.id,
    worker: ev.pubkey,
    request: rid,
    result: eTag(ev, 'result'),
    created_at: ev.created_at,
    model: tag(ev, 'model')?.[1] ?? '',
    tokens: tokens ? [num(tokens[1]), num(tokens[2])] : null,
    wall: num(tag(ev, 'wall_ms')?.[1]),
    price: num(tag(ev, 'price')?.[1]),
  };
  state.metering.set(ev.id, rec);
  if (state.metering.size > MAX_RECORDS) evictOldest(state.metering);
  const j = state.jobs.get(rid);
  if (j) {
    // Metering counts for a job only from the worker whose result it names.
    if (j.worker && j.worker !== ev.pubkey) return;
    j.worker = ev.pubkey;
    j.tokens = rec.tokens;
    j.price = rec.price;
    if (rec.wall != null) j.latency = rec.wall;
    if (!j.model || j.model === '(encrypted)') j.model = clip(rec.model, 40);
    j.metered = true;
  }
}

function onReceipt(ev) {
  const worker = tag(ev, 'p')?.[1];
  if (!isHex(worker, 64)) return;
  const hash = tag(ev, 'payment_hash')?.[1];
  const pre = tag(ev, 'preimage')?.[1];
  // The preimage is the proof of payment: SHA-256(preimage) must be the invoice's hash.
  const proven = isHex(hash, 64) && isHex(pre, 64) && bytesToHex(sha256(hexToBytes(pre))) === hash;
  state.receipts.set(ev.id, { worker, created_at: ev.created_at, amount: num(tag(ev, 'amount')?.[1]), proven });
  if (state.receipts.size > MAX_RECORDS) evictOldest(state.receipts);
}

// ---- rendering ---------------------------------------------------------------------------

function workerLabel(pubkey) {
  for (const w of state.workers.values()) if (w.pubkey === pubkey && w.name) return clip(w.name, 48);
  return shortNpub(pubkey);
}

/** Per worker: metering records seen, failures reported, msat metered / proven paid (24 h). */
function perWorker() {
  const out = new Map();
  const get = (pk) => {
    if (!out.has(pk)) out.set(pk, { ok: 0, failed: 0, metered: 0, proven: 0, receipts: 0, unproven: 0 });
    return out.get(pk);
  };
  const since = now() - 24 * HOUR;
  for (const m of state.metering.values()) {
    const w = get(m.worker);
    w.ok++;
    if (m.created_at >= since) w.metered += m.price ?? 0;
  }
  for (const j of state.jobs.values()) if (j.state === 'error' && j.worker) get(j.worker).failed++;
  for (const r of state.receipts.values()) {
    if (r.created_at < since) continue;
    const w = get(r.worker);
    w.receipts++;
    if (r.proven) w.proven += r.amount ?? 0;
    else w.unproven++;
  }
  return out;
}

function renderWorkers(stats) {
  const body = $('workers').tBodies[0];
  const rows = [...state.workers.values()].sort((a, b) => b.created_at - a.created_at);
  const t = now();
  body.replaceChildren(
    ...rows.map((w) => {
      const online = w.expires == null || w.expires > t;
      const s = stats.get(w.pubkey);
      const trust = s && s.ok + s.failed > 0 ? `${Math.round((100 * s.ok) / (s.ok + s.failed))}%` : '–';
      const tr = el(
        'tr',
        online ? 'worker' : 'worker offline',
        el('td', null, el('span', 'name', clip(w.name || 'unnamed', 48)), el('small', 'mono', shortNpub(w.pubkey))),
        el('td', null, ...w.models.map((m) => el('div', 'model', clip(m.id, 40), el('small', null, [m.ctx ? `${fmt(m.ctx)} ctx` : '', clip(m.quant, 12)].filter(Boolean).join(' · '))))),
        el('td', 'mono', ...w.models.map((m) => {
          const p = w.prices.get(m.id);
          return el('div', null, p ? `${fmt(p[0])} + ${fmt(p[1])}/${fmt(p[2])}` : 'free?');
        })),
        el('td', null, w.capacity ? `${fmt(w.capacity.busy)}/${fmt(w.capacity.max)} busy` : '–', w.capacity ? el('small', null, `queue ${fmt(w.capacity.queue)}`) : null),
        el('td', null, w.hardware || '–'),
        el('td', null, clip(w.runner, 16) || '–', w.health ? el('small', w.health === 'ok' ? 'ok' : 'warn', clip(w.health, 12)) : null),
        el('td', null, clip(w.mode, 12) || '–', el('small', null, w.payment.map((p) => clip(p, 12)).join(', '))),
        el('td', 'trust', trust, s ? el('small', null, `${s.ok} metered, ${s.failed} failed`) : null),
        el('td', null, ago(w.created_at), online ? null : el('small', 'bad', 'ad expired')),
      );
      tr.title = npub(w.pubkey);
      return tr;
    }),
  );
  $('workers-empty').hidden = rows.length > 0;
  $('stat-workers').textContent = rows.filter((w) => w.expires == null || w.expires > t).length;
}

function renderJobs() {
  const body = $('jobs').tBodies[0];
  const rows = [...state.jobs.values()].sort((a, b) => (b.created_at ?? 0) - (a.created_at ?? 0)).slice(0, SHOWN_JOBS);
  body.replaceChildren(
    ...rows.map((j) =>
      el(
        'tr',
        'job',
        el('td', null, j.created_at ? clock(j.created_at) : '–'),
        el('td', 'mono', j.id.slice(0, 10) + '…'),
        el('td', null, clip(j.model, 40) || '–'),
        el('td', `state state-${j.state}`, j.state, j.error ? el('small', null, j.error) : null),
        el('td', 'mono', j.worker ? workerLabel(j.worker) : '–'),
        el('td', null, j.latency == null ? '–' : `${fmt(j.latency)} ms`),
        el('td', null, j.tokens ? `${fmt(j.tokens[0])} / ${fmt(j.tokens[1])}` : '–'),
        el('td', null, j.price == null ? '–' : fmt(j.price), j.metered ? el('small', 'ok', 'signed metering') : null),
      ),
    ),
  );
  const t = now();
  const recent = [...state.jobs.values()].filter((j) => j.created_at && j.created_at > t - HOUR);
  $('stat-jobs').textContent = recent.length;
  $('stat-outcome').textContent = `${recent.filter((j) => j.state === 'success').length} / ${recent.filter((j) => j.state === 'error').length}`;
  $('stat-rate').textContent = (recent.filter((j) => j.created_at > t - 600).length / 10).toFixed(1);
}

/** Bars in an SVG: `series` is [[total, failed]] per bucket, oldest first. */
function bars(svg, series, labels) {
  const NS = 'http://www.w3.org/2000/svg';
  // The viewBox follows the element's width, so bars fill it and labels are not stretched.
  const W = Math.max(200, Math.round(svg.clientWidth || 600));
  const H = 120;
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const max = Math.max(1, ...series.map((s) => s[0]));
  const w = W / series.length;
  const nodes = [];
  const mk = (name, attrs, text) => {
    const n = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    if (text != null) n.textContent = text;
    return n;
  };
  nodes.push(mk('line', { x1: 0, y1: H - 14, x2: W, y2: H - 14, class: 'axis' }));
  series.forEach(([total, failed], i) => {
    const h = ((H - 28) * total) / max;
    const hf = ((H - 28) * failed) / max;
    if (total) nodes.push(mk('rect', { x: i * w + 1, y: H - 14 - h, width: Math.max(1, w - 2), height: h, class: 'bar' }));
    if (failed) nodes.push(mk('rect', { x: i * w + 1, y: H - 14 - hf, width: Math.max(1, w - 2), height: hf, class: 'fail' }));
  });
  nodes.push(mk('text', { x: 2, y: 10 }, `max ${fmt(max)}`));
  nodes.push(mk('text', { x: 2, y: H - 2 }, labels[0]));
  nodes.push(mk('text', { x: W - 2, y: H - 2, 'text-anchor': 'end' }, labels[1]));
  svg.replaceChildren(...nodes);
}

function renderCharts() {
  const t = now();
  const minutes = Array.from({ length: 30 }, () => [0, 0]);
  for (const j of state.jobs.values()) {
    if (!j.created_at) continue;
    const i = 29 - Math.floor((t - j.created_at) / 60);
    if (i < 0 || i > 29) continue;
    minutes[i][0]++;
    if (j.state === 'error') minutes[i][1]++;
  }
  bars($('chart-jobs'), minutes, ['30 min ago', 'now']);
  const hours = Array.from({ length: 24 }, () => [0, 0]);
  for (const m of state.metering.values()) {
    const i = 23 - Math.floor((t - m.created_at) / HOUR);
    if (i >= 0 && i <= 23) hours[i][0] += (m.price ?? 0) / 1000;
  }
  bars($('chart-money'), hours, ['24 h ago', 'now']);
}

function renderMoney(stats) {
  const body = $('money').tBodies[0];
  const rows = [...stats.entries()].filter(([, s]) => s.ok || s.receipts).sort((a, b) => b[1].metered - a[1].metered);
  body.replaceChildren(
    ...rows.map(([pk, s]) =>
      el(
        'tr',
        'earner',
        el('td', 'mono', workerLabel(pk)),
        el('td', null, fmt(s.metered), el('small', null, `${s.ok} jobs metered`)),
        el('td', null, `${s.receipts}`, s.receipts ? el('small', s.unproven ? 'bad' : 'ok', s.unproven ? `${s.unproven} without a valid preimage` : 'all proven by preimage') : null),
        el('td', null, fmt(s.proven)),
      ),
    ),
  );
  let sats = 0;
  for (const s of stats.values()) sats += s.metered / 1000;
  $('stat-sats').textContent = fmt(sats);
}

let renderError = null;
function render() {
  try {
    renderAll();
    renderError = null;
  } catch (e) {
    // A bug must not freeze the page silently: say so in the header, and to tests.
    renderError = String(e && e.stack ? e.stack : e);
    $('conn-state').textContent = 'page error (see console)';
    console.error(e);
  }
}

function renderAll() {
  const stats = perWorker();
  renderWorkers(stats);
  renderJobs();
  renderMoney(stats);
  renderCharts();
  $('stat-rejected').textContent = state.rejected;
  $('stat-verify').firstChild.textContent = `${state.verified} / `;
}

let pending = false;
function scheduleRender() {
  if (pending) return;
  pending = true;
  setTimeout(() => {
    pending = false;
    render();
  }, 250);
}

// ---- relay connection --------------------------------------------------------------------

function relayUrl() {
  const q = new URLSearchParams(location.search).get('relay');
  if (q && /^wss?:\/\//.test(q)) return q;
  return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/';
}

const RELAY = relayUrl();
/** Whether the relay is the one serving this page (its /metrics is then ours to read). */
const SAME_ORIGIN = new URL(RELAY).host === location.host;

function filters() {
  const t = now();
  return [
    { kinds: [K.AD], '#k': [String(K.REQUEST)], limit: MAX_WORKERS },
    { kinds: [K.REQUEST], since: t - HOUR, limit: MAX_JOBS },
    { kinds: [K.RESULT, K.FEEDBACK], since: t - HOUR, limit: 2000 },
    { kinds: [K.METERING, K.RECEIPT], since: t - 24 * HOUR, limit: 2000 },
  ];
}

let backoff = 1000;
function connect() {
  const conn = $('conn-state');
  conn.textContent = 'connecting';
  conn.className = 'pill';
  let ws;
  try {
    ws = new WebSocket(RELAY);
  } catch {
    conn.textContent = 'bad relay URL';
    conn.className = 'pill closed';
    return;
  }
  ws.onopen = () => {
    backoff = 1000;
    conn.textContent = 'live';
    conn.className = 'pill open';
    ws.send(JSON.stringify(['REQ', 'dash', ...filters()]));
  };
  ws.onmessage = (m) => {
    if (typeof m.data !== 'string' || m.data.length > MAX_MESSAGE) {
      state.rejected++;
      scheduleRender();
      return;
    }
    let msg;
    try {
      msg = JSON.parse(m.data);
    } catch {
      state.rejected++;
      return;
    }
    if (!Array.isArray(msg)) return;
    if (msg[0] === 'EVENT' && msg[1] === 'dash') {
      onEvent(msg[2]);
      scheduleRender();
    } else if (msg[0] === 'CLOSED' && msg[1] === 'dash') {
      conn.textContent = `refused: ${clip(msg[2], 60)}`;
      conn.className = 'pill closed';
    }
  };
  ws.onclose = () => {
    conn.textContent = `reconnecting in ${backoff / 1000} s`;
    conn.className = 'pill closed';
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 30000);
  };
}

// ---- relay metrics (only for the relay serving the page) ---------------------------------

let lastAccepted = null;
async function pollMetrics() {
  if (!SAME_ORIGIN) return;
  try {
    const r = await fetch('metrics', { cache: 'no-store' });
    const text = (await r.text()).slice(0, 1 << 20);
    const sum = (name) => {
      let total = null;
      for (const line of text.split('\n')) {
        if (!line.startsWith(name)) continue;
        const rest = line.slice(name.length);
        if (rest[0] !== ' ' && rest[0] !== '{') continue;
        const v = Number(line.slice(line.lastIndexOf(' ') + 1));
        if (Number.isFinite(v)) total = (total ?? 0) + v;
      }
      return total;
    };
    const accepted = sum('fedai_relay_events_accepted_total');
    const at = performance.now();
    if (accepted != null && lastAccepted) {
      $('stat-eps').textContent = ((accepted - lastAccepted[0]) / ((at - lastAccepted[1]) / 1000)).toFixed(1);
    }
    lastAccepted = accepted == null ? null : [accepted, at];
    $('stat-conns').textContent = fmt(sum('fedai_relay_connections'));
    const stored = sum('fedai_relay_stored_events');
    const bytes = sum('fedai_relay_store_bytes');
    $('stat-stored').textContent = stored == null ? '–' : `${fmt(stored)} ev · ${fmt((bytes ?? 0) / 1048576)} MiB`;
  } catch {
    /* metrics are optional */
  }
}

// ---- start -------------------------------------------------------------------------------

function theme() {
  const saved = localStorage.getItem('fedai-theme');
  if (saved) document.documentElement.dataset.theme = saved;
  $('theme').onclick = () => {
    const dark = getComputedStyle(document.documentElement).getPropertyValue('--bg').trim() === '#15161a';
    const next = dark ? 'light' : 'dark';
    document.documentElement.dataset.theme = next;
    localStorage.setItem('fedai-theme', next);
  };
}

theme();
$('relay-url').value = RELAY;
$('relay-info').textContent = `Relay: ${RELAY}`;
connect();
render();
pollMetrics();
setInterval(pollMetrics, 5000);
// Ages and the charts move with time even when no event arrives.
setInterval(render, 5000);
// For tests and curious operators: the page's own counts (read-only copies).
window.fedaiDashboard = () => ({
  relay: RELAY,
  verified: state.verified,
  rejected: state.rejected,
  workers: state.workers.size,
  jobs: state.jobs.size,
  error: renderError,
});
