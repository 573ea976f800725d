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
const MAX_MESSAGE = 1024 * 1024; // bigger frames are dropped unparsed (relays cap events lower)
const MAX_WORKERS = 500;
const MAX_JOBS = 500;
const MAX_RECORDS = 5000; // metering records and receipts, each
const SHOWN_JOBS = 100;
const HOUR = 3600;

// ---- state ----------------------------------------------------------------------------
//
// Events are stored as they come (the relay sends a query's events newest first, so a job's
// metering arrives before its request) and joined only when the page renders: a job's row is
// worked out from whatever of its request, results, feedback and metering is known by then.

const state = {
  workers: new Map(), // `${pubkey}:${d}` -> ad
  requests: new Map(), // request id -> request
  results: new Map(), // request id -> Map(result id -> result)
  feedback: new Map(), // request id -> Map(signer -> latest status)
  metering: new Map(), // metering event id -> record
  receipts: new Map(), // receipt event id -> receipt
  verified: 0,
  rejected: 0,
  skipped: 0,
  seen: new Set(), // event ids handled, good or bad (cleared when large)
  newest: 0, // newest created_at seen: where a re-opened subscription starts
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

const MAX_TAG_VALUE = 1024; // longer values in the events the page keeps: skipped, unkept
const MAX_FUTURE = 600; // seconds ahead of this clock an event may be dated

function onEvent(ev) {
  if (!ev || typeof ev !== 'object' || !Array.isArray(ev.tags) || !ev.tags.every(Array.isArray)) {
    state.rejected++;
    return;
  }
  if (state.seen.has(ev.id)) return;
  // Streamed partials carry output text and nothing the page shows: skip them unverified.
  if (ev.kind === K.FEEDBACK && ev.tags.find((t) => t[0] === 'status')?.[1] === 'partial') return;
  if (state.seen.size > 4 * (MAX_JOBS + MAX_RECORDS)) state.seen.clear();
  // Remember failures too: the same bad event sent again costs nothing more.
  state.seen.add(ev.id);
  if (!verifyEvent(ev)) {
    state.rejected++;
    return;
  }
  state.verified++;
  // What the page keeps stays small: no long values, no events from the future (they would
  // sort first and push real ones out).
  const big = ev.kind === K.AD ? ev.content.length > 65536 : false;
  if (big || ev.created_at > now() + MAX_FUTURE || ev.tags.some((t) => t.some((v) => v.length > MAX_TAG_VALUE))) {
    state.skipped++;
    return;
  }
  if (ev.created_at > state.newest) state.newest = ev.created_at;
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
    const c = JSON.parse(ev.content);
    if (c && typeof c.name === 'string') name = c.name.slice(0, 64);
  } catch { /* content is optional */ }
  const prices = new Map(tagsOf(ev, 'price').slice(0, 16).map((t) => [t[1], t.slice(2, 5).map(num)]));
  const cap = tag(ev, 'capacity');
  const hw = tag(ev, 'hardware');
  state.workers.set(key, {
    pubkey: ev.pubkey,
    d,
    name,
    created_at: ev.created_at,
    expires: num(tag(ev, 'expiration')?.[1]),
    fedai: tagsOf(ev, 't').some((t) => t[1] === 'fedai'),
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

/** An ad says the worker is up: until its NIP-40 expiration, or for an hour (other DVMs). */
function online(w, t) {
  return w.expires != null ? w.expires > t : w.created_at > t - HOUR;
}

function evictOldest(map, created = (v) => v.created_at) {
  let oldest = null;
  for (const [k, v] of map) if (!oldest || created(v) < created(oldest[1])) oldest = [k, v];
  map.delete(oldest[0]);
}

/** Per request id: a map kept to MAX_JOBS request ids (the oldest first out). */
function perJob(map, rid, at) {
  let m = map.get(rid);
  if (!m) {
    m = new Map();
    m.at = at;
    map.set(rid, m);
    if (map.size > MAX_JOBS) evictOldest(map, (v) => v.at);
  }
  return m;
}

function onRequest(ev) {
  const model = ev.tags.find((t) => t[0] === 'param' && t[1] === 'model');
  const encrypted = !!tag(ev, 'encrypted');
  state.requests.set(ev.id, {
    id: ev.id,
    created_at: ev.created_at,
    customer: ev.pubkey,
    kind: ev.kind,
    encrypted,
    model: encrypted ? '(encrypted)' : model?.[2] ?? '',
    provider: tagsOf(ev, 'p').map((t) => t[1]),
  });
  if (state.requests.size > MAX_JOBS) evictOldest(state.requests);
}

const RANK = { 'payment-required': 1, processing: 2, error: 3, success: 4 };

function onFeedback(ev) {
  const rid = eTag(ev, 'request');
  const s = tag(ev, 'status')?.[1];
  if (!rid || !Object.hasOwn(RANK, s)) return;
  const bySigner = perJob(state.feedback, rid, ev.created_at);
  const old = bySigner.get(ev.pubkey);
  // Each signer's latest word counts for that signer only: a stranger's `error` is not the
  // worker's failure.
  if (old && old.created_at > ev.created_at) return;
  bySigner.set(ev.pubkey, { status: s, code: clip(tag(ev, 'code')?.[1] ?? '', 40), created_at: ev.created_at });
  if (bySigner.size > 16) evictOldest(bySigner);
}

function onResult(ev) {
  const rid = eTag(ev, 'request');
  if (!rid) return;
  const results = perJob(state.results, rid, ev.created_at);
  results.set(ev.id, { id: ev.id, pubkey: ev.pubkey, created_at: ev.created_at, customer: tag(ev, 'p')?.[1] });
  if (results.size > 16) evictOldest(results);
}

function onMetering(ev) {
  const rid = eTag(ev, 'request');
  const res = eTag(ev, 'result');
  if (!rid || !res) return;
  const tokens = tag(ev, 'tokens');
  state.metering.set(ev.id, {
    id: ev.id,
    worker: ev.pubkey,
    request: rid,
    result: res,
    created_at: ev.created_at,
    model: clip(tag(ev, 'model')?.[1] ?? '', 64),
    tokens: tokens ? [num(tokens[1]), num(tokens[2])] : null,
    wall: num(tag(ev, 'wall_ms')?.[1]),
    price: num(tag(ev, 'price')?.[1]),
  });
  if (state.metering.size > MAX_RECORDS) evictOldest(state.metering);
}

function onReceipt(ev) {
  const worker = tag(ev, 'p')?.[1];
  const rid = eTag(ev, 'request');
  if (!isHex(worker, 64) || !rid) return;
  const hash = tag(ev, 'payment_hash')?.[1];
  const pre = tag(ev, 'preimage')?.[1];
  // SHA-256(preimage) = payment hash: the customer holds the preimage the invoice committed to.
  const opens = isHex(hash, 64) && isHex(pre, 64) && bytesToHex(sha256(hexToBytes(pre))) === hash;
  state.receipts.set(ev.id, { worker, request: rid, signer: ev.pubkey, created_at: ev.created_at, amount: num(tag(ev, 'amount')?.[1]), opens });
  if (state.receipts.size > MAX_RECORDS) evictOldest(state.receipts);
}

/**
 * A job's row, joined from what is known. A result counts as *the* answer when the worker that
 * signed it also signed a metering record naming it and the request, and the result names the
 * request's customer: a stranger's result or metering changes nothing. Without a metered answer
 * the state is the best any signer reported, blamed (for errors) on that signer only.
 */
function jobRow(rid) {
  const req = state.requests.get(rid);
  const results = [...(state.results.get(rid)?.values() ?? [])].filter((r) => !req || !r.customer || r.customer === req.customer);
  let answer = null;
  let meter = null;
  for (const r of results) {
    for (const m of meteringByResult.get(r.id) ?? []) {
      if (m.worker === r.pubkey && m.request === rid) {
        answer = r;
        meter = m;
      }
    }
  }
  const fb = [...(state.feedback.get(rid)?.entries() ?? [])];
  let st = 'sent';
  let worker = null;
  let code = '';
  if (answer) {
    st = 'success';
    worker = answer.pubkey;
  } else if (results.length) {
    st = 'success';
    worker = results[0].pubkey;
  } else {
    for (const [signer, f] of fb) {
      if ((RANK[f.status] ?? 0) > (RANK[st] ?? 0)) {
        st = f.status;
        worker = signer;
        code = f.code;
      }
    }
  }
  const end = answer ?? results[0];
  return {
    id: rid,
    req,
    created_at: req?.created_at ?? null,
    model: req?.model || meter?.model || '',
    state: st,
    code,
    worker,
    metered: !!meter,
    tokens: meter?.tokens ?? null,
    price: meter?.price ?? null,
    // The worker's own inference time, else request → result by the two signers' clocks.
    latency: meter?.wall != null ? `${fmt(meter.wall)} ms` : end && req && end.created_at >= req.created_at ? `≈${end.created_at - req.created_at} s` : null,
  };
}

/** Metering records by the result they name (rebuilt each render). */
let meteringByResult = new Map();
function indexMetering() {
  meteringByResult = new Map();
  for (const m of state.metering.values()) {
    if (!meteringByResult.has(m.result)) meteringByResult.set(m.result, []);
    meteringByResult.get(m.result).push(m);
  }
}

// ---- rendering ---------------------------------------------------------------------------

/** A worker as the tables name it: its ad's name (anyone can pick any name) and its key. */
function workerCell(pubkey) {
  let name = '';
  for (const w of state.workers.values()) if (w.pubkey === pubkey && w.name) name = w.name;
  return el('td', 'who', clip(name || 'unnamed', 48), el('small', 'mono', shortNpub(pubkey)));
}

/**
 * Per worker, over the jobs in view: answers linked by their own metering (`delivered`), errors
 * the worker itself reported (`failed`), msat those metering records claim in the last 24 h
 * (`metered`), and receipts signed by the job's own customer whose preimage opens the hash.
 * All of these are signed claims, checked for consistency, not proofs of quality: a worker
 * paying itself from a second key can still make them up (docs/relay.md).
 */
function perWorker(rows) {
  const out = new Map();
  const get = (pk) => {
    if (!out.has(pk)) out.set(pk, { delivered: 0, failed: 0, metered: 0, jobs24: 0, receipts: 0, paid: 0, unproven: 0 });
    return out.get(pk);
  };
  const since = now() - 24 * HOUR;
  for (const j of rows) {
    if (!j.worker) continue;
    if (j.metered) {
      const w = get(j.worker);
      w.delivered++;
      if ((j.created_at ?? 0) >= since) {
        w.metered += j.price ?? 0;
        w.jobs24++;
      }
    } else if (j.state === 'error') {
      get(j.worker).failed++;
    }
  }
  for (const r of state.receipts.values()) {
    const req = state.requests.get(r.request);
    if (r.created_at < since || !req || req.customer !== r.signer) continue;
    const w = get(r.worker);
    w.receipts++;
    if (r.opens) w.paid += r.amount ?? 0;
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
      const up = online(w, t);
      const s = stats.get(w.pubkey);
      const seen = s ? s.delivered + s.failed : 0;
      const trust = seen ? `${Math.round((100 * s.delivered) / seen)}%` : '–';
      const tr = el(
        'tr',
        up ? 'worker' : 'worker offline',
        el('td', null, el('span', 'name', clip(w.name || 'unnamed', 48)), el('small', 'mono', shortNpub(w.pubkey)), w.fedai ? null : el('small', null, 'NIP-90 DVM')),
        el('td', null, ...w.models.map((m) => el('div', 'model', clip(m.id, 40), el('small', null, [m.ctx ? `${fmt(m.ctx)} ctx` : '', clip(m.quant, 12)].filter(Boolean).join(' · '))))),
        el('td', 'mono', ...w.models.map((m) => {
          const p = w.prices.get(m.id);
          return el('div', null, p ? `${fmt(p[0])} + ${fmt(p[1])}/${fmt(p[2])}` : '–');
        })),
        el('td', null, w.capacity ? `${fmt(w.capacity.busy)}/${fmt(w.capacity.max)} busy` : '–', w.capacity ? el('small', null, `queue ${fmt(w.capacity.queue)}`) : null),
        el('td', null, w.hardware || '–'),
        el('td', null, clip(w.runner, 16) || '–', w.health ? el('small', w.health === 'ok' ? 'ok' : 'warn', clip(w.health, 12)) : null),
        el('td', null, clip(w.mode, 12) || '–', el('small', null, w.payment.map((p) => clip(p, 12)).join(', '))),
        el('td', 'trust', trust, s ? el('small', null, `${s.delivered} delivered, ${s.failed} failed`) : null),
        el('td', null, ago(w.created_at), up ? null : el('small', 'bad', 'ad expired')),
      );
      tr.title = npub(w.pubkey);
      return tr;
    }),
  );
  $('workers-empty').hidden = rows.length > 0;
  $('stat-workers').textContent = rows.filter((w) => online(w, t)).length;
}

function renderJobs(rows) {
  const body = $('jobs').tBodies[0];
  body.replaceChildren(
    ...rows.slice(0, SHOWN_JOBS).map((j) =>
      el(
        'tr',
        'job',
        el('td', null, j.created_at ? clock(j.created_at) : '–'),
        el('td', 'mono', j.id.slice(0, 10) + '…', el('small', null, j.req ? `kind ${j.req.kind}` : 'request not seen')),
        el('td', null, clip(j.model, 40) || '–'),
        el('td', `state state-${j.state}`, j.state, j.code ? el('small', null, j.code) : null),
        j.worker ? workerCell(j.worker) : el('td', null, '–'),
        el('td', null, j.latency ?? '–'),
        el('td', null, j.tokens ? `${fmt(j.tokens[0])} / ${fmt(j.tokens[1])}` : '–'),
        el('td', null, j.price == null ? '–' : fmt(j.price), j.metered ? el('small', 'ok', 'signed metering') : null),
      ),
    ),
  );
  const t = now();
  const recent = rows.filter((j) => j.created_at && j.created_at > t - HOUR);
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

function renderCharts(rows) {
  const t = now();
  const minutes = Array.from({ length: 30 }, () => [0, 0]);
  const hours = Array.from({ length: 24 }, () => [0, 0]);
  for (const j of rows) {
    if (!j.created_at) continue;
    const i = 29 - Math.floor((t - j.created_at) / 60);
    if (i >= 0 && i <= 29) {
      minutes[i][0]++;
      if (j.state === 'error') minutes[i][1]++;
    }
    const h = 23 - Math.floor((t - j.created_at) / HOUR);
    if (j.metered && h >= 0 && h <= 23) hours[h][0] += (j.price ?? 0) / 1000;
  }
  bars($('chart-jobs'), minutes, ['30 min ago', 'now']);
  bars($('chart-money'), hours, ['24 h ago', 'now']);
}

function renderMoney(stats) {
  const body = $('money').tBodies[0];
  const rows = [...stats.entries()].filter(([, s]) => s.delivered || s.receipts).sort((a, b) => b[1].metered - a[1].metered);
  body.replaceChildren(
    ...rows.map(([pk, s]) =>
      el(
        'tr',
        'earner',
        workerCell(pk),
        el('td', 'metered', fmt(s.metered), el('small', null, `${s.jobs24} jobs`)),
        el('td', 'receipts', `${s.receipts}`, s.receipts ? el('small', s.unproven ? 'bad' : 'ok', s.unproven ? `${s.unproven} without a valid preimage` : 'preimages open their hashes') : null),
        el('td', 'paid', fmt(s.paid)),
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
  indexMetering();
  const ids = new Set([...state.requests.keys(), ...state.results.keys(), ...state.feedback.keys()]);
  const rows = [...ids].map(jobRow).sort((a, b) => (b.created_at ?? 0) - (a.created_at ?? 0));
  const stats = perWorker(rows);
  renderWorkers(stats);
  renderJobs(rows);
  renderMoney(stats);
  renderCharts(rows);
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
  // This relay, under whatever path a reverse proxy serves it.
  return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + location.pathname;
}

const RELAY = relayUrl();
let relayHost = null;
try {
  relayHost = new URL(RELAY).host;
} catch { /* reported by connect() */ }
/** Whether the relay is the one serving this page (its /metrics is then ours to read). */
const SAME_ORIGIN = relayHost === location.host;

function filters(since) {
  const t = now();
  const from = (s) => Math.max(s, since ?? 0);
  return [
    { kinds: [K.AD], '#k': [String(K.REQUEST)], limit: MAX_WORKERS },
    { kinds: [K.REQUEST], since: from(t - 24 * HOUR), limit: MAX_JOBS },
    // Each kind its own limit: streamed partials (kind 7000) must not crowd out results.
    { kinds: [K.RESULT], since: from(t - 24 * HOUR), limit: 1000 },
    { kinds: [K.FEEDBACK], since: from(t - HOUR), limit: 2000 },
    { kinds: [K.METERING], since: from(t - 24 * HOUR), limit: 2000 },
    { kinds: [K.RECEIPT], since: from(t - 24 * HOUR), limit: 1000 },
  ];
}

let backoff = 1000;
let socket = null;
function setConn(text, cls) {
  const conn = $('conn-state');
  conn.textContent = text;
  conn.className = `pill ${cls}`;
}

function connect() {
  setConn('connecting', '');
  let ws;
  try {
    ws = new WebSocket(RELAY);
  } catch {
    setConn(location.protocol === 'https:' && RELAY.startsWith('ws:') ? 'ws:// refused from an https page' : 'bad relay URL', 'closed');
    return;
  }
  socket = ws;
  // After a reconnect or a CLOSED, ask only for what is newer than what we have (a minute of
  // overlap for clocks; duplicates are dropped by id).
  const subscribe = () => ws.send(JSON.stringify(['REQ', 'dash', ...filters(state.newest ? state.newest - 60 : 0)]));
  ws.onopen = () => {
    backoff = 1000;
    setConn('live', 'open');
    subscribe();
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
      scheduleRender();
      return;
    }
    if (!Array.isArray(msg)) return;
    if (msg[0] === 'EVENT' && msg[1] === 'dash') {
      onEvent(msg[2]);
      scheduleRender();
    } else if (msg[0] === 'CLOSED' && msg[1] === 'dash') {
      // A relay cuts a slow reader's subscription ("resubscribe with since"): do, after a pause.
      setConn(`resubscribing: ${clip(msg[2], 60)}`, 'closed');
      setTimeout(() => {
        if (socket === ws && ws.readyState === WebSocket.OPEN) {
          setConn('live', 'open');
          subscribe();
        }
      }, backoff);
      backoff = Math.min(backoff * 2, 30000);
    }
  };
  ws.onclose = () => {
    if (socket !== ws) return;
    setConn(`reconnecting in ${backoff / 1000} s`, 'closed');
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
    if (accepted != null && lastAccepted && accepted >= lastAccepted[0]) {
      $('stat-eps').textContent = ((accepted - lastAccepted[0]) / ((at - lastAccepted[1]) / 1000)).toFixed(1);
    }
    lastAccepted = accepted == null ? null : [accepted, at];
    $('stat-conns').textContent = fmt(sum('fedai_relay_connections'));
    const stored = sum('fedai_relay_stored_events');
    const bytes = sum('fedai_relay_store_bytes');
    const size = (bytes ?? 0) < 1048576 ? `${fmt((bytes ?? 0) / 1024)} KiB` : `${fmt(bytes / 1048576)} MiB`;
    // The relay recounts its events every 10 s; its bytes move with every store.
    $('stat-stored').textContent = stored == null ? '–' : `${fmt(stored)} ev · ${size}`;
  } catch {
    /* metrics are optional */
  }
}

// ---- start -------------------------------------------------------------------------------

function theme() {
  let saved = null;
  try {
    saved = localStorage.getItem('fedai-theme');
  } catch { /* site data blocked: follow the system */ }
  if (saved === 'light' || saved === 'dark') document.documentElement.dataset.theme = saved;
  $('theme').onclick = () => {
    const dark = getComputedStyle(document.documentElement).getPropertyValue('--bg').trim() === '#15161a';
    const next = dark ? 'light' : 'dark';
    document.documentElement.dataset.theme = next;
    try {
      localStorage.setItem('fedai-theme', next);
    } catch { /* not kept */ }
  };
}

theme();
$('relay-url').value = RELAY;
$('relay-info').textContent = `Relay: ${RELAY}`;
if (!SAME_ORIGIN) {
  // Another relay's market under this server's name: say whose it is, prominently.
  $('foreign').hidden = false;
  $('foreign-url').textContent = RELAY;
}
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
  skipped: state.skipped,
  workers: state.workers.size,
  jobs: state.requests.size,
  error: renderError,
});
