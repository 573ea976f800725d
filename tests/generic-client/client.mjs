#!/usr/bin/env node
// An independent NIP-90 (Data Vending Machine) customer built only on the
// public API of nostr-tools. It knows nothing about fed_AI: the integration
// tests drive it as a subprocess to prove that a generic Nostr client can buy
// jobs from our worker. Every event it sees is reported as one JSON line on
// stdout; diagnostics go to stderr.
//
// Usage:
//   node client.mjs --relay ws://HOST:PORT [--relay ...] --sk <64-hex> <command> [options]
//
// Commands and exit codes: see usage() below and README.md.

import WebSocket from 'ws'
import { finalizeEvent, verifyEvent, getPublicKey } from 'nostr-tools/pure'
import { Relay, useWebSocketImplementation } from 'nostr-tools/relay'
import * as nip04 from 'nostr-tools/nip04'
import * as nip44 from 'nostr-tools/nip44'

// Node 20 has no global WebSocket; nostr-tools needs one handed to it.
useWebSocketImplementation(WebSocket)

const EXIT_OK = 0
const EXIT_FAILURE = 1 // unexpected error, e.g. no relay reachable
const EXIT_USAGE = 2
const EXIT_JOB_ERROR = 3 // the DVM sent an `error` feedback
const EXIT_TIMEOUT = 4 // no result in time / event not found
const EXIT_REJECTED = 5 // job request accepted by no relay

const INPUT_TYPES = ['text', 'prompt', 'url', 'event', 'job']
const HEX64 = /^[0-9a-f]{64}$/

function usage() {
  return `usage: node client.mjs --relay URL [--relay URL ...] --sk HEX64 <command> [options]

commands:
  job     publish a NIP-90 job request and follow it until a result
          --kind N                 request kind (default 5050; result is N+1000)
          --input DATA             repeatable; ["i", DATA, TYPE(, RELAY)]
            --input-type TYPE      for the preceding --input: ${INPUT_TYPES.join('|')} (default text)
            --input-relay URL      for the preceding --input
          --param NAME=VALUE       repeatable; ["param", NAME, VALUE]
          --p HEX64                repeatable; ["p", HEX64]
          --bid MSAT               ["bid", MSAT]
          --relays URL1,URL2       ["relays", URL1, URL2]
          --output MIME            ["output", MIME]
          --expiration SECS        NIP-40 ["expiration", now+SECS]
          --encrypt nip04|nip44    encrypt i/param tags to the first --p key
          --timeout-ms N           give up after N ms (default 60000)
  delete  publish a NIP-09 deletion: --id HEX64 [--with-k]
  fetch   look an event up by id: --id HEX64 [--timeout-ms N (default 5000)]

exit codes: 0 done, 1 failure, 2 bad arguments, 3 error feedback,
            4 timeout / not found, 5 request accepted by no relay`
}

class UsageError extends Error {}
class NoRelayError extends Error {}

// ---------------------------------------------------------------- output

function emit(obj) {
  // console.log writes synchronously to pipes and files on Linux, so every
  // line reaches the test as soon as it is printed.
  console.log(JSON.stringify(obj))
}

function warn(msg) {
  process.stderr.write(`generic-client: ${msg}\n`)
}

let openRelays = []
let finishing = false

// Close every relay, then exit once stdout has been flushed.
function finish(code) {
  finishing = true
  for (const relay of openRelays) {
    try {
      relay.close()
    } catch {
      // closing an already broken connection is not worth reporting
    }
  }
  process.stdout.write('', () => process.exit(code))
}

// ---------------------------------------------------------------- arguments

function hexToBytes(hex) {
  const out = new Uint8Array(hex.length / 2)
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16)
  return out
}

function parseIntArg(name, value, { min = -Infinity } = {}) {
  if (!/^-?\d+$/.test(value ?? '')) throw new UsageError(`${name} needs an integer, got ${JSON.stringify(value)}`)
  const n = Number(value)
  if (!Number.isSafeInteger(n) || n < min) throw new UsageError(`${name} out of range: ${value}`)
  return n
}

function parseHex64(name, value) {
  const v = (value ?? '').toLowerCase()
  if (!HEX64.test(v)) throw new UsageError(`${name} needs 64 hex characters, got ${JSON.stringify(value)}`)
  return v
}

