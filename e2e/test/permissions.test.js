'use strict';
// The whole product on a real nats-server with the shipped configuration
// (deploy/nats-server.conf): every service connects as its own user, and
// two gateways, a relayed WebSocket upgrade, deliveries with acks, client
// events with acks, timers and presence events all work without a single
// permission violation in the server's log.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const WebSocket = require('ws');
const { startStack, sleep, uid, waitUntil } = require('../harness');

const CONFIG = path.resolve(__dirname, '..', '..', 'deploy', 'nats-server.conf');

describe('least-privilege NATS', { timeout: 120000 }, () => {
  let st;
  before(async () => {
    st = await startStack('permissions', {
      services: ['auth', 'presence', 'timer', 'gateway', 'gateway2'],
      natsConfig: CONFIG,
    });
  });
  after(async () => {
    if (st) await st.stop();
  });

  test('the client flows work across two gateways', async () => {
    const user = uid('perm');
    const a = await st.client({ token: st.token(user) });
    const b = await st.client({ token: st.token(user) }, {}, st.gatewayURL('gateway2'));
    // presence: connections updates reach both gateways' sockets
    await a.wait('connections', (list) => list.some((c) => c.socketId === b.socket.id));
    // a delivery whose ack the client answers, from a backend service
    a.socket.on('ping', (arg, cb) => cb({ pong: arg.n }));
    const out = await st.notify(['-conn', a.socket.id, '-event', 'ping', '-ack', '{"n":1}']);
    assert.equal(out.trim(), 'ack [{"pong":1}]');
    // a client event with an ack that no service handles: a clear error
    const ack = await a.socket.timeout(5000).emitWithAck('nobodyListens', 1);
    assert.equal(ack.status, 'error');
    // timers
    const started = await b.socket.timeout(5000).emitWithAck('timerStart', { dur: 2 });
    assert.equal(started.status, 'ok');
    await b.wait('timerDone', () => true, 8000);
    // disconnectRequest of the other device
    const gone = await b.socket.timeout(5000).emitWithAck('disconnectRequest', a.socket.id);
    assert.equal(gone.status, 'ok');
    await a.wait('$disconnect', () => true, 5000);
  });

  test('long-polling on one gateway upgrades through the other', async () => {
    const user = uid('relay');
    const base1 = `${st.gatewayURL('gateway')}/socket.io/?EIO=4&transport=polling`;
    const open = await fetch(base1).then((r) => r.text());
    const sid = JSON.parse(open.slice(1)).sid;
    const url1 = `${base1}&sid=${sid}`;
    // The CONNECT goes through the second gateway, forwarded to the holder.
    const url2 = `${st.gatewayURL('gateway2')}/socket.io/?EIO=4&transport=polling&sid=${sid}`;
    assert.equal(await fetch(url2, { method: 'POST', body: `40${JSON.stringify({ token: st.token(user) })}` }).then((r) => r.text()), 'ok');
    let socketId;
    await waitUntil('the CONNECT reply', async () => {
      const body = await fetch(url1).then((r) => r.text());
      const m = /40\{"sid":"([^"]+)"\}/.exec(body);
      if (m) socketId = m[1];
      return Boolean(m);
    }, 10000, 50);
    const ws = new WebSocket(`${st.gatewayURL('gateway2').replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket&sid=${sid}`);
    const frames = [];
    ws.on('message', (d) => {
      const s = d.toString();
      if (s === '2') ws.send('3');
      else frames.push(s);
    });
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    ws.send('2probe');
    await waitUntil('3probe', () => frames.includes('3probe'), 5000, 20);
    ws.send('5');
    await sleep(200);
    await st.notify(['-conn', socketId, '-event', 'relayed', '"yes"']);
    await waitUntil('a delivery over the relayed WebSocket', () => frames.includes('42["relayed","yes"]'), 5000, 20);
    ws.close();
  });

  test('the server logged no permission violation', async () => {
    await sleep(500);
    const log = fs.readFileSync(st.log('nats'), 'utf8');
    const violations = log.split('\n').filter((l) => /Permissions Violation/i.test(l));
    assert.deepEqual(violations, []);
  });
});
