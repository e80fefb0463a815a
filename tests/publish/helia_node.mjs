// An IPFS node's HTTP face for the tests, built on Helia (an IPFS implementation independent of
// cidboot): Helia's blockstore (blockstore-core, in memory, no networking) filled and read by
// @helia/car, behind
//   - kubo's RPC `POST /api/v0/dag/import` (multipart, as kubo takes it; its JSON lines with
//     Root and PinErrorMsg; roots pinned: the whole DAG under each must be present);
//   - the IPFS Pinning Service API (`POST /pins` with `origins`, `GET /pins/{id}`, `GET /pins`),
//     pinning by CID from the origins' trustless gateways, or ending `failed` with the reason;
//   - a trustless gateway of what it holds (`/ipfs/{cid}`, `format=raw`, and `format=car`
//     with `dag-scope=all|entity|block` and `entity-bytes`, exported by @helia/car).
// Every block taken in, by import or from an origin, is checked against its CID's sha2-256.
// Prints {"url": …} on stdout once it listens, then one {"request": "METHOD PATH"} line a
// request.
//
//     node helia_node.mjs --token TOKEN [--max-body BYTES]
//
// Run with HELIA_MODULES=<the prefix setup-tools.sh installs Helia into>/node_modules.
import { createReadStream, createWriteStream, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { pathToFileURL } from 'node:url'

// ES modules do not read NODE_PATH: each package is resolved in HELIA_MODULES (the
// node_modules setup-tools.sh installs Helia into) through its package.json's exports.
const modules = process.env.HELIA_MODULES
function pick (e) {
  if (typeof e === 'string') return e
  for (const k of ['node', 'import', 'default']) if (e?.[k] != null) return pick(e[k])
  return null
}
const load = async (spec) => {
  const parts = spec.split('/')
  const n = spec.startsWith('@') ? 2 : 1
  const dir = join(modules, ...parts.slice(0, n))
  const sub = parts.length > n ? `./${parts.slice(n).join('/')}` : '.'
  const pj = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
  const file = pick(pj.exports?.[sub] ?? (sub === '.' ? pj.exports : null)) ?? pj.module ?? pj.main
  if (file == null) throw new Error(`${spec}: not found in ${modules}`)
  return import(pathToFileURL(join(dir, file)).href)
}
const { car: heliaCar, BlockExporter, SubgraphExporter, UnixFSExporter } = await load('@helia/car')
const { MemoryBlockstore } = await load('blockstore-core')
const { CarBlockIterator } = await load('@ipld/car')
const { CID } = await load('multiformats/cid')
const { sha256 } = await load('multiformats/hashes/sha2')
const raw = await load('multiformats/codecs/raw')
const dagPb = await load('@ipld/dag-pb')
const dagCbor = await load('@ipld/dag-cbor')
const { defaultLogger } = await load('@libp2p/logger')

const args = process.argv.slice(2)
const arg = (name, dflt) => {
  const i = args.indexOf(name)
  return i >= 0 ? args[i + 1] : dflt
}
const TOKEN = arg('--token')
const MAX_BODY = Number(arg('--max-body', String(8 * 2 ** 30)))
const work = mkdtempSync(join(tmpdir(), 'helia-node-'))
process.on('exit', () => rmSync(work, { recursive: true, force: true }))
for (const s of ['SIGINT', 'SIGTERM']) process.on(s, () => process.exit(0))

const codecs = { [raw.code]: raw, [dagPb.code]: dagPb, [dagCbor.code]: dagCbor }
const blockstore = new MemoryBlockstore()
const car = heliaCar({
  blockstore,
  logger: defaultLogger(),
  getCodec: async (code) => {
    const c = codecs[code]
    if (c == null) throw new Error(`no codec 0x${code.toString(16)}`)
    return c
  }
})

// Each block of `blocks` checked against its CID before Helia stores it.
async function * verified (blocks) {
  for await (const { cid, bytes } of blocks) {
    if (cid.multihash.code !== sha256.code) {
      throw new Error(`block ${cid}: not sha2-256`)
    }
    const digest = await sha256.digest(bytes)
    if (!equal(digest.digest, cid.multihash.digest)) {
      throw new Error(`block ${cid} does not hash to its CID`)
    }
    yield { cid, bytes }
  }
}

function equal (a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

// Imports a CAR stream into the blockstore; returns its roots.
async function importCar (stream) {
  const reader = await CarBlockIterator.fromIterable(stream)
  const roots = await reader.getRoots()
  await car.import({ blocks: () => verified(reader) })
  return roots
}

// Pins `cid` recursively: every block under it must be in the blockstore.
async function pinRecursive (cid) {
  for await (const b of car.export(cid, { exporter: new SubgraphExporter(), offline: true })) void b
}

function json (res, status, v, extra = {}) {
  const body = JSON.stringify(v)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...extra })
  res.end(body)
}

