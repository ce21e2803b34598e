// TEST-ONLY SWITCH, used in bitpunch's NAT lab and nowhere else.
//
// The lab's "internet" is numbered from documentation ranges (public hosts in
// 192.0.2.0/24, NAT routers' public sides in 203.0.113.0/24) so that no lab
// packet can ever carry a real address. js-libp2p classifies those ranges as
// private, and its DCUtR drops every private address, so in the lab it would
// never hole-punch. This module-load hook edits js-libp2p's private-range
// table (in @libp2p/utils) as it is loaded, removing exactly these two
// ranges; every other private range (10/8 LANs, loopback, ...) stays private.
// It fails loudly if the table no longer has the expected entries, so a
// version bump cannot silently turn it into a no-op.
const LAB_INTERNET = ['192.0.2.0/24', '203.0.113.0/24']
const TABLE = '/@libp2p/utils/dist/src/private-ip.js'

export async function load (url, context, nextLoad) {
  const result = await nextLoad(url, context)
  if (!url.endsWith(TABLE)) {
    return result
  }
  let source = String(result.source)
  for (const range of LAB_INTERNET) {
    const entry = `'${range}',`
    if (!source.includes(entry)) {
      throw new Error(`lab-public-ranges: ${range} not found in ${url}; js-libp2p changed, update this hook`)
    }
    source = source.replace(entry, '')
  }
  return { ...result, source }
}
