'use strict';
// Two gateways on one NATS behind a load balancer without sticky sessions:
// a long-polling client whose HTTP requests alternate between the gateways
// stays connected and exchanges events (a request that reaches the gateway
// not holding its session is forwarded over NATS).

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const net = require('node:net');
const { startStack, sleep, uid, Recorder } = require('../harness');

// startProxy forwards each request to the upstream ports in turn (GETs and
// POSTs each alternate on their own, so both kinds reach both gateways),
// with no connection reuse towards the gateways.
function startProxy(ports) {
  const agent = new http.Agent({ keepAlive: false });
  const next = {};
  const served = []; // [{method, upstream}]
  const upgraded = new Set();
  const server = http.createServer((req, res) => {
    const n = next[req.method] || 0;
    next[req.method] = n + 1;
    const upstream = n % ports.length;
    served.push({ method: req.method, upstream });
    const headers = { ...req.headers };
    delete headers.connection;
    delete headers['keep-alive'];
    const up = http.request(
      { host: '127.0.0.1', port: ports[upstream], method: req.method, path: req.url, headers, agent },
      (ur) => {
        const h = { ...ur.headers };
        delete h.connection;
        delete h['keep-alive'];
        res.writeHead(ur.statusCode, h);
        ur.pipe(res);
      },
    );
    up.on('error', (err) => {
      if (!res.headersSent) res.writeHead(502);
      res.end(`proxy: ${err.message}`);
    });
    req.pipe(up);
  });
  // WebSocket upgrades alternate too, starting with the second upstream:
  // the first handshake GET went to the first, so an upgrade of that
  // session lands on the gateway that does not hold it.
  server.on('upgrade', (req, socket, head) => {
    upgraded.add(socket);
    socket.on('close', () => upgraded.delete(socket));
    const n = next.UPGRADE === undefined ? 1 : next.UPGRADE;
    next.UPGRADE = n + 1;
    const upstream = n % ports.length;
    served.push({ method: 'UPGRADE', upstream });
    const up = net.connect(ports[upstream], '127.0.0.1', () => {
      let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) raw += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(raw + '\r\n');
      if (head && head.length) up.write(head);
      socket.pipe(up);
      up.pipe(socket);
    });
    up.on('error', () => socket.destroy());
    socket.on('error', () => up.destroy());
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      resolve({
        url: `http://127.0.0.1:${server.address().port}`,
        served,
        close: () =>
          new Promise((r) => {
            server.closeAllConnections();
            for (const c of upgraded) c.destroy();
            server.close(() => r());
          }),
      });
    });
  });
}