function authorized (req) {
  return req.headers.authorization === `Bearer ${TOKEN}`
}

// Refuses what was sent beyond the limit, then drains it so that the client reads the answer.
function tooLarge (req, res, size) {
  req.resume()
  json(res, 413, { Message: `request body of ${size} bytes exceeds the ${MAX_BODY}-byte limit`, Code: 0, Type: 'error' }, { connection: 'close' })
}

// kubo's dag/import: the first file part of the multipart body is the CAR.
async function dagImport (req, res) {
  const m = /boundary=("?)([^";]+)\1/.exec(req.headers['content-type'] || '')
  if (m == null) return json(res, 400, { Message: 'not a multipart body', Code: 0, Type: 'error' })
  const size = Number(req.headers['content-length'] ?? NaN)
  if (!(size <= MAX_BODY)) return tooLarge(req, res, size)
  const body = join(work, `body-${Date.now()}-${Math.random()}`)
  await pipeline(req, createWriteStream(body))
  try {
    const fh = await open(body)
    const head = Buffer.alloc(Math.min(8192, size))
    await fh.read(head, 0, head.length, 0)
    const tail = Buffer.alloc(Math.min(512, size))
    await fh.read(tail, 0, tail.length, size - tail.length)
    await fh.close()
    const start = head.indexOf('\r\n\r\n')
    const close = tail.lastIndexOf(`\r\n--${m[2]}--`)
    if (!head.toString('latin1').startsWith(`--${m[2]}\r\n`) || start < 0 || close < 0) {
      return json(res, 400, { Message: 'malformed multipart body', Code: 0, Type: 'error' })
    }
    const end = size - tail.length + close
    let roots
    try {
      roots = await importCar(createReadStream(body, { start: start + 4, end: end - 1 }))
    } catch (e) {
      return json(res, 500, { Message: `importing the CAR: ${e.message}`, Code: 0, Type: 'error' })
    }
    const lines = []
    for (const root of roots) {
      let err = ''
      try { await pinRecursive(root) } catch (e) { err = `the DAG under ${root} is incomplete: ${e.message}` }
      lines.push(JSON.stringify({ Root: { Cid: { '/': root.toString() }, PinErrorMsg: err } }))
    }
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(lines.join('\n') + '\n')
  } finally {
    rmSync(body, { force: true })
  }
}

const pins = new Map()

// /ip4/IP/tcp/PORT/http or /dns4|dns/HOST/tcp/PORT/http(s): a trustless gateway's URL.
function gatewayOf (maddr) {
  const p = maddr.split('/')
  if (p.length === 6 && p[0] === '' && ['ip4', 'dns4', 'dns'].includes(p[1]) && p[3] === 'tcp' && ['http', 'https'].includes(p[5])) {
    return `${p[5]}://${p[2]}:${p[4]}`
  }
  return null
}

// The provider's work on a pin: the DAG fetched from an origin as a CAR, every block verified,
// then pinned; `failed` with the reason otherwise.
async function fetchPin (id) {
  const p = pins.get(id)
  await new Promise(resolve => setTimeout(resolve, 300))
  p.status = 'pinning'
  const cid = CID.parse(p.pin.cid)
  let why = `no origin had ${cid}`
  for (const o of p.pin.origins ?? []) {
    const gw = gatewayOf(o)
    if (gw == null) { why = `origin ${o}: not an /ip4/…/tcp/…/http address`; continue }
    try {
      const r = await fetch(`${gw}/ipfs/${cid}?format=car&dag-scope=all`, { headers: { accept: 'application/vnd.ipld.car' } })
      if (!r.ok) { why = `origin ${o} did not serve ${cid} (HTTP ${r.status})`; continue }
      const roots = await importCar(r.body)
      if (!roots.some(r => r.equals(cid))) { why = `origin ${o} served a CAR of ${roots.join(', ')}`; continue }
      await pinRecursive(cid)
      p.status = 'pinned'
      return
    } catch (e) {
      why = `origin ${o}: ${e.message}`
    }
  }
  p.status = 'failed'
  p.info = { status_details: why }
}

async function readJson (req, max) {
  let body = ''
  for await (const c of req) {
    body += c
    if (body.length > max) throw new Error('body too large')
  }
  return JSON.parse(body)
}

