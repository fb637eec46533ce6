'use strict';
// Flutter style client (Dart socket_io_client 2.x behaves like this):
// "Bearer <token>" in the auth payload and the device id in the handshake
// query. Covers the server-side timers.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startStack, sleep, uid } = require('../harness');

describe('Flutter-style client and timers', { timeout: 120000 }, () => {
  let st;
  before(async () => {
    st = await startStack('flutter');
  });
  after(async () => {
    if (st) await st.stop();
  });

  const flutter = (user, deviceId = 'phone-1') =>
    st.client({ token: `Bearer ${st.token(user)}` }, { query: { deviceId } });

  const ticks = (rec) => rec.of('tick').map((e) => e.args[0].timer);

  // assertOnSchedule checks that each tick r arrived at start + (dur - r) s
  // within tol ms.
  function assertOnSchedule(rec, start, dur, tol) {
    for (const e of rec.of('tick')) {
      const r = e.args[0].timer;
      const want = start + (dur - r) * 1000;
      assert.ok(Math.abs(e.at - want) <= tol, `tick ${r} arrived ${e.at - want} ms off its deadline (tolerance ${tol} ms)`);
    }
  }

  test('connects with "Bearer <token>" and the deviceId query', async () => {
    const user = uid('fl');
    const other = await flutter(user, 'tablet-1');
    const a = await flutter(user, 'phone-1');
    const c = await a.wait('connections', (l) => l.length === 1);
    assert.equal(c.args[0][0].deviceId, 'tablet-1');
    assert.equal(c.args[0][0].socketId, other.socket.id);
    a.socket.disconnect();
    other.socket.disconnect();
  });

  test('timerStart {dur:3} ticks 3,2,1,0 one second apart, then timerDone', async () => {
    const a = await flutter(uid('t3'));
    a.socket.emit('timerStart', { dur: 3 });
    const done = await a.wait('timerDone', () => true, 6000);
    const ts = a.of('tick');
    assert.deepEqual(ts.map((e) => e.args[0]), [{ timer: 3 }, { timer: 2 }, { timer: 1 }, { timer: 0 }]);
    for (let i = 1; i < ts.length; i++) {
      const gap = ts[i].at - ts[i - 1].at;
      assert.ok(Math.abs(gap - 1000) <= 250, `gap ${i} is ${gap} ms, want 1000 ± 250`);
    }
    assert.ok(done.at >= ts[3].at, 'timerDone comes after the 0 tick');
    assert.equal(done.args[0].timer, 0, `timerDone payload ${JSON.stringify(done.args)}`);
    await sleep(1200);
    assert.equal(a.of('tick').length, 4, 'no tick after timerDone');
    assert.equal(a.of('timerDone').length, 1, 'timerDone exactly once');
    const list = await a.socket.timeout(5000).emitWithAck('timerList');
    assert.equal(list.status, 'ok', JSON.stringify(list));
    assert.ok(!JSON.stringify(list).includes('phone-1'), `the finished timer is gone: ${JSON.stringify(list)}`);
    a.socket.disconnect();
  });

  test('timerStop stops the ticks', async () => {
    const a = await flutter(uid('stop'));
    a.socket.emit('timerStart', { dur: 10 });
    await a.wait('tick', (t) => t.timer === 9, 3000);
    a.socket.emit('timerStop');
    const stoppedAt = Date.now();
    await sleep(2000);
    const late = a.of('tick').filter((e) => e.at > stoppedAt + 300);
    assert.deepEqual(late.map((e) => e.args[0].timer), [], 'no tick after timerStop');
    assert.equal(a.of('timerDone').length, 0);
    // Idempotent: stopping again is no error.
    const ack = await a.socket.timeout(5000).emitWithAck('timerStop');
    assert.equal(ack.status, 'ok', JSON.stringify(ack));
    assert.equal(a.of('exception').length, 0);
    a.socket.disconnect();
  });

  test('two devices of one user keep separate timers and another user never sees them', async () => {
    const user = uid('two');
    const phone = await flutter(user, 'phone-1');
    const tablet = await flutter(user, 'tablet-1');
    const stranger = await flutter(uid('stranger'), 'phone-1'); // same device id, other user

    phone.socket.emit('timerStart', { dur: 3 });
    tablet.socket.emit('timerStart', { dur: 2 });
    await Promise.all([phone.wait('timerDone', () => true, 6000), tablet.wait('timerDone', () => true, 6000)]);
    assert.deepEqual(ticks(phone), [3, 2, 1, 0]);
    assert.deepEqual(ticks(tablet), [2, 1, 0]);
    assert.equal(phone.of('timerDone').length, 1);
    assert.equal(tablet.of('timerDone').length, 1);

    // A timer stopped on one device leaves the other one running.
    phone.socket.emit('timerStart', { dur: 30 });
    tablet.socket.emit('timerStart', { dur: 30 });
    await Promise.all([phone.wait('tick', (t) => t.timer === 30), tablet.wait('tick', (t) => t.timer === 30)]);
    const list = await phone.socket.timeout(5000).emitWithAck('timerList');
    const text = JSON.stringify(list);
    assert.ok(text.includes('phone-1') && text.includes('tablet-1'), `timerList lists both devices: ${text}`);
    const mark = tablet.mark();
    phone.socket.emit('timerStop');
    await tablet.wait('tick', (t) => t.timer === 28, 4000, mark);
    const after = await phone.socket.timeout(5000).emitWithAck('timerList');
    assert.ok(!JSON.stringify(after).includes('phone-1') && JSON.stringify(after).includes('tablet-1'), JSON.stringify(after));
    tablet.socket.emit('timerStop');

    const strangerList = await stranger.socket.timeout(5000).emitWithAck('timerList');
    assert.ok(!JSON.stringify(strangerList).includes('tablet-1'), `another user's list: ${JSON.stringify(strangerList)}`);
    assert.equal(stranger.of('tick').length, 0, 'another user sees no tick');
    assert.equal(stranger.of('timerDone').length, 0);
    for (const r of [phone, tablet, stranger]) r.socket.disconnect();
  });

  test('a device that connects while its timer runs gets the current tick at once', async () => {
    const user = uid('late');
    const first = await flutter(user, 'phone-1');
    first.socket.emit('timerStart', { dur: 10 });
    await first.wait('tick', (t) => t.timer === 9, 3000);
    // Connect right after a tick: the next regular one is ~1 s away.
    await sleep(50);
    const t0 = Date.now();
    const second = await flutter(user, 'phone-1'); // same device, new connection
    const tick = await second.wait('tick', () => true, 2000);
    assert.ok(tick.at - t0 < 500, `first tick ${tick.at - t0} ms after connecting, want at once`);
    assert.ok([9, 8].includes(tick.args[0].timer), `current tick ${tick.args[0].timer}, want the remaining seconds`);
    // Another device of the user gets nothing.
    const other = await flutter(user, 'tablet-1');
    await sleep(1200);
    assert.equal(other.of('tick').length, 0, 'another device got ticks');
    first.socket.emit('timerStop');
    for (const r of [first, second, other]) r.socket.disconnect();
  });

  test('a timer survives a restart of the timer service with its deadline unchanged', async () => {
    const dur = 6;
    const a = await flutter(uid('restart'));
    a.socket.emit('timerStart', { dur });
    const first = await a.wait('tick', (t) => t.timer === dur);
    const start = first.at;
    await a.wait('tick', (t) => t.timer === dur - 2, 4000);
    // Mid-countdown: SIGTERM the timer process and start it again.
    const { exit } = await st.restart('timer', { wait: false });
    assert.equal(exit.code, 0, `timer exited ${JSON.stringify(exit)} on SIGTERM`);
    const done = await a.wait('timerDone', () => true, dur * 1000 + 3000);
    assertOnSchedule(a, start, dur, 400);
    const values = ticks(a);
    assert.equal(values.filter((v) => v === 0).length, 1, `0 exactly once: ${values}`);
    assert.ok(values.includes(1), `the countdown went on after the restart: ${values}`);
    // The new lease holder sends the current value at once on takeover, so
    // the value ticking at the restart may come twice; the rest counts down.
    assert.deepEqual([...values].sort((x, y) => y - x), values, `ticks count down: ${values}`);
    assert.deepEqual(values.slice(0, 3), [6, 5, 4], `ticks before the restart: ${values}`);
    const zero = a.of('tick').find((e) => e.args[0].timer === 0);
    assert.ok(done.at >= zero.at, 'timerDone follows the 0 tick');
    assert.ok(Math.abs(zero.at - (start + dur * 1000)) <= 400, 'the deadline did not move');
    await sleep(1200);
    assert.equal(a.of('timerDone').length, 1, 'timerDone exactly once');
    assert.equal(ticks(a).length, values.length, 'no tick after timerDone');
    assert.deepEqual(st.alive().sort(), ['auth', 'gateway', 'nats', 'presence', 'timer']);
    a.socket.disconnect();
  });
});
