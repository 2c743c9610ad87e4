#!/usr/bin/env node
// UnixFS CID oracle for Shoal's tests: computes the root CID that
// `ipfs add [--cid-version 1]` (Kubo v0.22 defaults) gives for a file or a
// directory, using the `ipfs-unixfs-importer` that ships inside js-ipfs
// 0.66.1 (installed by `scripts/setup.sh --test` into .deps/jsipfs/).
// Nothing is stored (onlyHash) and nothing touches the network.
//
// Protocol: one request per stdin line, `<mode> <absolute path>`:
//   v0  CIDv0, dag-pb leaves  (= `ipfs add`)
//   v1  CIDv1, raw leaves     (= `ipfs add --cid-version 1`)
// One stdout line per request: the root CID (v0: Qm..., v1: base32 b...),
// or `error: <why>`. `ready` goes to stderr once the modules are loaded.
// One-shot: `node jsipfs-oracle.mjs <mode> PATH...` prints one line per PATH.
//
// Kubo's behaviour that is reproduced here (checked against the real Kubo
// library through scripts/kubo-oracle.py, see scripts/README.md):
//  - fixed 262144-byte chunks, balanced layout, 174 links per node,
//    a single chunk becomes the root itself, no wrapping directory;
//  - a top-level symlink is followed; symlinks inside a directory become
//    UnixFS symlink nodes (target stored verbatim, dangling ones too);
//  - hidden files are included;
//  - a directory becomes a HAMT shard (fanout 256, murmur3-x64-64) when
//    sum(len(name) + len(cid bytes)) over its entries is >= 262144 bytes
//    (Kubo's Internal.UnixFSShardingSizeThreshold default 256KiB). The
//    importer's own rule (>1000 entries) is NOT Kubo's, so directories are
//    built here, bottom-up, and the importer is used for files and shards.
//
// Environment: SHOAL_JSIPFS_DIR (default <repo>/.deps/jsipfs).

import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import readline from 'node:readline'
import { fileURLToPath, pathToFileURL } from 'node:url'

const HERE = path.dirname(fileURLToPath(import.meta.url))
const DEPS = process.env.SHOAL_JSIPFS_DIR || path.join(HERE, '..', '.deps', 'jsipfs')
const NM = path.join(DEPS, 'node_modules')

const SHARD_THRESHOLD = 262144
const CHUNK = 262144

function die (msg) {
  process.stderr.write(`jsipfs-oracle: ${msg}\n`)
  process.exit(2)
}

// Resolve an ES module inside .deps/jsipfs/node_modules by hand: bare
// specifiers in this file would resolve relative to scripts/.
function exportTarget (entry) {
  if (typeof entry === 'string') return entry
  if (entry && typeof entry === 'object') {
    for (const cond of ['import', 'node', 'default']) {
      if (cond in entry) {
        const t = exportTarget(entry[cond])
        if (t) return t
      }
    }
  }
  return null
}

async function load (pkg, sub = '.') {
  const dir = path.join(NM, pkg)
  let meta
  try {
    meta = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'))
  } catch (e) {
    die(`${pkg} not found under ${NM}: run scripts/setup.sh --test (or set SHOAL_JSIPFS_DIR)`)
  }
  let rel = null
  if (meta.exports) {
    const ex = meta.exports
    const map = typeof ex === 'string' || !Object.keys(ex).some(k => k.startsWith('.')) ? { '.': ex } : ex
    rel = exportTarget(map[sub])
  }
  if (!rel && sub === '.') rel = meta.module || meta.main || 'index.js'
  if (!rel) die(`cannot resolve ${pkg}/${sub}`)
  return import(pathToFileURL(path.join(dir, rel)).href)
}

async function loadFile (pkg, rel) {
  return import(pathToFileURL(path.join(NM, pkg, rel)).href)
}

const { importer } = await load('ipfs-unixfs-importer')
const { default: DirSharded } = await loadFile('ipfs-unixfs-importer', 'src/dir-sharded.js')
const { default: defaultOptions } = await loadFile('ipfs-unixfs-importer', 'src/options.js')
const { default: persist } = await loadFile('ipfs-unixfs-importer', 'src/utils/persist.js')
const { UnixFS } = await load('ipfs-unixfs')
const dagPb = await load('@ipld/dag-pb')
const raw = await load('multiformats', './codecs/raw')

// Never written to (onlyHash), but the importer wants an object.
const blockstore = {
  async put (cid) { return cid },
  async get () { throw new Error('no-op blockstore') },
  async has () { return false }
}

const MODES = {
  v0: { cidVersion: 0, rawLeaves: false },
  v1: { cidVersion: 1, rawLeaves: true }
}

function options (mode) {
  return defaultOptions({
    ...MODES[mode],
    onlyHash: true,
    chunker: 'fixed',
    maxChunkSize: CHUNK,
    strategy: 'balanced',
    maxChildrenPerNode: 174,
    reduceSingleLeafToSelf: true,
    wrapWithDirectory: false,
    // only used for the whole-file import below; directories are ours
    shardSplitThreshold: Infinity
  })
}