async function pinningApi (req, res, path) {
  if (!authorized(req)) {
    return json(res, 401, { error: { reason: 'UNAUTHORIZED', details: 'the access token is not valid' } })
  }
  if (req.method === 'POST' && path === '/pins') {
    let pin
    try {
      pin = await readJson(req, 65536)
      CID.parse(pin.cid)
    } catch (e) {
      return json(res, 400, { error: { reason: 'BAD_REQUEST', details: e.message } })
    }
    const id = `pin-${pins.size + 1}-${Math.floor(Math.random() * 1e9)}`
    pins.set(id, { requestid: id, status: 'queued', created: new Date().toISOString(), pin, delegates: [], info: {} })
    json(res, 202, pins.get(id))
    fetchPin(id)
    return
  }
  if (req.method === 'GET' && path === '/pins') {
    const results = [...pins.values()]
    return json(res, 200, { count: results.length, results })
  }
  const m = /^\/pins\/([A-Za-z0-9._-]+)$/.exec(path)
  if (req.method === 'GET' && m != null) {
    const p = pins.get(m[1])
    return p == null ? json(res, 404, { error: { reason: 'NOT_FOUND' } }) : json(res, 200, p)
  }
  json(res, 404, { error: { reason: 'NOT_FOUND', details: `no ${req.method} ${path}` } })
}

// The trustless gateway over Helia's blockstore.
async function gateway (req, res, url) {
  const m = /^\/ipfs\/([^/]+)\/?$/.exec(url.pathname)
  let cid
  try { cid = CID.parse(m?.[1] ?? '') } catch { return res.writeHead(400).end('not a CID path') }
  const accept = req.headers.accept || ''
  const format = url.searchParams.get('format') ||
    (accept.includes('application/vnd.ipld.car') ? 'car' : accept.includes('application/vnd.ipld.raw') ? 'raw' : '')
  if (!(await blockstore.has(cid))) return res.writeHead(404).end(`${cid} not found`)
  if (format === 'raw') {
    const chunks = []
    for await (const c of blockstore.get(cid)) chunks.push(c)
    const data = Buffer.concat(chunks)
    res.writeHead(200, { 'content-type': 'application/vnd.ipld.raw', 'content-length': data.length })
    return res.end(data)
  }
  if (format !== 'car') return res.writeHead(406).end('ask for format=raw or format=car')
  const scope = url.searchParams.get('dag-scope') || 'all'
  const bytes = url.searchParams.get('entity-bytes')
  let exporter
  if (scope === 'block') exporter = new BlockExporter()
  else if (scope === 'all') exporter = new SubgraphExporter()
  else if (scope === 'entity') {
    const opts = { listingOnly: true }
    if (bytes != null) {
      const r = /^(\d+):(\d+|\*)$/.exec(bytes)
      if (r == null) return res.writeHead(400).end(`entity-bytes ${bytes}: only FROM:TO and FROM:* are served`)
      opts.offset = Number(r[1])
      if (r[2] !== '*') opts.length = Number(r[2]) - opts.offset + 1
    }
    exporter = new UnixFSExporter(opts)
  } else return res.writeHead(400).end(`unknown dag-scope ${scope}`)
  res.writeHead(200, { 'content-type': 'application/vnd.ipld.car; version=1; order=dfs; dups=y' })
  try {
    for await (const chunk of car.export(cid, { exporter, offline: true })) {
      if (!res.write(chunk)) await new Promise(resolve => res.once('drain', resolve))
    }
    res.end()
  } catch (e) {
    // The status is sent: cut the body, so that the client sees an incomplete CAR.
    res.destroy(e)
  }
}

const server = createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x')
  console.log(JSON.stringify({ request: `${req.method} ${req.url}` }))
  try {
    if (url.pathname.startsWith('/ipfs/')) return await gateway(req, res, url)
    if (url.pathname === '/pins' || url.pathname.startsWith('/pins/')) return await pinningApi(req, res, url.pathname)
    if (!authorized(req)) {
      req.resume()
      return json(res, 401, { Message: 'invalid bearer token', Code: 0, Type: 'error' })
    }
    if (req.method === 'POST' && url.pathname === '/api/v0/dag/import') return await dagImport(req, res)
    res.writeHead(404).end('no such endpoint')
  } catch (e) {
    if (!res.headersSent) json(res, 500, { Message: e.message, Code: 0, Type: 'error' })
    else res.destroy(e)
  }
})
server.requestTimeout = 0
server.listen(0, '127.0.0.1', () => {
  console.log(JSON.stringify({ url: `http://127.0.0.1:${server.address().port}` }))
})
