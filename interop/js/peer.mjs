// A js-libp2p peer (TCP + Noise + Yamux, identify, ping, circuit relay v2
// client, DCUtR) for bitpunch's interop tests.
//
//   node peer.mjs [--listen MA]... [--relay MA] [--dial CIRCUIT]
//                 [--no-dcutr] [--wait-ms N] [--lab-public-ranges]
//
// --relay: reserve a slot on that relay; prints `reachable as <circuit>`.
// --dial:  reach CIRCUIT through its relay, ping over the relayed connection,
//          then wait up to --wait-ms for DCUtR to give a direct connection and
//          ping over it. Prints one JSON line with what happened and exits 0
//          only if the asked-for connection (direct, or relayed with
//          --no-dcutr) answered a ping.
// Every connection that opens is reported as
//   `connection <relayed|direct> <inbound|outbound> <peer> <remote addr>`.
// --lab-public-ranges: test-only, see lab-public-ranges.mjs.
import { register } from 'node:module'
import { parseArgs } from 'node:util'

const { values: opts } = parseArgs({
  options: {
    listen: { type: 'string', multiple: true, default: ['/ip4/0.0.0.0/tcp/0'] },
    relay: { type: 'string' },
    dial: { type: 'string' },
    'no-dcutr': { type: 'boolean', default: false },
    'wait-ms': { type: 'string', default: '15000' },
    'lab-public-ranges': { type: 'boolean', default: false }
  }
})

if (opts['lab-public-ranges']) {
  // Before js-libp2p is imported: the hook edits a module as it loads.
  register('./lab-public-ranges.mjs', import.meta.url)
}
const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { circuitRelayTransport } = await import('@libp2p/circuit-relay-v2')
const { dcutr } = await import('@libp2p/dcutr')
const { multiaddr } = await import('@multiformats/multiaddr')

const isRelayed = (conn) => conn.remoteAddr.toString().includes('/p2p-circuit')
const services = { identify: identify(), ping: ping() }
if (!opts['no-dcutr']) {
  services.dcutr = dcutr()
}
const listen = [...opts.listen]
if (opts.relay != null) {
  listen.push(`${opts.relay}/p2p-circuit`)
}

const node = await createLibp2p({
  addresses: { listen },
  transports: [tcp(), circuitRelayTransport()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services
})
console.log(`peer id ${node.peerId}`)

node.addEventListener('connection:open', (evt) => {
  const conn = evt.detail
  const kind = isRelayed(conn) ? 'relayed' : 'direct'
  console.log(`connection ${kind} ${conn.direction} ${conn.remotePeer} ${conn.remoteAddr}`)
})

const stop = async (code) => {
  await node.stop()
  process.exit(code)
}
process.on('SIGTERM', () => { stop(0) })
process.on('SIGINT', () => { stop(0) })

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// One /ipfs/ping/1.0.0 round trip on this very connection (the ping
// service would let the connection manager pick one, possibly the relayed).
async function pingOver (conn) {
  const stream = await conn.newStream('/ipfs/ping/1.0.0', {
    runOnLimitedConnection: true,
    signal: AbortSignal.timeout(10000)
  })
  const data = crypto.getRandomValues(new Uint8Array(32))
  const started = performance.now()
  const echoed = new Promise((resolve, reject) => {
    const chunks = []
    let length = 0
    const timer = setTimeout(() => reject(new Error('no pong within 10 s')), 10000)
    stream.addEventListener('message', (evt) => {
      const bytes = evt.data.subarray()
      chunks.push(bytes)
      length += bytes.byteLength
      if (length >= data.byteLength) {
        clearTimeout(timer)
        const got = Buffer.concat(chunks).subarray(0, data.byteLength)
        if (Buffer.compare(got, Buffer.from(data)) !== 0) reject(new Error('wrong pong'))
        else resolve(performance.now() - started)
      }
    })
  })
  stream.send(data)
  try {
    return await echoed
  } finally {
    stream.abort(new Error('done'))
  }
}

if (opts.relay != null) {
  const deadline = Date.now() + 20000
  let circuit
  while (circuit == null && Date.now() < deadline) {
    circuit = node.getMultiaddrs().find((ma) => ma.toString().includes('/p2p-circuit'))
    if (circuit == null) await sleep(100)
  }
  if (circuit == null) {
    console.error(`error: no reservation on ${opts.relay} within 20 s`)
    await stop(1)
  }
  console.log(`reachable as ${circuit}`)
}

if (opts.dial != null) {
  const target = multiaddr(opts.dial)
  const result = { dialed: opts.dial, ok: false }
  const started = Date.now()
  try {
    const relayed = await node.dial(target, { signal: AbortSignal.timeout(20000) })
    result.peer = relayed.remotePeer.toString()
    result.relayed_rtt_ms = await pingOver(relayed)
    if (opts['no-dcutr']) {
      result.ok = true
    } else {
      const deadline = started + Number(opts['wait-ms'])
      let direct
      while (direct == null && Date.now() < deadline) {
        direct = node.getConnections(relayed.remotePeer).find((c) => !isRelayed(c) && c.status === 'open')
        if (direct == null) await sleep(50)
      }
      if (direct != null) {
        result.direct = true
        result.direct_after_ms = Date.now() - started
        result.remote_addr = direct.remoteAddr.toString()
        result.direction = direct.direction
        result.rtt_ms = await pingOver(direct)
        result.ok = true
      } else {
        result.direct = false
        result.error = `no direct connection within ${opts['wait-ms']} ms`
      }
    }
  } catch (err) {
    result.error = String(err?.message ?? err)
  }
  console.log(JSON.stringify(result))
  await stop(result.ok ? 0 : 1)
}
