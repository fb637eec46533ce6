'use strict';
// Expo / React Native style client: socket.io-client v4, websocket transport,
// the raw token in the CONNECT auth payload.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startStack, sleep, uid } = require('../harness');

const ISO_8601 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;
const UA = 'expo-e2e/1.0';

describe('Expo-style client', { timeout: 120000 }, () => {
  let st;
  before(async () => {
    st = await startStack('expo');
  });
  after(async () => {
    if (st) await st.stop();
  });

  const expo = (user, opts = {}) =>
    st.client({ token: st.token(user) }, { extraHeaders: { 'User-Agent': UA }, ...opts });

  test('connects with the raw token in auth and gets a socket id', async () => {
    const a = await expo(uid('expo'));
    assert.equal(a.socket.connected, true);
    assert.match(a.socket.id, /^[A-Za-z0-9_-]{20}$/);
    a.socket.disconnect();
  });

  test('connections lists the user\'s other sockets to each of them', async () => {
    const user = uid('conns');
    const a = await expo(user);
    const markA = a.mark();
    const b = await expo(user);

    // The second socket gets a list holding the first.
    const forB = await b.wait('connections', (list) => Array.isArray(list) && list.some((c) => c.socketId === a.socket.id));
    const [listB] = forB.args;
    assert.equal(listB.length, 1, `B's list holds only A: ${JSON.stringify(listB)}`);
    const c = listB[0];
    assert.deepEqual(Object.keys(c).sort(), ['createdAt', 'deviceId', 'ip', 'socketId', 'userAgent', 'userId']);
    assert.equal(c.socketId, a.socket.id);
    assert.equal(c.userId, user);
    assert.equal(c.deviceId, a.socket.id, 'without a deviceId the socket id serves as device id');
    assert.match(c.ip, /127\.0\.0\.1/);
    assert.equal(c.userAgent, UA);
    assert.match(c.createdAt, ISO_8601);
    assert.ok(Math.abs(Date.parse(c.createdAt) - Date.now()) < 60000, `createdAt ${c.createdAt} is now`);

    // The first gets an update listing the second (and not itself).
    const forA = await a.wait('connections', (list) => list.some((x) => x.socketId === b.socket.id), 5000, markA);
    const [listA] = forA.args;
    assert.deepEqual(listA.map((x) => x.socketId), [b.socket.id]);

    // When B leaves, A is told: its list no longer holds B.
    const markA2 = a.mark();
    b.socket.disconnect();
    const gone = await a.wait('connections', (list) => !list.some((x) => x.socketId === b.socket.id), 5000, markA2);
    assert.deepEqual(gone.args[0], []);
    a.socket.disconnect();
  });

  test('greeting published by a separate process reaches all of the user\'s sockets and no other user', async () => {
    const user = uid('greet');
    const other = uid('greet-other');
    const a1 = await expo(user);
    const a2 = await expo(user);
    const o = await expo(other);

    await st.notify(['-user', user, '-event', 'greeting', '"hello"']);
    const [g1, g2] = await Promise.all([a1.wait('greeting'), a2.wait('greeting')]);
    assert.deepEqual(g1.args, ['hello']);
    assert.deepEqual(g2.args, ['hello']);

    await sleep(500);
    assert.equal(o.of('greeting').length, 0, 'the other user got no greeting');
    assert.equal(a1.of('greeting').length, 1, 'exactly one greeting per socket');
    assert.equal(a2.of('greeting').length, 1, 'exactly one greeting per socket');
    for (const r of [a1, a2, o]) r.socket.disconnect();
  });

  test('disconnectRequest closes the user\'s own other socket with a server disconnect and no reconnect', async () => {
    const user = uid('kick');
    const a = await expo(user);
    // The target would reconnect on its own after a transport loss.
    const b = await expo(user, { reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 200 });
    const bid = b.socket.id;
    const markA = a.mark();

    a.socket.emit('disconnectRequest', bid);
    const d = await b.wait('$disconnect');
    assert.equal(d.args[0], 'io server disconnect', 'the target got the Socket.IO DISCONNECT (41)');
    assert.equal(a.socket.connected, true, 'the requester stays connected');

    await a.wait('connections', (list) => !list.some((x) => x.socketId === bid), 5000, markA);
    await sleep(1500);
    assert.equal(b.of('$connect').length, 1, 'the kicked socket did not reconnect');
    assert.equal(b.socket.connected, false);
    assert.equal(b.socket.active, false);
    assert.equal(a.of('exception').length, 0);
    a.socket.disconnect();
  });

  test('disconnectRequest for another user\'s socket is refused and the target stays connected', async () => {
    const user = uid('kicker');
    const victim = uid('victim');
    const a = await expo(user);
    const v = await expo(victim);

    // With an ack: the ack carries the error.
    const ack = await a.socket.timeout(5000).emitWithAck('disconnectRequest', v.socket.id);
    assert.equal(ack.status, 'error', `ack ${JSON.stringify(ack)}`);
    assert.equal(typeof ack.message, 'string');
    assert.ok(ack.message.length > 0);

    // Without an ack: an exception event.
    a.socket.emit('disconnectRequest', v.socket.id);
    const ex = await a.wait('exception');
    assert.equal(ex.args[0].status, 'error');
    assert.ok(ex.args[0].message.length > 0);

    await sleep(500);
    assert.equal(v.socket.connected, true, 'the target stays connected');
    assert.equal(v.of('$disconnect').length, 0);
    await st.notify(['-user', victim, '-event', 'still', 'true']);
    await v.wait('still');
    a.socket.disconnect();
    v.socket.disconnect();
  });

  test('the 4th simultaneous connection of a user gets "Too many connections"', async () => {
    const user = uid('limit');
    const three = [];
    for (let i = 0; i < 3; i++) three.push(await expo(user));
    const msg = await st.connectError({ token: st.token(user) });
    assert.equal(msg, 'Too many connections');
    for (const r of three) assert.equal(r.socket.connected, true, 'the first three stay connected');

    // A freed slot can be taken again.
    three[0].socket.disconnect();
    let again;
    for (let i = 0; i < 30 && !again; i++) {
      try {
        again = await expo(user);
      } catch (err) {
        assert.match(err.message, /Too many connections/);
        await sleep(100);
      }
    }
    assert.ok(again, 'a slot is free after one socket left');
    for (const r of [...three, again]) r.socket.disconnect();
  });

  test('bad token gets "Unauthorized", then a fresh token connects on the same engine connection', async () => {
    const user = uid('retry');

    // socket.io-client: connect_error "Unauthorized", then socket.auth with a
    // fresh token and socket.connect() connects. (socket.io-client 4.x closes
    // its engine itself after a CONNECT_ERROR when no other namespace of the
    // manager is active, so its retry opens a new engine; the engine close
    // must come from the client, not from the server.)
    const s = st.rawIO({ token: st.token(user, { secret: 'x'.repeat(48) }) });
    const engineCloses = [];
    s.io.on('open', () => s.io.engine.once('close', (reason) => engineCloses.push(reason)));
    const err = await new Promise((resolve, reject) => {
      s.once('connect', () => reject(new Error('connected with a bad token')));
      s.once('connect_error', resolve);
    });
    assert.equal(err.message, 'Unauthorized');
    s.auth = { token: st.token(user) };
    s.connect();
    await new Promise((resolve, reject) => {
      s.once('connect', resolve);
      s.once('connect_error', (e) => reject(new Error(`connect_error ${e.message}`)));
    });
    assert.equal(s.connected, true);
    assert.deepEqual(engineCloses, ['forced close'], 'the server did not close the engine after CONNECT_ERROR');
    s.disconnect();

    // On the wire: after 44 the server keeps the engine open and accepts a
    // new CONNECT on it (the same engine id).
    const ws = await st.ws();
    ws.send(`40${JSON.stringify({ token: 'not-a-token' })}`);
    assert.equal(await ws.next(), '44{"message":"Unauthorized"}');
    await assert.rejects(ws.next(300), /no frame/, 'nothing follows the CONNECT_ERROR');
    assert.equal(ws.readyState, ws.OPEN, 'the engine connection stays open');
    ws.send(`40${JSON.stringify({ token: st.token(user) })}`);
    const ok = await ws.next();
    assert.match(ok, /^40\{"sid":"[A-Za-z0-9_-]+"\}$/);
    assert.equal(ws.readyState, ws.OPEN);
    ws.close();
  });
});
