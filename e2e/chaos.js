'use strict';
// The chaos run: real Socket.IO clients connect and leave through the
// round-robin proxy, backend notifications flow, devices run timers, while
// a driver kills (SIGKILL) and restarts one process at a time: a gateway, a
// presence, a timer, an auth, a NATS node, the node leading a bucket's
// stream. The invariants are checked as events arrive and at the end; each
// violation carries the events that led to it.

const crypto = require('node:crypto');
const { connect, headers, JSONCodec } = require('nats');
const { sleep, waitUntil } = require('./harness');

const jc = JSONCodec();

// What the driver kills, in a shuffled cycle so that a short run meets
// every kind.
const KINDS = ['gateway', 'presence', 'timer', 'auth', 'nats', 'leader'];

const rand = (lo, hi) => lo + Math.floor(Math.random() * (hi - lo + 1));
const pickOne = (a) => a[Math.floor(Math.random() * a.length)];
function shuffled(a) {
  const out = a.slice();
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

class Chaos {
  // opts: users, devices (per user), limit (max_connections_per_user),
  // gatewayTTL (ms), durationMs, log (a function for progress lines).
  constructor(st, opts) {
    this.st = st;
    this.o = { users: 10, devices: 3, limit: 2, gatewayTTL: 4000, durationMs: 60000, log: () => {}, ...opts };
    this.run = crypto.randomBytes(3).toString('hex');
    this.t0 = Date.now();
    this.events = [];
    this.violations = [];
    this.sessions = []; // one per admitted socket
    this.notes = []; // published notifications
    this.timers = []; // started timers
    this.kills = []; // {kind, name, at, back}
    this.users = [];
    this.running = true;
  }

  at() {
    return Date.now() - this.t0;
  }

  event(kind, who, detail = '') {
    this.events.push({ t: this.at(), kind, who, detail });
  }

  // violate records a broken invariant with the events of who (a user, a
  // device) and every kill of the 20 s before it.
  violate(invariant, who, msg) {
    const now = this.at();
    const trail = this.events.filter((e) => (e.who && who && e.who.startsWith(who)) || (e.kind === 'kill' && e.t > now - 20000));
    const lines = trail.slice(-40).map((e) => `  ${(e.t / 1000).toFixed(3)}s ${e.kind} ${e.who || ''} ${e.detail}`);
    this.violations.push(`${invariant}: ${msg}\n${lines.join('\n')}`);
  }

  // natsKillNear reports whether a NATS node was down around [from, to]:
  // core NATS delivery is at most once across a node's death, so losses
  // (never repeats) are allowed in that window.
  natsKillNear(from, to) {
    return this.kills.some((k) => (k.kind === 'nats' || k.kind === 'leader') && k.at - 2000 < to && (k.back || Infinity) + 6000 > from);
  }

  async start() {
    const st = this.st;
    this.nc = await connect({
      servers: st.natsUrl.split(','),
      user: 'app',
      pass: st.passwords.app,
      inboxPrefix: '_INBOX_app',
      maxReconnectAttempts: -1,
      reconnectTimeWait: 200,
    });
    for (let u = 0; u < this.o.users; u++) {
      const user = { id: `c${this.run}u${u}`, connected: new Set(), belowSince: 0, devices: [] };
      this.users.push(user);
      for (let d = 0; d < this.o.devices; d++) {
        // The first device of every other user stays connected as long as
        // it can (for the notification check); the others come and go.
        const dev = { user, id: `d${d}`, stable: d === 0 && u % 2 === 0, timers: d === 1, session: null, timer: null };
        user.devices.push(dev);
      }
    }
    this.loops = [];
    for (const user of this.users) {
      for (const dev of user.devices) {
        this.loops.push(this.deviceLoop(dev));
        if (dev.timers) this.loops.push(this.timerLoop(dev));
      }
    }
    this.loops.push(this.notifyLoop());
    this.driver = this.driveLoop();
    this.o.log(`t0 ${new Date(this.t0).toISOString()}`);
  }

  // ---- clients ----

  async deviceLoop(dev) {
    const who = `${dev.user.id}/${dev.id}`;
    await sleep(rand(0, 2000));
    while (this.running) {
      while (this.frozen && this.running) await sleep(100);
      if (!this.running) return;
      const s = this.st.rawIO({ token: this.st.token(dev.user.id), deviceId: dev.id });
      const outcome = await new Promise((resolve) => {
        const t = setTimeout(() => resolve({ err: 'connect timeout' }), 8000);
        s.once('connect', () => {
          clearTimeout(t);
          resolve({});
        });
        s.once('connect_error', (err) => {
          clearTimeout(t);
          resolve({ err: err.message });
        });
      });
      if (outcome.err) {
        s.disconnect();
        this.st.sockets.delete(s);
        this.event('refused', who, outcome.err);
        if (outcome.err === 'Too many connections') this.checkLeak(dev.user, who);
        await sleep(rand(300, 900));
        continue;
      }
      const sess = { sid: s.id, user: dev.user, dev, from: this.at(), to: null, notes: new Map(), socket: s };
      this.sessions.push(sess);
      dev.session = sess;
      const users = dev.user.connected;
      users.add(sess);
      this.event('connect', who, s.id);
      if (users.size > this.o.limit) {
        this.violate('limit', dev.user.id, `${users.size} sockets admitted at once, limit ${this.o.limit}: ${[...users].map((x) => x.sid).join(' ')}`);
      }
      if (users.size >= this.o.limit) dev.user.belowSince = 0;
      s.on('note', (body) => {
        const n = (sess.notes.get(body.id) || 0) + 1;
        sess.notes.set(body.id, n);
        if (n > 1) this.violate('notify', who, `note ${body.id} delivered ${n} times to ${s.id}`);
      });
      s.on('tick', (body) => this.onTick(dev, body));
      s.on('timerDone', (body) => this.onDone(dev, body));
      const gone = new Promise((resolve) => s.once('disconnect', (reason) => resolve(reason)));
      const stay = dev.stable ? Infinity : rand(1500, 7000);
      let reason = await Promise.race([gone, this.until(stay)]);
      if (reason === undefined) {
        // Our choice (or the end of the run): leave.
        s.disconnect();
        reason = 'left';
      }
      this.st.sockets.delete(s);
      sess.to = this.at();
      users.delete(sess);
      if (users.size < this.o.limit && !dev.user.belowSince) dev.user.belowSince = this.at();
      dev.session = null;
      this.event('disconnect', who, `${s.id} ${reason}`);
      if (!this.running) return;
      await sleep(rand(200, 700));
    }
  }

  // until resolves (undefined) after ms, or when the run stops; never
  // while the clients are frozen.
  until(ms) {
    return new Promise((resolve) => {
      const started = Date.now();
      const tick = () => {
        if (!this.running || (!this.frozen && Date.now() - started >= ms)) resolve(undefined);
        else setTimeout(tick, 100);
      };
      tick();
    });
  }

  // checkLeak: a refusal while the user holds fewer than the limit is fine
  // only briefly (a release on its way, a dead gateway not yet purged).
  checkLeak(user, who) {
    if (user.connected.size >= this.o.limit || !user.belowSince) return;
    // While presence or the bucket is unavailable (its NATS node or stream
    // leader died, an instance is restarting), releases wait and retry:
    // the clock starts once they are back. Releases still waiting in a
    // gateway that dies are done by presence's purge of that gateway,
    // gateway_ttl after its death: the clock starts again there too.
    const now = this.at();
    const outage = this.kills.filter((k) => ['nats', 'leader', 'presence', 'gateway'].includes(k.kind) && k.at < now).map((k) => k.back || now);
    const since = Math.max(user.belowSince, ...outage.filter((b) => b > user.belowSince));
    const below = now - since;
    // gateway_ttl plus a few seconds: a release retry round (two
    // heartbeats) and presence's own recovery after an election.
    if (below > this.o.gatewayTTL + 8000) {
      this.violate('slot', user.id, `${who} refused with ${user.connected.size} sockets open for ${below} ms (limit ${this.o.limit}): a dead socket's slot was not freed`);
    }
  }

  // ---- timers ----

  async timerLoop(dev) {
    const who = `${dev.user.id}/${dev.id}`;
    while (this.running) {
      const sess = dev.session;
      if (!sess) {
        await sleep(200);
        continue;
      }
      const dur = rand(2, 5);
      const timer = { dev, dur, sent: this.at(), acked: null, ticks: [], zeros: 0, dones: 0, doneAt: null, ackErr: null };
      // The first tick may come before the ack.
      dev.timer = timer;
      try {
        const ack = await sess.socket.timeout(4000).emitWithAck('timerStart', { dur });
        if (ack && ack.status === 'ok') timer.acked = this.at();
        else timer.ackErr = JSON.stringify(ack);
      } catch (err) {
        timer.ackErr = err.message;
      }
      // Without an ack the timer may still have started (a reply lost
      // with a killed process, "Service unavailable" after the request
      // went out): it counts as maybe started.
      this.timers.push(timer);
      this.event('timer-start', who, `dur ${dur} ${timer.acked ? 'acked' : `unacked: ${timer.ackErr}`}`);
      // The next one starts after this one's end: its timerDone, or 3.5 s
      // past the deadline (15 s around a NATS node's death, when the end
      // may come late). A start before the end would be a replacement.
      const end = (timer.acked || timer.sent + 4000) + dur * 1000;
      while (this.running && timer.dones === 0) {
        const now = this.at();
        if (now > end + 15000 || (now > end + 3500 && !this.natsKillNear(timer.sent, now))) break;
        await sleep(100);
      }
    }
  }

  onTick(dev, body) {
    const timer = dev.timer;
    const now = this.at();
    const who = `${dev.user.id}/${dev.id}`;
    if (!timer) {
      this.violate('timer', who, `tick ${JSON.stringify(body)} with no timer started`);
      return;
    }
    const n = body.timer;
    timer.ticks.push({ t: now, n });
    if (timer.dones > 0) this.violate('timer', who, `tick ${n} after timerDone`);
    // Remaining time is between these (the start happened between the
    // emit and the ack).
    const latest = (timer.acked || timer.sent + 4000) + timer.dur * 1000 - now;
    const earliest = timer.sent + timer.dur * 1000 - now;
    // A 0 is the edge, kept in a stream until it reaches the device: it may
    // arrive late when the stream's leader changes (checked in
    // checkTimers); every other tick is current or not sent at all.
    const stale = n !== 0 && n * 1000 > latest + 2500;
    if (!Number.isInteger(n) || n < 0 || n * 1000 < earliest - 1500 || stale) {
      this.violate('timer', who, `wrong tick ${n}: ${(earliest / 1000).toFixed(2)}..${(latest / 1000).toFixed(2)} s remained`);
    }
    if (n === 0) {
      timer.zeros++;
      if (timer.zeros > 1) this.violate('timer', who, `second 0 tick`);
    }
  }

  onDone(dev, body) {
    const timer = dev.timer;
    const who = `${dev.user.id}/${dev.id}`;
    if (!timer) {
      this.violate('timer', who, `timerDone ${JSON.stringify(body)} with no timer started`);
      return;
    }
    timer.dones++;
    timer.doneAt = this.at();
    if (timer.dones > 1) this.violate('timer', who, 'second timerDone');
  }

  // connectedThrough reports whether one socket of dev was connected from
  // before from until after to.
  connectedThrough(dev, from, to) {
    return this.sessions.some((s) => s.dev === dev && s.from <= from && (s.to === null || s.to >= to));
  }

  // ---- notifications ----

  async notifyLoop() {
    let id = 0;
    while (this.running) {
      const user = pickOne(this.users);
      const h = headers();
      h.set('Sb-Event', 'note');
      id++;
      this.nc.publish(`sb.out.user.${user.id}`, jc.encode({ id }), { headers: h });
      this.notes.push({ id, user, t: this.at() });
      await sleep(50);
    }
  }

  // ---- the driver ----

  async driveLoop() {
    const st = this.st;
    let cycle = [];
    await sleep(3000);
    while (this.running && this.at() < this.o.durationMs - 5000) {
      if (!cycle.length) cycle = shuffled(KINDS);
      const kind = cycle.shift();
      let name;
      switch (kind) {
        case 'leader': {
          const stream = pickOne(['KV_sb_presence', 'KV_sb_timers']);
          name = await st.streamLeader(stream);
          if (!name) continue;
          break;
        }
        case 'nats':
          name = pickOne(Object.keys(st.natsPorts));
          break;
        default:
          name = pickOne(st.services.filter((s) => s.replace(/\d+$/, '') === kind));
      }
      const k = { kind, name, at: this.at(), back: null };
      this.kills.push(k);
      this.event('kill', name, kind);
      this.o.log(`${(k.at / 1000).toFixed(1)}s kill -9 ${name} (${kind})`);
      await st.kill(name);
      await sleep(rand(500, 2000));
      st.respawn(name);
      this.event('restart', name);
      try {
        if (/^nats\d+$/.test(name)) await st.waitNATSNode(name);
        else await waitUntil(`${name} ready`, async () => (await fetch(`${st.opsURL(name)}/readyz`)).status === 200, 30000, 100);
        k.back = this.at();
        this.event('ready', name, `${k.back - k.at} ms after the kill`);
      } catch (err) {
        this.violate('recovery', name, `${name} not ready again: ${err.message}`);
        k.back = this.at();
      }
      await sleep(rand(1500, 4000));
    }
  }

  // ---- the end ----

  async finish() {
    const st = this.st;
    await sleep(Math.max(0, this.o.durationMs - this.at()));
    // Every process is up again once the driver ends. The clients stay as
    // they are (no one leaves or comes) while the slots of sockets lost
    // with a killed gateway are purged: then presence lists exactly the
    // sockets that are open.
    await this.driver;
    this.frozen = true;
    await sleep(this.o.gatewayTTL + 4000);
    for (const user of this.users) {
      const listed = (await this.presenceList(user.id)).map((c) => c.socketId).sort();
      const open = [...user.connected].map((x) => x.sid).sort();
      if (listed.join(' ') !== open.join(' ')) {
        this.violate('presence', user.id, `presence lists [${listed.join(' ')}], open sockets are [${open.join(' ')}]`);
      }
    }
    this.running = false;
    this.frozen = false;
    await Promise.all(this.loops);
    // The last timers end.
    await sleep(6000);

    // Every client left: presence holds no slot.
    for (const user of this.users) {
      const list = await this.presenceList(user.id);
      if (list.length) this.violate('presence', user.id, `presence still lists ${list.map((c) => c.socketId).join(' ')} after every socket closed`);
    }
    this.checkTimers();
    await this.checkTimerEvents();
    this.checkNotes();
    for (const u of st.unexpected) this.violate('process', u.name, `${u.name} died unasked: ${JSON.stringify(u.info)}`);
    await this.nc.close();
  }

  async presenceList(userId) {
    const m = await this.nc.request('sb.presence.list', jc.encode({ userId }), { timeout: 5000 });
    return jc.decode(m.data).connections || [];
  }

  checkTimers() {
    for (const timer of this.timers) {
      const who = `${timer.dev.user.id}/${timer.dev.id}`;
      const end = (timer.acked || timer.sent + 4000) + timer.dur * 1000;
      if (end + 2500 > this.at()) continue;
      // A device connected throughout, with no NATS node down, sees the
      // end exactly once, within 2.5 s of the deadline.
      if (timer.acked && this.connectedThrough(timer.dev, timer.sent, end + 2500) && !this.natsKillNear(timer.sent, end + 2500)) {
        if (timer.zeros !== 1 || timer.dones !== 1) {
          this.violate('timer', who, `timer of ${timer.dur} s started at ${(timer.sent / 1000).toFixed(2)}s: ${timer.zeros} zero ticks and ${timer.dones} timerDone, want one each`);
        } else if (timer.doneAt > end + 2500) {
          this.violate('timer', who, `timerDone ${timer.doneAt - end} ms after the deadline`);
        }
      }
    }
  }

  // checkTimerEvents: services get exactly one timerDone per timer, from
  // the events stream, whatever was killed: every acked timer has one
  // event (matched by device, dur and start), no timer has two, and every
  // event belongs to a timer that was asked for.
  async checkTimerEvents() {
    const js = this.nc.jetstream({ checkAPI: false });
    const consumer = await js.consumers.get('sb_timer_events', { filterSubjects: ['sb.timer.event.done.>'] });
    const events = [];
    for (;;) {
      const m = await consumer.next({ expires: 2000 });
      if (!m) break;
      const ev = jc.decode(m.data);
      if (!ev.userId.startsWith(`c${this.run}u`)) continue;
      events.push({ user: ev.userId, dev: ev.deviceId, dur: ev.dur, start: Date.parse(ev.start), seq: m.seq, used: false });
    }
    const t0 = this.t0;
    for (const timer of this.timers) {
      const who = `${timer.dev.user.id}/${timer.dev.id}`;
      // The timer began between the emit and the ack (or 4 s later).
      const from = t0 + timer.sent - 200;
      const to = t0 + (timer.acked || timer.sent + 4000) + 200;
      const match = events.filter((e) => e.user === timer.dev.user.id && e.dev === timer.dev.id && e.dur === timer.dur && e.start >= from && e.start <= to);
      for (const e of match) e.used = true;
      if (match.length > 1) this.violate('timer', who, `timer of ${timer.dur} s started at ${(timer.sent / 1000).toFixed(2)}s has ${match.length} timerDone events (seq ${match.map((e) => e.seq).join(',')})`);
      if (match.length === 0 && timer.acked) {
        let stored = '';
        try {
          const m = await this.nc.request('sb.timer.list', jc.encode({ userId: timer.dev.user.id }), { timeout: 3000 });
          stored = `; sb.timer.list now: ${new TextDecoder().decode(m.data)}`;
        } catch (err) {
          stored = `; sb.timer.list: ${err.message}`;
        }
        this.violate('timer', who, `timer of ${timer.dur} s started at ${(timer.sent / 1000).toFixed(2)}s (acked ${(timer.acked / 1000).toFixed(2)}s) has no timerDone event; the device saw ${timer.zeros} zero, ${timer.dones} done, ticks ${timer.ticks.map((k) => `${k.n}@${(k.t / 1000).toFixed(2)}`).join(',')}${stored}`);
      }
    }
    for (const e of events.filter((x) => !x.used)) {
      this.violate('timer', `${e.user}/${e.dev}`, `timerDone event seq ${e.seq} (dur ${e.dur}, start ${((e.start - t0) / 1000).toFixed(2)}s) for no timer asked for`);
    }
  }

  // checkNotes: a socket connected throughout gets every notification to
  // its user exactly once (repeats are caught as they arrive); losses are
  // allowed only around a NATS node's death.
  checkNotes() {
    for (const sess of this.sessions) {
      const to = sess.to === null ? this.at() : sess.to;
      for (const n of this.notes) {
        if (n.user !== sess.user || n.t < sess.from + 1000 || n.t > to - 1000) continue;
        if (!sess.notes.has(n.id) && !this.natsKillNear(n.t, n.t)) {
          this.violate('notify', `${sess.user.id}/${sess.dev.id}`, `note ${n.id} (published at ${(n.t / 1000).toFixed(3)}s) never reached ${sess.sid}, connected ${(sess.from / 1000).toFixed(3)}..${(to / 1000).toFixed(3)}s`);
        }
      }
    }
  }

  // summary: counts for the log and the benchmarks.
  summary() {
    const recov = {};
    for (const k of this.kills) {
      if (!k.back) continue;
      (recov[k.kind] = recov[k.kind] || []).push(k.back - k.at);
    }
    return {
      sessions: this.sessions.length,
      refusals: this.events.filter((e) => e.kind === 'refused').length,
      notes: this.notes.length,
      timers: this.timers.length,
      kills: this.kills.map((k) => `${k.name}(${k.kind})`),
      readyAfterKillMs: recov,
    };
  }
}

// runChaos runs the whole thing and resolves with {violations, summary}.
async function runChaos(st, opts) {
  const c = new Chaos(st, opts);
  await c.start();
  await c.finish();
  return { violations: c.violations, summary: c.summary() };
}

module.exports = { runChaos, Chaos };