describe('two gateways, one NATS, no sticky sessions', { timeout: 120000 }, () => {
  let st;
  let proxy;
  before(async () => {
    st = await startStack('sticky', {
      services: ['auth', 'presence', 'echo', 'gateway', 'gateway2'],
      gatewayEnv: { SB_GATEWAY_PING_INTERVAL: '1s', SB_GATEWAY_PING_TIMEOUT: '1s' },
    });
    proxy = await startProxy([st.gatewayPorts.gateway, st.gatewayPorts.gateway2]);
  });
  after(async () => {
    if (st) await st.stop();
    if (proxy) await proxy.close();
  });

  test('a polling client alternating between the gateways stays connected and exchanges events', async () => {
    const socket = st.rawIO({ token: st.token(uid('sticky')) }, { transports: ['polling'] }, proxy.url);
    const r = new Recorder(socket);
    let pings = 0;
    socket.io.on('ping', () => pings++);
    await r.wait('$connect');
    const engineId = socket.io.engine.id;
    const sid = socket.id;

    // The echo service greets the socket; a stack without ForwardAuth puts
    // no auth payload on NATS, so the greeting carries an empty object.
    const auth = await r.wait('auth');
    assert.deepEqual(auth.args, [{}]);

    // Exchanges for at least 3 ping cycles (ping interval 1 s).
    const started = Date.now();
    let round = 0;
    while (Date.now() - started < 4500) {
      round++;
      const ack = await new Promise((resolve, reject) => {
        socket.timeout(5000).emit('message-with-ack', round, { r: round }, (err, ...args) => (err ? reject(err) : resolve(args)));
      });
      assert.deepEqual(ack, [round, { r: round }], `ack of round ${round}`);

      const mark = r.mark();
      socket.emit('message', `m${round}`, Buffer.from([round]));
      const back = await r.wait('message-back', (s) => s === `m${round}`, 5000, mark);
      const b = back.args[1];
      assert.deepEqual([...new Uint8Array(b instanceof ArrayBuffer ? b : b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength))], [round]);

      if (round % 3 === 1) {
        await st.notify(['-conn', sid, '-event', 'greeting', JSON.stringify({ round })]);
        const g = await r.wait('greeting', (p) => p && p.round === round, 5000, mark);
        assert.deepEqual(g.args, [{ round }]);
      }
      await sleep(300);
    }

    assert.ok(pings >= 3, `${pings} ping cycles, want at least 3`);
    assert.equal(socket.connected, true);
    assert.equal(r.of('$disconnect').length, 0, `disconnected: ${JSON.stringify(r.of('$disconnect').map((e) => e.args))}`);
    assert.equal(r.of('$connect').length, 1, 'connected once (no reconnect)');
    assert.equal(socket.io.engine.id, engineId, 'one engine session throughout');
    assert.equal(socket.io.engine.transport.name, 'polling');

    // The proxy really alternated: both gateways served GETs and POSTs.
    const count = (upstream, method) => proxy.served.filter((x) => x.upstream === upstream && x.method === method).length;
    assert.ok(proxy.served.length > 10, `${proxy.served.length} requests, want more than 10`);
    for (const u of [0, 1]) {
      assert.ok(count(u, 'GET') >= 3, `gateway ${u + 1} served ${count(u, 'GET')} GETs`);
      assert.ok(count(u, 'POST') >= 3, `gateway ${u + 1} served ${count(u, 'POST')} POSTs`);
    }
    socket.disconnect();
  });
  test('the default client (polling, then upgrade) upgrades through the gateway that does not hold its session', async () => {
    const relayProxy = await startProxy([st.gatewayPorts.gateway, st.gatewayPorts.gateway2]);
    try {
      const socket = st.rawIO({ token: st.token(uid('relay')) }, { transports: ['polling', 'websocket'] }, relayProxy.url);
      const r = new Recorder(socket);
      await r.wait('$connect');
      const engineId = socket.io.engine.id;
      await new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('no upgrade')), 5000);
        if (socket.io.engine.transport.name === 'websocket') return resolve();
        socket.io.engine.once('upgrade', () => {
          clearTimeout(t);
          resolve();
        });
      });
      assert.equal(socket.io.engine.transport.name, 'websocket');
      assert.equal(socket.io.engine.id, engineId, 'same engine session after the upgrade');
      const handshake = relayProxy.served.find((x) => x.method === 'GET');
      const upgrade = relayProxy.served.find((x) => x.method === 'UPGRADE');
      assert.ok(upgrade, 'no upgrade went through the proxy');
      assert.notEqual(upgrade.upstream, handshake.upstream, 'the upgrade reached the gateway holding the session');

      // Events, acks, binary and notifications over the relayed WebSocket,
      // across a few ping cycles.
      const started = Date.now();
      let round = 0;
      while (Date.now() - started < 3000) {
        round++;
        const ack = await new Promise((resolve, reject) => {
          socket.timeout(5000).emit('message-with-ack', round, Buffer.from([round]), (err, ...args) => (err ? reject(err) : resolve(args)));
        });
        assert.equal(ack[0], round);
        const b = ack[1];
        assert.deepEqual([...new Uint8Array(b instanceof ArrayBuffer ? b : b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength))], [round]);
        const mark = r.mark();
        await st.notify(['-conn', socket.id, '-event', 'greeting', JSON.stringify({ round })]);
        await r.wait('greeting', (p) => p && p.round === round, 5000, mark);
        await sleep(300);
      }
      assert.equal(r.of('$disconnect').length, 0, 'no disconnect');
      assert.equal(socket.io.engine.transport.name, 'websocket');
      socket.disconnect();
    } finally {
      await relayProxy.close();
    }
  });
});