// Global options (--relay, --sk) may stand anywhere; the first bare word is
// the command and everything else belongs to it.
function parseArgs(argv) {
  const opts = {
    relays: [],
    sk: null,
    command: null,
    kind: 5050,
    inputs: [],
    params: [],
    p: [],
    bid: null,
    relaysTag: null,
    output: null,
    expiration: null,
    encrypt: null,
    timeoutMs: null,
    id: null,
    withK: false,
  }
  const flags = new Set(['--with-k', '--help', '-h'])
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (!arg.startsWith('-')) {
      if (opts.command !== null) throw new UsageError(`unexpected argument ${JSON.stringify(arg)}`)
      opts.command = arg
      continue
    }
    let value
    if (!flags.has(arg)) {
      if (i + 1 >= argv.length) throw new UsageError(`${arg} needs a value`)
      value = argv[++i]
    }
    switch (arg) {
      case '--help':
      case '-h':
        opts.command = 'help'
        break
      case '--relay':
        if (!/^wss?:\/\//.test(value)) throw new UsageError(`--relay needs a ws:// or wss:// URL, got ${JSON.stringify(value)}`)
        if (!opts.relays.includes(value)) opts.relays.push(value)
        break
      case '--sk':
        opts.sk = parseHex64('--sk', value)
        break
      case '--kind':
        opts.kind = parseIntArg('--kind', value, { min: 0 })
        if (opts.kind > 65535) throw new UsageError(`--kind out of range: ${value}`)
        break
      case '--input':
        opts.inputs.push({ data: value, type: 'text', relay: null })
        break
      case '--input-type': {
        const last = opts.inputs.at(-1)
        if (!last) throw new UsageError('--input-type must follow an --input')
        if (!INPUT_TYPES.includes(value)) throw new UsageError(`--input-type must be one of ${INPUT_TYPES.join('|')}`)
        last.type = value
        break
      }
      case '--input-relay': {
        const last = opts.inputs.at(-1)
        if (!last) throw new UsageError('--input-relay must follow an --input')
        last.relay = value
        break
      }
      case '--param': {
        const eq = value.indexOf('=')
        if (eq <= 0) throw new UsageError(`--param needs NAME=VALUE, got ${JSON.stringify(value)}`)
        opts.params.push([value.slice(0, eq), value.slice(eq + 1)])
        break
      }
      case '--p':
        opts.p.push(parseHex64('--p', value))
        break
      case '--bid':
        opts.bid = String(parseIntArg('--bid', value, { min: 0 }))
        break
      case '--relays':
        opts.relaysTag = value.split(',').filter(s => s !== '')
        if (opts.relaysTag.length === 0) throw new UsageError('--relays needs at least one URL')
        break
      case '--output':
        opts.output = value
        break
      case '--expiration':
        // Negative values are allowed on purpose: tests send already-expired requests.
        opts.expiration = parseIntArg('--expiration', value)
        break
      case '--encrypt':
        if (value !== 'nip04' && value !== 'nip44') throw new UsageError('--encrypt must be nip04 or nip44')
        opts.encrypt = value
        break
      case '--timeout-ms':
        opts.timeoutMs = parseIntArg('--timeout-ms', value, { min: 1 })
        break
      case '--id':
        opts.id = parseHex64('--id', value)
        break
      case '--with-k':
        opts.withK = true
        break
      default:
        throw new UsageError(`unknown option ${arg}`)
    }
  }
  if (opts.command === 'help') return opts
  if (!['job', 'delete', 'fetch'].includes(opts.command)) {
    throw new UsageError(opts.command === null ? 'missing command' : `unknown command ${JSON.stringify(opts.command)}`)
  }
  if (opts.relays.length === 0) throw new UsageError('at least one --relay is required')
  if (opts.sk === null) throw new UsageError('--sk is required')
  if ((opts.command === 'delete' || opts.command === 'fetch') && opts.id === null) {
    throw new UsageError(`${opts.command} needs --id`)
  }
  if (opts.encrypt && opts.p.length === 0) throw new UsageError('--encrypt needs a --p key to encrypt to')
  return opts
}

// ---------------------------------------------------------------- crypto

// NIP-90 leaves the scheme to the request; a NIP-04 payload always carries
// "?iv=", a NIP-44 v2 payload is plain base64 and never does.
function decryptFrom(sk, pubkey, content) {
  if (content.includes('?iv=')) return nip04.decrypt(sk, pubkey, content)
  return nip44.v2.decrypt(content, nip44.v2.utils.getConversationKey(sk, pubkey))
}

function encryptTo(scheme, sk, pubkey, plaintext) {
  if (scheme === 'nip04') return nip04.encrypt(sk, pubkey, plaintext)
  return nip44.v2.encrypt(plaintext, nip44.v2.utils.getConversationKey(sk, pubkey))
}

// Returns the fields shared by feedback and result lines for the content:
// decrypted when the event carries ["encrypted"], untouched otherwise.
function readContent(sk, event) {
  const encrypted = event.tags.some(t => t[0] === 'encrypted')
  if (!encrypted) return { content: event.content, encrypted: false }
  try {
    return { content: decryptFrom(sk, event.pubkey, event.content), encrypted: true }
  } catch (err) {
    // Report rather than drop: a test wants to see a DVM that encrypts wrongly.
    return { content: event.content, encrypted: true, decrypt_error: String(err?.message ?? err) }
  }
}

