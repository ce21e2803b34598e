// A js-libp2p circuit relay v2 server (TCP + Noise + Yamux, identify, ping)
// for bitpunch's interop tests. Prints `relay listening <multiaddr/p2p/id>`
// for each listen address and runs until killed.
//
//   node relay.mjs [LISTEN_MULTIADDR]   (default /ip4/0.0.0.0/tcp/4001)
//
// Limits from the environment (unset: js-libp2p's defaults):
//   RELAY_MAX_RESERVATIONS    reservations held at once (default 15)
//   RELAY_RESERVATION_TTL_MS  how long a reservation lasts (default 2 h)
//   RELAY_DURATION_LIMIT_MS   per-circuit duration limit (default 2 min)
//   RELAY_DATA_LIMIT_BYTES    per-circuit data limit (default 128 KiB)
//   RELAY_MAX_CONNECTIONS     connections at once (default 300); also lifts
//                             the per-host inbound rate (default 5/s) and
//                             pending upgrades (default 10) to this number,
//                             for load tests from one address
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { circuitRelayServer } from '@libp2p/circuit-relay-v2'

function envNumber (name) {
  const value = process.env[name]
  if (value == null || value === '') return undefined
  const n = Number(value)
  if (!Number.isSafeInteger(n) || n < 0) {
    console.error(`error: ${name}=${value} is not a non-negative integer`)
    process.exit(2)
  }
  return n
}

const listen = process.argv[2] ?? '/ip4/0.0.0.0/tcp/4001'
const dataLimit = envNumber('RELAY_DATA_LIMIT_BYTES')
const maxConnections = envNumber('RELAY_MAX_CONNECTIONS')
const node = await createLibp2p({
  addresses: { listen: [listen] },
  connectionManager: maxConnections == null
    ? {}
    : {
        maxConnections,
        inboundConnectionThreshold: maxConnections,
        maxIncomingPendingConnections: maxConnections
      },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    relay: circuitRelayServer({
      reservations: {
        maxReservations: envNumber('RELAY_MAX_RESERVATIONS'),
        reservationTtl: envNumber('RELAY_RESERVATION_TTL_MS'),
        defaultDurationLimit: envNumber('RELAY_DURATION_LIMIT_MS'),
        defaultDataLimit: dataLimit == null ? undefined : BigInt(dataLimit)
      }
    })
  }
})

node.services.relay.addEventListener('relay:reservation', (evt) => {
  console.error(`reservation for ${evt.detail.addr}`)
})
for (const addr of node.getMultiaddrs()) {
  console.log(`relay listening ${addr}`)
}

const stop = async () => {
  await node.stop()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
