'use strict';
// In-band token refresh with the real socket.io-client: tokenExpiring, then
// refreshToken with an ack, as an Expo app does with getIdToken(true); with
// gateway.expire_sockets a socket that does not refresh gets `41` after the
// grace. Also: claims for backend services and a per-user limit from a
// claim.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { connect: natsConnect } = require('nats');
const { startStack, sleep, uid } = require('../harness');

const LEAD_S = 2;

// expOf reads a JWT's exp (unix seconds).
const expOf = (token) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url')).exp;
const GRACE_MS = 1000;

describe('token refresh', { timeout: 120000 }, () => {
  let st;
  let nc;
  before(async () => {
    st = await startStack('refresh', {
      gatewayEnv: {
        SB_GATEWAY_EXPIRE_SOCKETS: 'true',
        SB_GATEWAY_TOKEN_EXPIRING_LEAD: `${LEAD_S}s`,
        SB_GATEWAY_EXPIRE_GRACE: `${GRACE_MS}ms`,
      },
      env: {
        auth: { SB_AUTH_CLAIMS: 'role,max_conns' },
        presence: { SB_PRESENCE_LIMIT_CLAIM: 'max_conns' },
      },
    });
    nc = await natsConnect({ servers: st.natsUrl });
  });
  after(async () => {
    if (nc) await nc.close();
    if (st) await st.stop();
  });

  test('a client that refreshes stays connected past its first token', async () => {
    const user = uid('fresh');
    const ttlSec = 4;
    const first = st.token(user, { ttlSec });
    const exp = expOf(first);
    const c = await st.client({ token: first });
    const [warn] = (await c.wait('tokenExpiring', () => true, 8000)).args;
    assert.equal(warn.exp, exp, 'tokenExpiring carries the token expiry');
    const early = warn.exp * 1000 - Date.now();
    assert.ok(early > 0 && early <= LEAD_S * 1000 + 100, `tokenExpiring ${early} ms before the expiry`);

    // What an app does: fetch a new token and send it.
    const ack = await c.socket.timeout(5000).emitWithAck('refreshToken', { token: st.token(user, { ttlSec: 3600 }) });
    assert.equal(ack.status, 'ok');
    assert.ok(ack.exp >= exp + 3000, `ack ${JSON.stringify(ack)} carries the new expiry`);

    // Past the first token's expiry and the grace, still connected.
    await sleep(exp * 1000 + GRACE_MS + 1000 - Date.now());
    assert.equal(c.socket.connected, true);
    assert.equal(c.of('$disconnect').length, 0, 'no disconnect');
    // And still working: an ack'ed built-in event is answered.
    const timers = await c.socket.timeout(5000).emitWithAck('timerList');
    assert.equal(timers.status, 'ok', `timerList answered ${JSON.stringify(timers)}`);
    c.socket.disconnect();
  });

  test('a client that does not refresh gets 41 after the grace', async () => {
    const user = uid('stale');
    const ttlSec = 2;
    const token = st.token(user, { ttlSec });
    const exp = expOf(token);
    const c = await st.client({ token });
    await c.wait('tokenExpiring', () => true, 5000);
    const gone = await c.wait('$disconnect', () => true, (ttlSec + 5) * 1000);
    // socket.io-client names a server's DISCONNECT (41) this way, and does
    // not reconnect after it.
    assert.equal(gone.args[0], 'io server disconnect');
    assert.ok(gone.at >= exp * 1000 + GRACE_MS - 50, `ended ${exp * 1000 + GRACE_MS - gone.at} ms before the expiry and grace`);
  });

  test("a refresh with another user's token is refused and the socket keeps its user", async () => {
    const user = uid('keep');
    const c = await st.client({ token: st.token(user) });
    const ack = await c.socket.timeout(5000).emitWithAck('refreshToken', { token: st.token(uid('thief')) });
    assert.deepEqual(ack, { status: 'error', message: 'Token belongs to another user' });
    const bad = await c.socket.timeout(5000).emitWithAck('refreshToken', { token: 'not-a-token' });
    assert.deepEqual(bad, { status: 'error', message: 'Unauthorized' });
    assert.equal(c.socket.connected, true);

    // A second socket of the user lists the first as the user's.
    const d = await st.client({ token: st.token(user) });
    const seen = await d.wait('connections', (list) => list.some((x) => x.socketId === c.socket.id));
    const first = seen.args[0].find((x) => x.socketId === c.socket.id);
    assert.equal(first.userId, user);
    c.socket.disconnect();
    d.socket.disconnect();
  });

  test('selected claims travel with client events; tokens do not', async () => {
    const user = uid('claims');
    const sub = nc.subscribe('sb.in.>');
    const got = (async () => {
      const out = [];
      for await (const m of sub) {
        out.push({ subject: m.subject, headers: m.headers, data: m.string() });
        if (m.subject === 'sb.in.hello') break;
      }
      return out;
    })();
    await nc.flush();
    const token = st.token(user, { extra: { role: 'editor', email: 'x@example.com' } });
    const c = await st.client({ token });
    const ack = await c.socket.timeout(5000).emitWithAck('refreshToken', { token: st.token(user, { ttlSec: 7200, extra: { role: 'editor' } }) });
    assert.equal(ack.status, 'ok');
    c.socket.emit('hello', 1);
    const msgs = await got;
    const hello = msgs.find((m) => m.subject === 'sb.in.hello');
    assert.equal(hello.headers.get('Sb-User'), user);
    assert.equal(hello.headers.get('Sb-Claims'), '{"role":"editor"}');
    assert.ok(!msgs.some((m) => m.subject === 'sb.in.refreshToken'), 'refreshToken stays in the gateway');
    assert.ok(!msgs.some((m) => m.data.includes(token)), 'no token on sb.in');
    c.socket.disconnect();
  });

  test('a claim raises the per-user limit, exactly', async () => {
    const user = uid('paid');
    const token = st.token(user, { extra: { max_conns: 5 } });
    const results = await Promise.allSettled(Array.from({ length: 8 }, () => st.client({ token })));
    const ok = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r) => r.status === 'rejected').map((r) => r.reason.message);
    assert.equal(ok.length, 5, `connected ${ok.length}, refused ${refused}`);
    assert.ok(refused.every((m) => m === 'connect_error: Too many connections'), refused.join(', '));
    for (const r of ok) r.value.socket.disconnect();

    // Without the claim: the default 3.
    const free = uid('free');
    const plain = await Promise.allSettled(Array.from({ length: 5 }, () => st.client({ token: st.token(free) })));
    assert.equal(plain.filter((r) => r.status === 'fulfilled').length, 3);
    for (const r of plain) if (r.status === 'fulfilled') r.value.socket.disconnect();
  });
});