// ---------------------------------------------------------------- relays

async function connectAll(urls) {
  const results = await Promise.allSettled(urls.map(url => Relay.connect(url, { timeout: 5000 })))
  const relays = []
  results.forEach((r, i) => {
    if (r.status === 'fulfilled') {
      const relay = r.value
      // Our relay may be slow under a loaded test machine; the default is 4.4 s.
      relay.publishTimeout = 15000
      relay.onclose = () => finishing || warn(`connection to ${relay.url} closed`)
      relay.onnotice = msg => warn(`NOTICE from ${relay.url}: ${msg}`)
      relays.push(relay)
    } else {
      warn(`cannot connect to ${urls[i]}: ${r.reason?.message ?? r.reason}`)
    }
  })
  if (relays.length === 0) throw new NoRelayError('no relay reachable')
  openRelays = relays
  return relays
}

// Publishes to every relay and prints one ok line per relay.
// Resolves to true when at least one relay accepted the event.
async function publishAll(relays, event) {
  const results = await Promise.all(
    relays.map(relay =>
      relay.publish(event).then(
        message => ({ accepted: true, message: message ?? '' }),
        err => ({ accepted: false, message: String(err?.message ?? err) }),
      ),
    ),
  )
  results.forEach((r, i) => emit({ type: 'ok', relay: relays[i].url, id: event.id, ...r }))
  return results.some(r => r.accepted)
}

// Subscribes on every relay with one shared handler and waits for EOSE from all
// of them (nostr-tools fires oneose on its own EOSE timeout too), so that the
// REQ is surely in place before anything is published.
// Events are deduplicated by id across relays.
function subscribeAll(relays, filter, onEvent) {
  const seen = new Set()
  const subs = []
  const eoses = relays.map(
    relay =>
      new Promise(resolve => {
        subs.push(
          relay.subscribe([filter], {
            onevent(event) {
              if (seen.has(event.id)) return
              seen.add(event.id)
              // Relay already checks signatures with this very function; asking
              // again keeps the guarantee explicit here.
              if (!verifyEvent(event)) {
                emit({ type: 'invalid', id: event.id ?? null, relay: relay.url, reason: 'bad id or signature' })
                return
              }
              onEvent(event, relay)
            },
            oninvalidevent(event) {
              // nostr-tools routes events that fail verifyEvent (or do not
              // match our filter) here instead of to onevent.
              let reason = 'bad id or signature'
              try {
                if (verifyEvent(event)) reason = 'does not match the subscription'
              } catch {
                reason = 'malformed event'
              }
              emit({ type: 'invalid', id: event?.id ?? null, relay: relay.url, reason })
            },
            oneose: resolve,
            onclose: reason => finishing || warn(`subscription on ${relay.url} closed: ${reason}`),
          }),
        )
      }),
  )
  return { subs, eose: Promise.all(eoses) }
}

// ---------------------------------------------------------------- commands

function firstTagValue(event, ...names) {
  const tag = event.tags.find(t => names.includes(t[0]))
  return tag?.[1] ?? null
}

function buildJobTags(opts, sk) {
  const privateTags = opts.inputs.map(({ data, type, relay }) =>
    relay === null ? ['i', data, type] : ['i', data, type, relay],
  )
  for (const [name, value] of opts.params) privateTags.push(['param', name, value])

  const publicTags = []
  if (opts.output !== null) publicTags.push(['output', opts.output])
  if (opts.bid !== null) publicTags.push(['bid', opts.bid])
  if (opts.relaysTag !== null) publicTags.push(['relays', ...opts.relaysTag])
  for (const p of opts.p) publicTags.push(['p', p])
  if (opts.expiration !== null) {
    publicTags.push(['expiration', String(Math.floor(Date.now() / 1000) + opts.expiration)])
  }

  if (!opts.encrypt) return { tags: [...privateTags, ...publicTags], content: '' }
  // NIP-90 encrypted request: the i and param tags travel as a JSON array of
  // tag arrays in content, encrypted to the service provider; p stays public
  // so the provider can find the job.
  const content = encryptTo(opts.encrypt, sk, opts.p[0], JSON.stringify(privateTags))
  return { tags: [...publicTags, ['encrypted']], content }
}

