'use strict';
// `make cluster`: the cluster topology of the chaos test, for people: three
// NATS nodes (the shipped cluster configuration, R3 buckets), two gateways
// behind a round-robin proxy, two auth, two presence and two timer
// instances, each a process of bin/ on loopback. Ctrl-C stops it.

const path = require('node:path');
const { startStack } = require('./harness');

const CONFIG = path.resolve(__dirname, '..', 'deploy', 'nats', 'nats-server.conf');

async function main() {
  const st = await startStack('cluster', {
    services: ['auth', 'auth2', 'presence', 'presence2', 'timer', 'timer2', 'gateway', 'gateway2'],
    natsConfig: CONFIG,
    natsNodes: 3,
    proxy: true,
  });
  const out = (s = '') => process.stdout.write(`${s}\n`);
  out('switchboard cluster is running (Ctrl-C to stop)');
  out(`socket.io: ${st.url} (round-robin over ${Object.values(st.gatewayPorts).map((p) => `127.0.0.1:${p}`).join(', ')})`);
  out(`nats: ${st.natsUrl} (monitoring: ${Object.values(st.monitorPorts).map((p) => `http://127.0.0.1:${p}`).join(', ')})`);
  out(`backend services connect as the app user: ${st.appNatsUrl.split(',')[0]},...`);
  for (const name of st.services) out(`${name.padEnd(10)} http://127.0.0.1:${st.opsPorts[name]}/metrics  (logs: ${st.log(name)})`);
  out('');
  out(`a token for alice (valid 24 h): ${st.token('alice', { ttlSec: 86400 })}`);
  out(`socket.io-client: io(${JSON.stringify(st.url)}, {transports: ["websocket"], auth: {token: "<token>"}})`);
  out('kill -9 any of the processes above: the stack goes on (restart it by hand, or use make chaos)');
  // The harness ends every process on SIGINT or SIGTERM.
  await new Promise(() => {});
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