async function addFile (p, mode) {
  // Fast path for single-chunk files (the importer's per-file pipeline costs
  // ~1 ms): the same leaf the importer would build, without the machinery.
  const st = await fsp.stat(p)
  if (st.size <= CHUNK) {
    const bytes = await fsp.readFile(p)
    if (bytes.length <= CHUNK) {
      if (MODES[mode].rawLeaves) {
        const cid = await persist(bytes, blockstore, { codec: raw, cidVersion: 1, onlyHash: true })
        return { cid, size: bytes.length }
      }
      const unixfs = new UnixFS({ type: 'file', data: new Uint8Array(bytes) })
      const buf = dagPb.encode({ Data: unixfs.marshal(), Links: [] })
      const cid = await persist(buf, blockstore, { cidVersion: 0, onlyHash: true })
      return { cid, size: buf.length }
    }
  }
  let last
  const content = fs.createReadStream(p, { highWaterMark: 1 << 20 })
  for await (const entry of importer([{ content }], blockstore, options(mode))) {
    last = entry
  }
  if (!last) throw new Error(`importer returned nothing for ${p}`)
  return { cid: last.cid, size: Number(last.size) }
}

async function addSymlink (p, mode) {
  const target = await fsp.readlink(p, { encoding: 'buffer' })
  // Kubo writes Type=Symlink and Data=target only; ipfs-unixfs's marshal()
  // would add a filesize field, which changes the CID.
  const data = Buffer.concat([Buffer.from([0x08, 0x04, 0x12]), varint(target.length), target])
  const buf = dagPb.encode(dagPb.prepare({ Data: new Uint8Array(data), Links: [] }))
  const cid = await persist(buf, blockstore, { cidVersion: MODES[mode].cidVersion, onlyHash: true })
  return { cid, size: buf.length }
}

function varint (n) {
  const out = []
  while (n >= 0x80) { out.push((n & 0x7f) | 0x80); n = Math.floor(n / 128) }
  out.push(n)
  return Buffer.from(out)
}

function byteCompare (a, b) {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'))
}

async function addDir (p, mode) {
  const dirents = await fsp.readdir(p, { withFileTypes: true })
  const children = []
  let estimate = 0
  for (const d of dirents.sort((a, b) => byteCompare(a.name, b.name))) {
    const child = path.join(p, d.name)
    const st = await fsp.lstat(child)
    let r
    if (st.isSymbolicLink()) r = await addSymlink(child, mode)
    else if (st.isDirectory()) r = await addDir(child, mode)
    else if (st.isFile()) r = await addFile(child, mode)
    else throw new Error(`unsupported file type: ${child}`)
    children.push({ name: d.name, ...r })
    estimate += Buffer.byteLength(d.name, 'utf8') + r.cid.bytes.length
  }

  if (estimate >= SHARD_THRESHOLD) {
    const opts = options(mode)
    const shard = new DirSharded({ root: true, dir: true, parent: null, parentKey: null, path: '', dirty: true, flat: false }, opts)
    for (const c of children) await shard.put(c.name, { cid: c.cid, size: c.size })
    let last
    for await (const e of shard.flush(blockstore)) last = e
    return { cid: last.cid, size: Number(last.size) }
  }

  const links = children.map(c => ({ Name: c.name, Tsize: c.size, Hash: c.cid }))
  const unixfs = new UnixFS({ type: 'directory' })
  const buf = dagPb.encode(dagPb.prepare({ Data: unixfs.marshal(), Links: links }))
  const cid = await persist(buf, blockstore, { cidVersion: MODES[mode].cidVersion, onlyHash: true })
  return { cid, size: buf.length + children.reduce((a, c) => a + c.size, 0) }
}

async function handle (line) {
  const sp = line.indexOf(' ')
  if (sp < 0) return 'error: expected `<v0|v1> <absolute path>`'
  const mode = line.slice(0, sp)
  const p = path.resolve(line.slice(sp + 1))
  if (!(mode in MODES)) return `error: unknown mode ${JSON.stringify(mode)} (v0 or v1)`
  try {
    let st
    try {
      st = await fsp.stat(p) // a top-level symlink is followed, like Kubo's AddFile
    } catch (e) {
      if (e.code === 'ENOENT') {
        const isLink = await fsp.lstat(p).then(() => true, () => false)
        return isLink ? `error: dangling symlink: ${p}` : `error: no such file or directory: ${p}`
      }
      throw e
    }
    let r
    if (st.isDirectory()) r = await addDir(p, mode)
    else if (st.isFile()) r = await addFile(p, mode)
    else return `error: unsupported file type: ${p}`
    return r.cid.toString()
  } catch (e) {
    return `error: ${String(e && e.message ? e.message : e).replace(/\s+/g, ' ')}`
  }
}

const args = process.argv.slice(2)
if (args.length > 0) {
  const [mode, ...paths] = args
  for (const p of paths) process.stdout.write(await handle(`${mode} ${p}`) + '\n')
} else {
  process.stderr.write('ready\n')
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
  for await (const line of rl) {
    const out = await handle(line)
    // wait for the pipe to take it, so output is never lost on exit
    await new Promise(resolve => process.stdout.write(out + '\n', resolve))
  }
}