function feedbackLine(sk, event) {
  const status = event.tags.find(t => t[0] === 'status')
  const amount = event.tags.find(t => t[0] === 'amount')
  return {
    type: 'feedback',
    id: event.id,
    pubkey: event.pubkey,
    status: status?.[1] ?? null,
    info: status?.[2] ?? null,
    amount: amount?.[1] ?? null,
    bolt11: amount?.[2] ?? null,
    lnurl: firstTagValue(event, 'lnurl', 'zap'),
    ...readContent(sk, event),
    tags: event.tags,
  }
}

function resultLine(sk, event) {
  const amount = event.tags.find(t => t[0] === 'amount')
  return {
    type: 'result',
    id: event.id,
    pubkey: event.pubkey,
    ...readContent(sk, event),
    amount: amount?.[1] ?? null,
    bolt11: amount?.[2] ?? null,
    tags: event.tags,
  }
}

async function runJob(opts, sk) {
  const { tags, content } = buildJobTags(opts, sk)
  const request = finalizeEvent(
    { kind: opts.kind, created_at: Math.floor(Date.now() / 1000), tags, content },
    sk,
  )
  const resultKind = opts.kind + 1000
  const timeoutMs = opts.timeoutMs ?? 60000

  const relays = await connectAll(opts.relays)

  // Lines for events that arrive before every relay has answered OK wait
  // here, so the output always reads request, ok..., then the job's events.
  let pending = []
  let done = false
  const handle = event => {
    if (done) return
    if (pending !== null) {
      pending.push(event)
      return
    }
    if (event.kind === 7000) {
      const line = feedbackLine(sk, event)
      emit(line)
      // payment-required is not final: the test pays out of band and the
      // job goes on, so only error ends the run here.
      if (line.status === 'error') {
        done = true
        finish(EXIT_JOB_ERROR)
      }
    } else if (event.kind === resultKind) {
      emit(resultLine(sk, event))
      done = true
      finish(EXIT_OK)
    }
  }

  const timer = setTimeout(() => {
    if (done) return
    done = true
    emit({ type: 'timeout' })
    finish(EXIT_TIMEOUT)
  }, timeoutMs)

  const { eose } = subscribeAll(relays, { kinds: [7000, resultKind], '#e': [request.id] }, handle)
  await eose

  emit({ type: 'request', id: request.id, event: request })
  const accepted = await publishAll(relays, request)
  if (!accepted) {
    done = true
    warn('the job request was accepted by no relay')
    finish(EXIT_REJECTED)
    return
  }
  const early = pending
  pending = null
  for (const event of early) handle(event)
}

async function runDelete(opts, sk) {
  const tags = [['e', opts.id]]
  if (opts.withK) tags.push(['k', '5050'])
  const deletion = finalizeEvent(
    { kind: 5, created_at: Math.floor(Date.now() / 1000), tags, content: '' },
    sk,
  )
  const relays = await connectAll(opts.relays)
  emit({ type: 'request', id: deletion.id, event: deletion })
  // Exit 0 even when refused: the ok line carries the verdict for the test.
  await publishAll(relays, deletion)
  finish(EXIT_OK)
}

async function runFetch(opts) {
  const relays = await connectAll(opts.relays)
  let done = false
  const timer = setTimeout(() => {
    if (done) return
    done = true
    emit({ type: 'not_found', id: opts.id })
    finish(EXIT_TIMEOUT)
  }, opts.timeoutMs ?? 5000)
  const { eose } = subscribeAll(relays, { ids: [opts.id] }, event => {
    if (done) return
    done = true
    clearTimeout(timer)
    emit({ type: 'event', event })
    finish(EXIT_OK)
  })
  // A stored event comes before EOSE; once every relay has said EOSE without
  // it, waiting longer would not find it.
  await eose
  if (done) return
  done = true
  clearTimeout(timer)
  emit({ type: 'not_found', id: opts.id })
  finish(EXIT_TIMEOUT)
}

// ---------------------------------------------------------------- main

async function main() {
  let opts, sk
  try {
    opts = parseArgs(process.argv.slice(2))
    if (opts.command === 'help') {
      console.log(usage())
      return finish(EXIT_OK)
    }
    sk = hexToBytes(opts.sk)
    getPublicKey(sk) // throws on a key outside the curve order
  } catch (err) {
    warn(err instanceof UsageError ? err.message : `bad --sk: ${err?.message ?? err}`)
    process.stderr.write(usage() + '\n')
    return finish(EXIT_USAGE)
  }
  try {
    if (opts.command === 'job') await runJob(opts, sk)
    else if (opts.command === 'delete') await runDelete(opts, sk)
    else await runFetch(opts)
  } catch (err) {
    // A stack trace only helps for a bug in this script, not for a dead relay.
    warn(err instanceof NoRelayError ? err.message : (err?.stack ?? String(err)))
    finish(EXIT_FAILURE)
  }
}

main()
