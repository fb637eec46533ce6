'use strict';
// The whole product on a real nats-server with the shipped configuration
// (deploy/nats/nats-server.conf): every service connects as its own user, and
// two gateways, a relayed WebSocket upgrade, deliveries with acks, client
// events with acks, timers and presence events all work without a single
// permission violation in the server's log.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const WebSocket = require('ws');
const { startStack, sleep, uid, waitUntil } = require('../harness');

const CONFIG = path.resolve(__dirname, '..', '..', 'deploy', 'nats', 'nats-server.conf');

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

  test('every process reports the flows in its metrics and is ready', async () => {
    const scrape = async (name) => {
      const res = await fetch(`${st.opsURL(name)}/metrics`);
      assert.equal(res.status, 200, `${name} /metrics`);
      return res.text();
    };
    // value sums the series of a scrape that start with prefix (a name and
    // its labels), -1 when there is none.
    const value = (text, series) => {
      let sum = -1;
      for (const line of text.split('\n')) {
        if (line.startsWith(`${series} `)) sum = Math.max(sum, 0) + Number(line.slice(series.length + 1));
      }
      return sum;
    };
    const gw = [await scrape('gateway'), await scrape('gateway2')];
    const both = (series) => gw.reduce((a, t) => a + Math.max(0, value(t, series)), 0);
    assert.ok(both('switchboard_gateway_handshakes_total{result="ok"}') >= 3, 'handshakes ok on the gateways');
    assert.ok(both('switchboard_gateway_messages_in_total') >= 3, 'client events in');
    assert.ok(both('switchboard_gateway_messages_out_total') >= 3, 'events out');
    assert.ok(both('switchboard_gateway_nats_request_seconds_count{kind="admit"}') >= 3, 'admit latency observed');
    const auth = await scrape('auth');
    assert.ok(value(auth, 'switchboard_auth_verifications_total{result="ok"}') >= 3, 'verifications');
    const presence = await scrape('presence');
    assert.ok(value(presence, 'switchboard_presence_admissions_total{result="admitted"}') >= 3, 'admissions');
    assert.ok(value(presence, 'switchboard_presence_releases_total') >= 1, 'releases');
    const timer = await scrape('timer');
    assert.ok(value(timer, 'switchboard_timer_ticks_total') >= 1, 'ticks');
    assert.equal(value(timer, 'switchboard_timer_tick_lateness_seconds_count'), value(timer, 'switchboard_timer_ticks_total'), 'tick lateness histogram');
    assert.ok(value(timer, 'switchboard_timer_partitions_owned') >= 1, 'partitions owned');
    for (const name of ['gateway', 'gateway2', 'auth', 'presence', 'timer']) {
      assert.equal((await fetch(`${st.opsURL(name)}/readyz`)).status, 200, `${name} ready`);
      // The health subcommand, as a container healthcheck runs it.
      const code = await st.health(name);
      assert.equal(code, 0, `${name} health`);
    }
  });

  test('the server logged no permission violation', async () => {
    await sleep(500);
    const log = fs.readFileSync(st.log('nats'), 'utf8');
    const violations = log.split('\n').filter((l) => /Permissions Violation/i.test(l));
    assert.deepEqual(violations, []);
  });
});
