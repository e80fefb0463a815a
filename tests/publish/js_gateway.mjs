// A trustless gateway in JavaScript, independent of cidboot: it reads CARv1 files, checks
// every block's sha2-256 against its CID (node:crypto), and serves the blocks it holds as
// `format=raw` (application/vnd.ipld.raw). It refuses CAR responses (406), as a raw-only
// gateway does. Prints its URL on stdout once it listens.
//
//     node js_gateway.mjs CAR...
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:http'

function varint (buf, pos) {
  let n = 0; let shift = 0
  for (;;) {
    const b = buf[pos++]
    if (b === undefined) throw new Error('truncated varint')
    n += (b & 0x7f) * 2 ** shift
    if (b < 0x80) return [n, pos]
    shift += 7
  }
}

// A CIDv1's bytes and its sha2-256 digest, from `buf` at `pos`.
function cidAt (buf, pos) {
  const start = pos
  let version, codec, code, len
  ;[version, pos] = varint(buf, pos)
  if (version !== 1) throw new Error(`CID version ${version}`)
  ;[codec, pos] = varint(buf, pos)
  ;[code, pos] = varint(buf, pos)
  ;[len, pos] = varint(buf, pos)
  if (code !== 0x12 || len !== 32) throw new Error('not sha2-256')
  return [buf.subarray(start, pos + len), buf.subarray(pos, pos + len), pos + len]
}

const blocks = new Map()
for (const file of process.argv.slice(2)) {
  const buf = readFileSync(file)
  let [hlen, pos] = varint(buf, 0)
  pos += hlen
  while (pos < buf.length) {
    let len, cid, digest
    ;[len, pos] = varint(buf, pos)
    const end = pos + len
    ;[cid, digest, pos] = cidAt(buf, pos)
    const data = buf.subarray(pos, end)
    if (!createHash('sha256').update(data).digest().equals(digest)) {
      throw new Error(`${file}: a block does not hash to its CID`)
    }
    blocks.set(cid.toString('hex'), data)
    pos = end
  }
}

// RFC 4648 base32, lowercase, unpadded: the `b` multibase of CIDv1 strings.
function base32 (s) {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz234567'
  let bits = 0; let value = 0; const out = []
  for (const c of s) {
    const i = alphabet.indexOf(c)
    if (i < 0) return null
    value = (value << 5) | i; bits += 5
    if (bits >= 8) { out.push((value >>> (bits - 8)) & 0xff); bits -= 8 }
  }
  return Buffer.from(out)
}

const server = createServer((req, res) => {
  const url = new URL(req.url, 'http://x')
  const m = url.pathname.match(/^\/ipfs\/(b[a-z2-7]+)\/?$/)
  const accept = req.headers.accept || ''
  const format = url.searchParams.get('format') ||
    (accept.includes('application/vnd.ipld.car') ? 'car' : accept.includes('application/vnd.ipld.raw') ? 'raw' : '')
  if (!m) { res.writeHead(400).end('not a CID path'); return }
  if (format !== 'raw') { res.writeHead(406).end('only format=raw is served here'); return }
  const key = base32(m[1].slice(1))
  const data = key && blocks.get(key.toString('hex'))
  if (!data) { res.writeHead(404).end('block not found'); return }
  res.writeHead(200, { 'content-type': 'application/vnd.ipld.raw', 'content-length': data.length })
  res.end(data)
})
server.listen(0, '127.0.0.1', () => {
  console.log(`http://127.0.0.1:${server.address().port}`)
})
