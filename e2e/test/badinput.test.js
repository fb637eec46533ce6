'use strict';
// Bad input from clients: every case gets the contract's answer, no process
// exits, and a bystander connected throughout is unaffected.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const { startStack, sleep, uid, waitUntil } = require('../harness');

const BAD_SCHEME = 'Invalid authentication method. Only Bearer is supported.';

describe('bad input', { timeout: 180000 }, () => {
  let st;
  let bystander;
  let bystanderUser;
  before(async () => {
    st = await startStack('badinput');
    bystanderUser = uid('bystander');
    bystander = await st.client({ token: st.token(bystanderUser) });
  });
  after(async () => {
    if (st) await st.stop();
  });

  // openAll opens n connections of user, retrying for a while when the
  // limit is still held by sockets being released; it fails if it never
  // gets all of them.
  async function openAll(user, n, timeoutMs = 5000) {
    let socks = [];
    await waitUntil(
      `${n} connections of ${user}`,
      async () => {
        for (const s of socks) s.socket.disconnect();
        socks = [];
        try {
          for (let i = 0; i < n; i++) socks.push(await st.client({ token: st.token(user) }));
          return true;
        } catch (err) {
          if (!/Too many connections/.test(err.message)) throw err;
          return false;
        }
      },
      timeoutMs,
      200,
    );
    return socks;
  }

  test('missing token gets "Token not provided"', async () => {
    assert.equal(await st.connectError(undefined), 'Token not provided');
    assert.equal(await st.connectError({}), 'Token not provided');
    assert.equal(await st.connectError({ deviceId: 'phone-1' }), 'Token not provided');
  });

  test('empty token gets "Token not provided"', async () => {
    assert.equal(await st.connectError({ token: '' }), 'Token not provided');
  });

  test('non-string or malformed token gets "Unauthorized"', async () => {
    const cases = [
      123,
      true,
      { a: 1 },
      ['x'],
      'not-a-jwt',
      'Bearer not-a-jwt',
      st.token('u', { secret: 'y'.repeat(48) }), // wrong signature
      st.token('u', { ttlSec: -60 }), // expired
      st.token('u', { aud: 'someone-else' }), // wrong audience
      st.token('u', { iss: 'someone-else' }), // wrong issuer
      `${st.token('u').split('.').slice(0, 2).join('.')}.`, // no signature
    ];
    for (const token of cases) {
      assert.equal(await st.connectError({ token }), 'Unauthorized', `token ${JSON.stringify(token).slice(0, 60)}`);
    }
    // alg "none" with a valid-looking payload.
    const [, payload] = st.token('u').split('.');
    const none = `${Buffer.from('{"alg":"none","typ":"JWT"}').toString('base64url')}.${payload}.`;
    assert.equal(await st.connectError({ token: none }), 'Unauthorized');
  });

  test('Basic and lowercase bearer schemes get the invalid authentication method message', async () => {
    for (const token of ['Basic x', 'bearer x', `bearer ${st.token('u')}`, 'Token abc']) {
      assert.equal(await st.connectError({ token }), BAD_SCHEME, `token ${token.slice(0, 20)}`);
    }
  });

  test('malformed or oversized deviceId gets "Invalid deviceId"', async () => {
    for (const deviceId of ['a/b', 'a b', 'x'.repeat(129), 'ä', 'a\nb', '*', 'a.>']) {
      const msg = await st.connectError({ token: st.token(uid('dev')) }, { query: { deviceId } });
      assert.equal(msg, 'Invalid deviceId', `deviceId ${JSON.stringify(deviceId)}`);
    }
    // In the auth payload too.
    assert.equal(await st.connectError({ token: st.token(uid('dev')), deviceId: 'a/b' }), 'Invalid deviceId');
    // The longest valid one is accepted.
    const ok = await st.client({ token: st.token(uid('dev')) }, { query: { deviceId: `A-z0._:${'9'.repeat(121)}` } });
    ok.socket.disconnect();
  });

  test('unknown namespace gets "Invalid namespace"', async () => {
    const { io } = require('socket.io-client');
    const admin = io(`${st.url}/admin`, { transports: ['websocket'], forceNew: true, reconnection: false, auth: { token: st.token(uid('ns')) } });
    st.sockets.add(admin);
    const err = await new Promise((resolve, reject) => {
      admin.once('connect', () => reject(new Error('connected to /admin')));
      admin.once('connect_error', resolve);
    });
    assert.equal(err.message, 'Invalid namespace');
    admin.disconnect();
  });

  test('refreshToken with bad input is refused and the socket stays', async () => {
    const user = uid('refresh');
    const c = await st.client({ token: st.token(user) });
    const cases = [
      [[], 'Token not provided'],
      [[null], 'Token not provided'],
      [['just-a-string'], 'Token not provided'],
      [[{}], 'Token not provided'],
      [[{ token: '' }], 'Token not provided'],
      [[{ token: null }], 'Token not provided'],
      [[{ token: 123 }], 'Unauthorized'],
      [[{ token: { a: 1 } }], 'Unauthorized'],
      [[{ token: 'Basic x' }], BAD_SCHEME],
      [[{ token: 'x'.repeat(20000) }], 'Unauthorized'],
      [[{ token: 'sb-verified:0' }], 'Unauthorized'],
      [[{ token: st.token(user, { ttlSec: -60 }) }], 'Unauthorized'],
      [[{ token: st.token(uid('other')) }], 'Token belongs to another user'],
    ];
    for (const [args, message] of cases) {
      const res = await c.socket.timeout(5000).emitWithAck('refreshToken', ...args);
      assert.deepEqual(res, { status: 'error', message }, `refreshToken ${JSON.stringify(args).slice(0, 60)}`);
    }
    // Without an ack the refusal comes as an exception.
    const mark = c.mark();
    c.socket.emit('refreshToken', { token: 'not-a-jwt' });
    const ex = await c.wait('exception', () => true, 5000, mark);
    assert.deepEqual(ex.args[0], { status: 'error', message: 'Unauthorized' });
    assert.equal(c.socket.connected, true);
    c.socket.disconnect();
  });

  test('timerStart with an invalid dur is refused and leaves a running timer alone', async () => {
    const a = await st.client({ token: `Bearer ${st.token(uid('dur'))}` }, { query: { deviceId: 'phone-1' } });
    a.socket.emit('timerStart', { dur: 20 });
    const start = (await a.wait('tick', (t) => t.timer === 20)).at;

    const bad = [
      ['dur -1', { dur: -1 }],
      ['dur 0', { dur: 0 }],
      ['dur 1.5', { dur: 1.5 }],
      ['dur "3"', { dur: '3' }],
      ['dur null', { dur: null }],
      ['dur {}', { dur: {} }],
      ['no dur', {}],
      ['dur 86401', { dur: 86401 }],
      ['dur 1e12', { dur: 1e12 }],
      ['payload a string', 'dur'],
      ['payload null', null],
    ];
    for (const [name, payload] of bad) {
      const ack = await a.socket.timeout(5000).emitWithAck('timerStart', payload);
      assert.equal(ack.status, 'error', `${name}: ack ${JSON.stringify(ack)}`);
      assert.ok(typeof ack.message === 'string' && ack.message.length > 0, `${name}: message in ${JSON.stringify(ack)}`);

      const mark = a.mark();
      a.socket.emit('timerStart', payload);
      const ex = await a.wait('exception', () => true, 5000, mark);
      assert.equal(ex.args[0].status, 'error', `${name}: exception ${JSON.stringify(ex.args)}`);
      assert.ok(ex.args[0].message.length > 0);
    }
    // No argument at all.
    const ack = await a.socket.timeout(5000).emitWithAck('timerStart');
    assert.equal(ack.status, 'error', `no argument: ack ${JSON.stringify(ack)}`);
    const mark = a.mark();
    a.socket.emit('timerStart');
    await a.wait('exception', () => true, 5000, mark);

    // The running timer went on untouched: on its deadlines, counting down.
    const m2 = a.mark();
    const next = await a.wait('tick', () => true, 2000, m2);
    const r = next.args[0].timer;
    assert.ok(r < 20 && r > 0, `tick ${r}`);
    for (const e of a.of('tick')) {
      const want = start + (20 - e.args[0].timer) * 1000;
      assert.ok(Math.abs(e.at - want) <= 400, `tick ${e.args[0].timer} off by ${e.at - want} ms`);
    }
    assert.equal(a.of('timerDone').length, 0);
    a.socket.emit('timerStop');
    a.socket.disconnect();
  });

  test('disconnectRequest with a bad or foreign socket id is refused', async () => {
    const a = await st.client({ token: st.token(uid('dr')) });
    for (const arg of [123, null, '', 'no-such-socket', 'x'.repeat(2000), { socketId: bystander.socket.id }, bystander.socket.id]) {
      const ack = await a.socket.timeout(5000).emitWithAck('disconnectRequest', arg);
      assert.equal(ack.status, 'error', `arg ${JSON.stringify(arg).slice(0, 40)}: ${JSON.stringify(ack)}`);
    }
    const ack = await a.socket.timeout(5000).emitWithAck('disconnectRequest');
    assert.equal(ack.status, 'error', `no argument: ${JSON.stringify(ack)}`);
    assert.equal(bystander.socket.connected, true);
    a.socket.disconnect();
  });

  test('an ack for an event no service handles carries an error', async () => {
    const a = await st.client({ token: st.token(uid('noone')) });
    const ack = await a.socket.timeout(8000).emitWithAck('nobodyListens', { x: 1 });
    assert.equal(ack.status, 'error', JSON.stringify(ack));
    assert.ok(typeof ack.message === 'string' && ack.message.length > 0, JSON.stringify(ack));
    a.socket.disconnect();
  });

  test('malformed packets on a raw WebSocket close the connection and leak no slot', async () => {
    const user = uid('raw');
    for (const frame of ['4abc', '42{}', '42[]', 'xyz', '', '42[1]']) {
      const ws = await st.ws();
      ws.send(`40${JSON.stringify({ token: st.token(user) })}`);
      assert.match(await ws.next(), /^40\{"sid":/);
      ws.send(frame);
      const closed = await Promise.race([ws.closed, sleep(5000).then(() => null)]);
      assert.ok(closed, `frame ${JSON.stringify(frame)}: the connection was not closed`);
    }
    // Before any CONNECT too.
    for (const frame of ['xyz', '', '4abc']) {
      const ws = await st.ws();
      ws.send(frame);
      const closed = await Promise.race([ws.closed, sleep(5000).then(() => null)]);
      assert.ok(closed, `frame ${JSON.stringify(frame)} before CONNECT: the connection was not closed`);
    }
    const socks = await openAll(user, 3);
    for (const s of socks) s.socket.disconnect();
  });

  test('an oversized WebSocket frame is closed with 1009', async () => {
    // On the wire: a frame header announcing maxPayload + 1 bytes is answered
    // with a close frame carrying 1009.
    const sock = net.connect(st.gatewayPort, '127.0.0.1');
    let buf = Buffer.alloc(0);
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
    });
    sock.on('error', () => {});
    const ended = new Promise((resolve) => sock.on('close', resolve));
    await new Promise((resolve) => sock.on('connect', resolve));
    sock.write(
      'GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n' +
        `Connection: Upgrade\r\nSec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    );
    await waitUntil('the Engine.IO open packet', () => buf.includes('"sid"'), 5000, 20);
    const header = Buffer.alloc(14);
    header[0] = 0x81; // FIN, text
    header[1] = 0x80 | 127; // masked, 64-bit length
    header.writeBigUInt64BE(1000001n, 2);
    crypto.randomBytes(4).copy(header, 10);
    sock.write(header);
    await Promise.race([ended, sleep(5000)]);
    const close = buf.subarray(buf.lastIndexOf(Buffer.from([0x88])));
    assert.equal(close.subarray(0, 4).toString('hex'), '880203f1', `last frame ${close.toString('hex')}`);
    sock.destroy();

    // With the ws library (socket.io-client's) sending the whole oversized
    // message, it reads the 1009 too: the gateway drains the frame before
    // closing, so the connection is not reset under the close frame.
    for (let i = 0; i < 5; i++) {
      const ws = await st.ws();
      ws.send(`42["big","${'x'.repeat(1000001)}"]`);
      const closed = await Promise.race([ws.closed, sleep(5000).then(() => null)]);
      assert.ok(closed, 'not closed');
      assert.equal(closed.code, 1009, `try ${i}: close ${closed.code}`);
    }
  });

  test('clients vanishing mid-handshake leak no slot', async () => {
    const user = uid('vanish');
    // Gone right after sending CONNECT, or a few ms later while the
    // handshake (verify, admit) is under way.
    for (const delayMs of [0, 0, 1, 3, 6]) {
      const ws = await st.ws();
      ws.send(`40${JSON.stringify({ token: st.token(user) })}`);
      if (delayMs) await sleep(delayMs);
      ws.terminate();
    }
    const socks = await openAll(user, 3);
    assert.equal(socks.length, 3);
    const msg = await st.connectError({ token: st.token(user) });
    assert.equal(msg, 'Too many connections', 'the limit still holds');
    for (const s of socks) s.socket.disconnect();
  });

  // rssOf reads a process's resident memory and its peak, in bytes.
  function rssOf(pid) {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (key) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)[1]) * 1024;
    return { rss: kb('VmRSS'), peak: kb('VmHWM') };
  }

  // MEMORY_BOUND is the most the gateway's peak resident memory may grow
  // while one client sends the worst inputs known (it grew by gigabytes
  // before their bounds).
  const MEMORY_BOUND = 96 * 1024 * 1024;

  test('one client sending the worst inputs keeps the gateway within its memory bound', async () => {
    const pid = st.procs.gateway.pid;
    try {
      fs.writeFileSync(`/proc/${pid}/clear_refs`, '5'); // the peak restarts from now
    } catch {
      // not allowed here: the peak may include earlier tests
    }
    const before = rssOf(pid);
    const user = uid('hostile');
    const login = async () => {
      const ws = await st.ws();
      ws.send(`40${JSON.stringify({ token: st.token(user) })}`);
      assert.match(await ws.next(), /^40\{"sid":/);
      return ws;
    };
    const closedWithin = async (ws, what) => {
      const closed = await Promise.race([ws.closed, sleep(10000).then(() => null)]);
      assert.ok(closed, `${what}: the connection was not closed`);
    };
    // One attachment named by 20 000 placeholders.
    let ws = await login();
    ws.send(`451-["x",${'{"_placeholder":true,"num":0},'.repeat(20000)}0]`);
    ws.send(crypto.randomBytes(50000));
    await closedWithin(ws, 'repeated placeholders');
    // A binary event nested 9 000 deep.
    ws = await login();
    ws.send(`451-["x",${'{"a":'.repeat(9000)}{"_placeholder":true,"num":0}${'}'.repeat(9000)}]`);
    ws.send(Buffer.alloc(900000));
    await closedWithin(ws, 'deep nesting');
    // 63 attachments of 1 MB before any CONNECT: dropped as they arrive.
    ws = await st.ws();
    ws.send(`4563-["x"]`);
    for (let i = 0; i < 63; i++) ws.send(Buffer.alloc(1000000));
    ws.send(`40${JSON.stringify({ token: st.token(user) })}`);
    assert.match(await ws.next(10000), /^40\{"sid":/);
    ws.close();
    // A polling POST of 1 MB of NOOPs.
    const open = await fetch(`${st.url}/socket.io/?EIO=4&transport=polling`).then((r) => r.text());
    const sid = JSON.parse(open.slice(1)).sid;
    const post = await fetch(`${st.url}/socket.io/?EIO=4&transport=polling&sid=${sid}`, {
      method: 'POST',
      body: '6\x1e'.repeat(333000) + '6',
      headers: { 'Content-Type': 'text/plain;charset=UTF-8' },
    });
    assert.equal(post.status, 400, 'a payload of 333 001 packets is refused');
    // Pings of 60 KB whose pongs the client never reads.
    const raw = net.connect(st.gatewayPort, '127.0.0.1');
    raw.on('error', () => {});
    await new Promise((resolve) => raw.on('connect', resolve));
    raw.pause(); // never read
    raw.write(
      'GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n' +
        `Connection: Upgrade\r\nSec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    );
    const ping = Buffer.from('2' + 'p'.repeat(60000));
    const frame = (payload) => {
      const mask = crypto.randomBytes(4);
      const head = Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 0xff]);
      const body = Buffer.from(payload);
      for (let i = 0; i < body.length; i++) body[i] ^= mask[i % 4];
      return Buffer.concat([head, mask, body]);
    };
    for (let i = 0; i < 2000 && !raw.destroyed; i++) {
      if (!raw.write(frame(ping))) await Promise.race([new Promise((r) => raw.once('drain', r)), sleep(200)]);
    }
    raw.destroy();
    await sleep(1000);
    const after = rssOf(pid);
    const grew = after.peak - before.rss;
    console.log(`# gateway RSS ${(before.rss / 1048576).toFixed(1)} MB before, peak ${(after.peak / 1048576).toFixed(1)} MB during the hostile inputs`);
    assert.ok(grew < MEMORY_BOUND, `the gateway's peak RSS grew by ${(grew / 1048576).toFixed(1)} MB, bound ${MEMORY_BOUND / 1048576} MB`);
    st.checkAlive();
  });

  test('every process is still up and the bystander still gets notifications', async () => {
    assert.deepEqual(st.alive().sort(), ['auth', 'gateway', 'nats', 'presence', 'timer']);
    assert.equal(bystander.socket.connected, true);
    assert.equal(bystander.of('$disconnect').length, 0);
    await st.notify(['-user', bystanderUser, '-event', 'greeting', '"still here"']);
    const g = await bystander.wait('greeting');
    assert.deepEqual(g.args, ['still here']);
  });
});
