'use strict';
// The chaos run on a cluster of real processes: three NATS nodes with the
// shipped cluster configuration and R3 buckets, two gateways behind a
// round-robin proxy, two auth, two presence and three timer instances. A
// driver kills (SIGKILL) and restarts one process at a time while clients
// come and go, notifications flow and devices run timers; see chaos.js for
// the invariants. CHAOS_DURATION sets the length (90s, 10m, 1h; default
// 75s; `make chaos DURATION=10m` runs longer).

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { startStack } = require('../harness');
const { runChaos } = require('../chaos');

const CONFIG = path.resolve(__dirname, '..', '..', 'deploy', 'nats', 'nats-server.conf');
// seconds parses a duration such as 90s, 10m or 1h30m.
function seconds(d) {
  const unit = { s: 1, m: 60, h: 3600 };
  const parts = [...String(d).matchAll(/(\d+)([smh])/g)];
  if (!parts.length || parts.map((p) => p[0]).join('') !== String(d)) throw new Error(`CHAOS_DURATION ${d}: want e.g. 90s, 10m, 1h`);
  return parts.reduce((n, [, v, u]) => n + Number(v) * unit[u], 0);
}
const SECONDS = seconds(process.env.CHAOS_DURATION || '75s');
const GATEWAY_TTL_MS = 4000;

describe('chaos on a three-node cluster', { timeout: (SECONDS + 180) * 1000 }, () => {
  let st;
  before(async () => {
    st = await startStack('chaos', {
      services: ['auth', 'auth2', 'presence', 'presence2', 'timer', 'timer2', 'timer3', 'gateway', 'gateway2'],
      natsConfig: CONFIG,
      natsNodes: 3,
      proxy: true,
      env: {
        presence: { SB_PRESENCE_MAX_CONNECTIONS_PER_USER: '2', SB_PRESENCE_GATEWAY_TTL: `${GATEWAY_TTL_MS}ms` },
        gateway: { SB_GATEWAY_HEARTBEAT_INTERVAL: '1s' },
      },
    });
  });
  after(async () => {
    if (st) await st.stop();
  });

  test(`${SECONDS} s of kill -9 keeps every invariant`, async () => {
    const { violations, summary } = await runChaos(st, {
      users: 10,
      devices: 3,
      limit: 2,
      gatewayTTL: GATEWAY_TTL_MS,
      durationMs: SECONDS * 1000,
      log: (line) => process.stderr.write(`# chaos ${line}\n`),
    });
    process.stderr.write(`# chaos summary ${JSON.stringify(summary)}\n`);
    assert.ok(summary.kills.length >= Math.min(6, Math.floor(SECONDS / 12)), `too few kills: ${summary.kills}`);
    assert.ok(summary.sessions > 50 && summary.timers > 10, 'the workload ran');
    assert.deepEqual(violations, []);
  });
});
