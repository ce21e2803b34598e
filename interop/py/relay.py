"""A py-libp2p circuit relay v2 server (TCP + Noise + Yamux only) for
bitpunch's interop tests. Prints `relay listening <multiaddr/p2p/id>` for each
listen address and runs until killed.

    python relay.py [LISTEN_MULTIADDR]   (default /ip4/0.0.0.0/tcp/4001)

Limits from the environment (unset: py-libp2p's defaults):
    RELAY_MAX_RESERVATIONS    reservations held at once (default 4)
    RELAY_MAX_CIRCUITS        relayed connections at once (default 8)
    RELAY_DURATION_LIMIT_S    per-circuit duration limit (default 3600 s)
    RELAY_DATA_LIMIT_BYTES    per-circuit data limit (default 1 GiB)
    RELAY_MAX_CONNECTIONS     connections at once (py-libp2p's defaults: the
                              swarm takes 300 less 50 kept for outbound dials,
                              the resource manager 256 established inbound and
                              64 pending), for load tests
"""

import os
import signal
import sys

import multiaddr
import trio

from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.rcmgr.connection_limits import new_connection_limits_with_defaults
from libp2p.rcmgr.manager import new_resource_manager
from libp2p.relay.circuit_v2.config import (
    DEFAULT_MAX_CIRCUIT_BYTES,
    DEFAULT_MAX_CIRCUIT_CONNS,
    DEFAULT_MAX_CIRCUIT_DURATION,
    DEFAULT_MAX_RESERVATIONS,
)
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        sys.exit(f"error: {name}={value} is not a non-negative integer")
    return number


async def main(listen: str) -> None:
    key_pair = create_new_key_pair()
    connection_limits = new_connection_limits_with_defaults()
    connection_config = ConnectionConfig()
    max_connections = env_int("RELAY_MAX_CONNECTIONS", 0)
    if max_connections > 0:
        connection_limits.max_pending_inbound = max_connections
        connection_limits.max_established_inbound = max_connections
        connection_limits.max_established_total = max_connections + 256
        connection_config.max_connections = max_connections + connection_config.min_connections
    host = new_host(
        resource_manager=new_resource_manager(connection_limits=connection_limits),
        connection_config=connection_config,
        key_pair=key_pair,
        # Noise and Yamux only: no TLS, secio, plaintext or mplex offered.
        sec_opt={
            NOISE_PROTOCOL_ID: NoiseTransport(
                key_pair, noise_privkey=create_x25519_key_pair().private_key
            )
        },
        muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
    )
    limits = RelayLimits(
        duration=env_int("RELAY_DURATION_LIMIT_S", DEFAULT_MAX_CIRCUIT_DURATION),
        data=env_int("RELAY_DATA_LIMIT_BYTES", DEFAULT_MAX_CIRCUIT_BYTES),
        max_circuit_conns=env_int("RELAY_MAX_CIRCUITS", DEFAULT_MAX_CIRCUIT_CONNS),
        max_reservations=env_int("RELAY_MAX_RESERVATIONS", DEFAULT_MAX_RESERVATIONS),
    )
    relay = CircuitV2Protocol(host, limits=limits, allow_hop=True)
    async with host.run(listen_addrs=[multiaddr.Multiaddr(listen)]):
        async with background_trio_service(relay):
            await relay.event_started.wait()
            for addr in host.get_addrs():
                print(f"relay listening {addr}", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    return


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "/ip4/0.0.0.0/tcp/4001")
