// Imports a directory with Helia's UnixFS importer (ipfs-unixfs-importer) under a named
// IPIP-0499 profile and prints the root CID: the independent implementation `cidboot pack
// --profile` is compared against.
//
// node unixfs_import.mjs IMPORTER_INDEX_JS DIR PROFILE
// Dotfiles are left out and empty directories kept, as both IPIP-0499 profiles say.
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

const [index, dir, profile] = process.argv.slice(2)
const { importer } = await import(pathToFileURL(index).href)

function * walk (base, rel) {
  for (const name of readdirSync(join(base, rel))) {
    if (name.startsWith('.')) continue
    const path = rel === '' ? name : `${rel}/${name}`
    const st = statSync(join(base, path))
    if (st.isDirectory()) {
      yield { path }
      yield * walk(base, path)
    } else {
      yield { path, content: readFileSync(join(base, path)) }
    }
  }
}

// Blocks are not kept: only the CIDs are wanted.
const blockstore = { put: async (cid) => cid }
let root
for await (const entry of importer(walk(dir, ''), blockstore, { profile, wrapWithDirectory: true })) {
  root = entry
}
process.stdout.write(`${root.cid.toString()}\n`)
