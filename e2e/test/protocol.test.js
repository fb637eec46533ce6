'use strict';
// Socket.IO protocol conformance with the real socket.io-client against the
// devstack's echo profile (`bin/devstack -profile=echo`: auth disabled,
// ping 300/200 ms, namespaces / and /custom, the echo service), in each
// transport mode: polling only, websocket only, and the default (polling,
// then upgrade to websocket).

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startDevstack, sleep, waitUntil, Recorder } = require('../harness');

// bytes turns a received binary value (Buffer, ArrayBuffer or typed array)
// into a plain array of byte values.
function bytes(v) {
  if (v instanceof ArrayBuffer) return [...new Uint8Array(v)];
  if (ArrayBuffer.isView(v)) return [...new Uint8Array(v.buffer, v.byteOffset, v.byteLength)];
  throw new Error(`not binary: ${JSON.stringify(v)}`);
}

// connected resolves once socket connects, or rejects on connect_error.
function connected(socket, what) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what}: no connect within 5 s`)), 5000);
    socket.once('connect', () => {
      clearTimeout(t);
      resolve();
    });
    socket.once('connect_error', (err) => {
      clearTimeout(t);
      reject(new Error(`${what}: connect_error ${err.message}`));
    });
  });
}

// ackArgs emits event with args and resolves with every argument of the
// ack (socket.io-client passes a multi-argument ack as several parameters).
function ackArgs(socket, event, ...args) {
  return new Promise((resolve, reject) => {
    socket.timeout(5000).emit(event, ...args, (err, ...ack) => (err ? reject(err) : resolve(ack)));
  });
}

const MODES = [
  { name: 'polling only', opts: { transports: ['polling'] }, transport: 'polling' },
  { name: 'websocket only', opts: { transports: ['websocket'] }, transport: 'websocket' },
  { name: 'default (polling, then upgrade)', opts: {}, transport: 'websocket', upgrades: true },
];

describe('Socket.IO protocol against the echo profile', { timeout: 120000 }, () => {
  let ds;
  before(async () => {
    ds = await startDevstack('protocol', ['-profile=echo']);
  });
  after(async () => {
    if (ds) await ds.stop();
  });

  for (const mode of MODES) {
    test(`${mode.name}: auth event first, acks, binary, namespaces`, async () => {
      const root = ds.io('/', { ...mode.opts, autoConnect: false, auth: { token: '123' } });
      const r = new Recorder(root);
      const first = [];
      root.onAny((event) => first.push(event));
      let openedOn;
      const upgrades = [];
      root.io.on('open', () => {
        openedOn = root.io.engine.transport.name;
        root.io.engine.on('upgrade', (t) => upgrades.push(t.name));
      });
      root.connect();
      await connected(root, '/');

      // The CONNECT auth payload comes back as the first event.
      const auth = await r.wait('auth');
      assert.deepEqual(auth.args, [{ token: '123' }]);
      assert.equal(first[0], 'auth', `first event ${first[0]}, want auth`);
      assert.equal(r.of('$connect').length, 1);
      assert.ok(r.events.indexOf(r.of('$connect')[0]) < r.events.indexOf(auth), 'connect precedes auth');

      // Transport: polling first when polling is allowed; the default mode
      // really upgrades.
      assert.equal(openedOn, mode.upgrades ? 'polling' : mode.transport, 'first transport');
      await waitUntil(`transport ${mode.transport}`, () => root.io.engine.transport.name === mode.transport, 5000, 20);
      if (mode.upgrades) assert.deepEqual(upgrades, ['websocket']);
      else assert.deepEqual(upgrades, []);

      // A second namespace on the same manager (same engine connection).
      const custom = root.io.socket('/custom', { auth: { token: 'custom-1', n: [1, 2] } });
      const rc = new Recorder(custom);
      custom.connect();
      await connected(custom, '/custom');
      const cauth = await rc.wait('auth');
      assert.deepEqual(cauth.args, [{ token: 'custom-1', n: [1, 2] }]);
      assert.equal(rc.events.filter((e) => !e.event.startsWith('$'))[0].event, 'auth', 'auth is the first event on /custom');

      // Acks with several arguments, in both namespaces.
      assert.deepEqual(await ackArgs(root, 'message-with-ack', 1, '2', { 3: [true] }), [1, '2', { 3: [true] }]);
      assert.deepEqual(await ackArgs(custom, 'message-with-ack', 'x', null, [{}]), ['x', null, [{}]]);
      assert.equal(await root.timeout(5000).emitWithAck('message-with-ack', 'only'), 'only');
      assert.deepEqual(await ackArgs(root, 'message-with-ack'), [], 'an ack without arguments');

      // Binary: message -> message-back with the attachments in place.
      const mark = r.mark();
      root.emit('message', Buffer.from([1, 2, 3]), { x: Uint8Array.from([4]), y: 'z' });
      const back = await r.wait('message-back', () => true, 5000, mark);
      assert.equal(back.args.length, 2, `message-back args ${JSON.stringify(back.args)}`);
      assert.deepEqual(bytes(back.args[0]), [1, 2, 3]);
      assert.deepEqual(bytes(back.args[1].x), [4]);
      assert.equal(back.args[1].y, 'z');
      // Plain values too, and on /custom.
      custom.emit('message', 'hello', 42, { deep: [null, false] });
      const cback = await rc.wait('message-back');
      assert.deepEqual(cback.args, ['hello', 42, { deep: [null, false] }]);

      // An ack carrying binary.
      const bin = await ackArgs(root, 'message-with-ack', Buffer.from([9, 8, 7]), [Uint8Array.from([0, 255])]);
      assert.equal(bin.length, 2);
      assert.deepEqual(bytes(bin[0]), [9, 8, 7]);
      assert.deepEqual(bytes(bin[1][0]), [0, 255]);

      // A namespace the profile does not serve.
      const nope = root.io.socket('/nope');
      const err = await new Promise((resolve, reject) => {
        nope.once('connect', () => reject(new Error('/nope connected')));
        nope.once('connect_error', resolve);
        nope.connect();
      });
      assert.equal(err.message, 'Invalid namespace');

      // Leaving /custom leaves / working on the same engine connection.
      const engine = root.io.engine;
      custom.disconnect();
      assert.deepEqual(await ackArgs(root, 'message-with-ack', 'still'), ['still']);
      assert.equal(root.io.engine, engine, 'the same engine connection');

      // Heartbeats (300/200 ms) keep the connection up for several cycles.
      await sleep(1200);
      assert.equal(root.connected, true);
      assert.equal(r.of('$disconnect').length, 0, `disconnects: ${JSON.stringify(r.of('$disconnect').map((e) => e.args))}`);
      assert.deepEqual(await ackArgs(root, 'message-with-ack', 'after pings'), ['after pings']);
      assert.equal(root.io.engine.transport.name, mode.transport);
      assert.equal(r.of('connections').length + rc.of('connections').length, 0, 'the profile sends no connections events');

      // A delivery from another process reaches the socket.
      await ds.notify(['-conn', root.id, '-event', 'greeting', '{"hi":1}']);
      const g = await r.wait('greeting');
      assert.deepEqual(g.args, [{ hi: 1 }]);

      root.disconnect();
    });
  }

  test('an engine connection without CONNECT is closed after the connect timeout', async () => {
    const s = ds.io('/', { transports: ['websocket'], autoConnect: false });
    s.io.open();
    await new Promise((resolve, reject) => {
      s.io.once('open', resolve);
      s.io.once('error', reject);
    });
    const started = Date.now();
    const reason = await new Promise((resolve) => s.io.engine.once('close', resolve));
    const took = Date.now() - started;
    assert.ok(took >= 800 && took <= 2500, `closed after ${took} ms, want about 1000 (${reason})`);
    assert.ok(ds.alive(), 'devstack still runs');
  });
});
