'use strict';
// A gateway that dies (SIGKILL) leaves no slot behind: presence purges its
// sockets within gateway_ttl (default 4 s) plus a sweep, under 5 s, with
// the default settings; the user connects again through the other gateway.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { connect, JSONCodec } = require('nats');
const { startStack, sleep, uid } = require('../harness');

const jc = JSONCodec();

describe('gateway crash', { timeout: 60000 }, () => {
  let st;
  let nc;
  before(async () => {
    st = await startStack('crash', { services: ['auth', 'presence', 'timer', 'gateway', 'gateway2'] });
    nc = await connect({ servers: st.natsUrl });
  });
  after(async () => {
    if (nc) await nc.close();
    if (st) await st.stop();
  });

  const listed = async (userId) => {
    const m = await nc.request('sb.presence.list', jc.encode({ userId }), { timeout: 3000 });
    return (jc.decode(m.data).connections || []).map((c) => c.socketId);
  };

  test('slots of a killed gateway are free within 5 s', async () => {
    const user = uid('crash');
    const a = await st.client({ token: st.token(user) }, {}, st.gatewayURL('gateway2'));
    const sid = a.socket.id;
    assert.deepEqual(await listed(user), [sid]);
    const killed = Date.now();
    await st.kill('gateway2');
    let freed = 0;
    while (!freed && Date.now() - killed < 15000) {
      if (!(await listed(user)).includes(sid)) freed = Date.now() - killed;
      else await sleep(50);
    }
    process.stderr.write(`# crash: slot freed ${freed} ms after kill -9 of its gateway\n`);
    assert.ok(freed > 0 && freed <= 5000, `slot freed after ${freed} ms`);
    const b = await st.client({ token: st.token(user) }, {}, st.gatewayURL('gateway'));
    assert.deepEqual(await listed(user), [b.socket.id]);
  });
});
