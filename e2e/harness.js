'use strict';
// Test harness: runs a real Switchboard stack made of the binaries in bin/
// (built by `make build`), one process per service, on random ports.
//
//   bin/devstack   with no services: the NATS server (JetStream, temp store)
//   bin/auth       jwt verifier with a random secret
//   bin/presence, bin/timer
//   bin/gateway    on a random port
//
// Every process writes its output to .tmp/<test file>/<service>.log.

const { spawn, execFile } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const path = require('node:path');
const { io } = require('socket.io-client');
const WebSocket = require('ws');

const ROOT = path.resolve(__dirname, '..');
const BIN = path.join(ROOT, 'bin');
const TMP = path.join(__dirname, '.tmp');
const SERVICES = ['auth', 'presence', 'timer', 'gateway'];
const ISSUER = 'switchboard-e2e';
const AUDIENCE = 'switchboard';
const LOG_LEVEL = process.env.E2E_LOG_LEVEL || 'info';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Every child of this test process, killed if the process exits early.
const children = new Set();
function killChildren() {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
}
process.on('exit', killChildren);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    killChildren();
    process.exit(130);
  });
}

function b64url(s) {
  return Buffer.from(s).toString('base64url');
}

// mintToken signs an HS256 JWT (the format of the auth service's jwt
// verifier) with node:crypto.
function mintToken(secret, claims) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = b64url(JSON.stringify(claims));
  const sig = crypto.createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${sig}`;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// Environment for a child: ours without any SB_ setting, plus env.
function childEnv(env) {
  const out = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('SB_')) out[k] = v;
  }
  return { ...out, SB_LOG_LEVEL: LOG_LEVEL, ...env };
}

function binary(name) {
  const p = path.join(BIN, name);
  if (!fs.existsSync(p)) {
    throw new Error(`${p} is missing: run "make build" first`);
  }
  return p;
}

// waitUntil polls fn (async, truthy = done) until timeout.
async function waitUntil(what, fn, timeoutMs = 15000, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      if (err.fatal) throw err;
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    }
    await sleep(everyMs);
  }
}

function httpAnswers(port) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/socket.io/?EIO=4&transport=polling', timeout: 1000 }, (res) => {
      res.resume();
      resolve(true);
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => {
      req.destroy();
      resolve(false);
    });
  });
}

// once resolves with the arguments of the next `event` on emitter, or
// rejects after timeoutMs.
function once(emitter, event, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, on);
      reject(new Error(`no "${event}" within ${timeoutMs} ms`));
    }, timeoutMs);
    function on(...args) {
      clearTimeout(timer);
      emitter.off(event, on);
      resolve(args);
    }
    emitter.on(event, on);
  });
}

// Recorder keeps every event a socket receives, with its arrival time, and
// lets tests wait for one that matches.
class Recorder {
  constructor(socket) {
    this.socket = socket;
    this.events = [];
    this.waiters = [];
    socket.onAny((event, ...args) => this.push(event, args));
    for (const ev of ['connect', 'disconnect', 'connect_error']) {
      socket.on(ev, (...args) => this.push(`$${ev}`, args));
    }
  }

  push(event, args) {
    const e = { event, args, at: Date.now() };
    this.events.push(e);
    this.waiters = this.waiters.filter((w) => {
      if (w.event === event && w.pred(...args)) {
        clearTimeout(w.timer);
        w.resolve(e);
        return false;
      }
      return true;
    });
  }

  // of returns the recorded events named event.
  of(event) {
    return this.events.filter((e) => e.event === event);
  }

  // wait resolves with the first event named event (already recorded after
  // index `from`, or still to come) whose arguments satisfy pred.
  wait(event, pred = () => true, timeoutMs = 5000, from = 0) {
    const seen = this.events.slice(from).find((e) => e.event === event && pred(...e.args));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const w = { event, pred, resolve };
      w.timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        const got = this.of(event).map((x) => JSON.stringify(x.args)).join(' ');
        reject(new Error(`no matching "${event}" within ${timeoutMs} ms (got: ${got || 'none'})`));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  // mark returns a position to pass to wait's `from`.
  mark() {
    return this.events.length;
  }
}

class Stack {
  constructor(name) {
    this.name = name;
    this.logDir = path.join(TMP, name);
    this.procs = {};
    this.sockets = new Set();
    this.secret = crypto.randomBytes(36).toString('base64url'); // 48 characters
    this.stopping = false;
  }

  async start() {
    fs.rmSync(this.logDir, { recursive: true, force: true });
    fs.mkdirSync(this.logDir, { recursive: true });
    this.storeDir = fs.mkdtempSync(path.join(this.logDir, 'nats-'));
    this.gatewayPort = await freePort();
    this.url = `http://127.0.0.1:${this.gatewayPort}`;

    await this.startNATS();
    await Promise.all(SERVICES.map((s) => this.spawnService(s)));
    await waitUntil('the gateway HTTP port', () => this.checkAlive() && httpAnswers(this.gatewayPort), 20000);
    await this.waitReady();
  }

  // checkAlive throws, with the end of its log, when a process has exited.
  checkAlive() {
    for (const [name, c] of Object.entries(this.procs)) {
      if (c.exitInfo && !c.expectedExit) {
        let tail = '';
        try {
          tail = fs.readFileSync(this.log(name), 'utf8').split('\n').slice(-15).join('\n');
        } catch {
          // no log
        }
        const err = new Error(`${name} exited ${JSON.stringify(c.exitInfo)}:\n${tail}`);
        err.fatal = true;
        throw err;
      }
    }
    return true;
  }

  log(name) {
    return path.join(this.logDir, `${name}.log`);
  }

  spawnChild(name, bin, args, env) {
    const fd = fs.openSync(this.log(name), 'a');
    const child = spawn(binary(bin), args, {
      env: childEnv(env),
      stdio: ['ignore', name === 'nats' ? 'pipe' : fd, fd],
    });
    fs.closeSync(fd);
    children.add(child);
    child.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        children.delete(child);
        child.exitInfo = { code, signal };
        resolve(child.exitInfo);
      });
    });
    this.procs[name] = child;
    return child;
  }

  async startNATS() {
    const child = this.spawnChild('nats', 'devstack', [], {
      SB_SERVICES: '',
      SB_NATS_SERVER_LISTEN: '127.0.0.1:0',
      SB_NATS_SERVER_STORE_DIR: this.storeDir,
    });
    const logFile = fs.createWriteStream(this.log('nats'), { flags: 'a' });
    let out = '';
    this.natsUrl = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`devstack printed no NATS URL; see ${this.log('nats')}`)), 20000);
      child.stdout.on('data', (chunk) => {
        logFile.write(chunk);
        out += chunk.toString();
        const m = /^nats: (nats:\/\/\S+)$/m.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      child.exited.then((info) => {
        clearTimeout(timer);
        reject(new Error(`devstack exited ${JSON.stringify(info)}; see ${this.log('nats')}`));
      });
    });
  }

  serviceEnv(name) {
    const env = { SB_NATS_URL: this.natsUrl };
    switch (name) {
      case 'auth':
        return {
          ...env,
          SB_AUTH_VERIFIER: 'jwt',
          SB_AUTH_JWT_SECRET: this.secret,
          SB_AUTH_JWT_ISSUER: ISSUER,
          SB_AUTH_JWT_AUDIENCE: AUDIENCE,
        };
      case 'gateway':
        return {
          ...env,
          SB_GATEWAY_LISTEN: `127.0.0.1:${this.gatewayPort}`,
          SB_GATEWAY_ALLOWED_ORIGINS: 'http://localhost:*,http://127.0.0.1:*',
        };
      default:
        return env;
    }
  }

  spawnService(name) {
    const child = this.spawnChild(name, name, [], this.serviceEnv(name));
    child.exited.then((info) => {
      if (!this.stopping && !child.expectedExit) {
        process.stderr.write(`# ${name} exited unexpectedly ${JSON.stringify(info)}; see ${this.log(name)}\n`);
      }
    });
    return child;
  }

  // waitReady waits until a probe client completes a CONNECT (auth and
  // presence answer) and the timer service answers timerList.
  async waitReady(timeoutMs = 20000) {
    await waitUntil(
      'auth, presence and timer',
      async () => {
        this.checkAlive();
        const s = this.rawIO({ token: this.token(`probe-${crypto.randomUUID()}`) });
        try {
          await new Promise((resolve, reject) => {
            s.once('connect', resolve);
            s.once('connect_error', reject);
            setTimeout(() => reject(new Error('probe connect timeout')), 3000);
          });
          const [ack] = [await s.timeout(2000).emitWithAck('timerList')];
          return ack && ack.status !== 'error';
        } finally {
          s.disconnect();
        }
      },
      timeoutMs,
      200,
    );
  }

  // restart stops one service with SIGTERM and starts it again. It resolves
  // once the new process runs; pass wait=true to also wait for readiness.
  async restart(name, { wait = true } = {}) {
    const old = this.procs[name];
    old.expectedExit = true;
    old.kill('SIGTERM');
    const info = await Promise.race([old.exited, sleep(10000).then(() => null)]);
    if (!info) {
      old.kill('SIGKILL');
      await old.exited;
      throw new Error(`${name} did not stop within 10 s of SIGTERM`);
    }
    const child = this.spawnService(name);
    if (wait) await this.waitReady();
    return { exit: info, child };
  }

  // alive lists the processes that are still running.
  alive() {
    return Object.entries(this.procs)
      .filter(([, c]) => c.exitCode === null && c.signalCode === null)
      .map(([n]) => n);
  }

  token(uid, { ttlSec = 3600, secret = this.secret, iss = ISSUER, aud = AUDIENCE, extra = {} } = {}) {
    const now = Math.floor(Date.now() / 1000);
    return mintToken(secret, { sub: uid, iss, aud, iat: now, exp: now + ttlSec, ...extra });
  }

  // rawIO creates a socket.io-client socket (websocket only, no
  // reconnection unless asked) that the stack closes at the end.
  rawIO(auth, opts = {}) {
    const s = io(this.url, {
      transports: ['websocket'],
      forceNew: true,
      reconnection: false,
      timeout: 5000,
      ...opts,
      auth,
    });
    this.sockets.add(s);
    return s;
  }

  // client creates a recorded socket and waits until it is connected.
  async client(auth, opts = {}) {
    const s = this.rawIO(auth, opts);
    const rec = new Recorder(s);
    await new Promise((resolve, reject) => {
      s.once('connect', resolve);
      s.once('connect_error', (err) => reject(new Error(`connect_error: ${err.message}`)));
    });
    return rec;
  }

  // connectError resolves with the connect_error message of a socket that
  // must be refused.
  async connectError(auth, opts = {}) {
    const s = this.rawIO(auth, opts);
    try {
      return await new Promise((resolve, reject) => {
        s.once('connect', () => reject(new Error('connected, want connect_error')));
        s.once('connect_error', (err) => resolve(err.message));
      });
    } finally {
      s.disconnect();
    }
  }

  // ws opens a raw Engine.IO WebSocket and resolves once the open packet
  // arrived; frames are queued for next().
  ws() {
    const url = `ws://127.0.0.1:${this.gatewayPort}/socket.io/?EIO=4&transport=websocket`;
    const sock = new WebSocket(url);
    const frames = [];
    const waiters = [];
    sock.closed = new Promise((resolve) => sock.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    sock.on('error', () => {}); // close follows
    sock.on('message', (data) => {
      const s = data.toString();
      if (s === '2') {
        if (sock.readyState === WebSocket.OPEN) sock.send('3');
        return;
      }
      const w = waiters.shift();
      if (w) w(s);
      else frames.push(s);
    });
    sock.next = (timeoutMs = 5000) =>
      frames.length
        ? Promise.resolve(frames.shift())
        : new Promise((resolve, reject) => {
            const w = (s) => {
              clearTimeout(t);
              resolve(s);
            };
            const t = setTimeout(() => {
              waiters.splice(waiters.indexOf(w), 1);
              reject(new Error(`no frame within ${timeoutMs} ms`));
            }, timeoutMs);
            waiters.push(w);
          });
    sock.frames = frames;
    return new Promise((resolve, reject) => {
      sock.once('open', () => resolve(sock));
      sock.once('error', reject);
    }).then(async (s) => {
      s.open = JSON.parse((await s.next()).slice(1));
      return s;
    });
  }

  // notify runs `bin/devstack notify` as a separate process.
  notify(args) {
    return new Promise((resolve, reject) => {
      execFile(binary('devstack'), ['notify', '-nats', this.natsUrl, ...args], { env: childEnv({}), timeout: 10000 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`devstack notify ${args.join(' ')}: ${err.message} ${stderr}`));
        else resolve(stdout);
      });
    });
  }

  async stop() {
    this.stopping = true;
    for (const s of this.sockets) s.disconnect();
    this.sockets.clear();
    for (const name of ['gateway', 'timer', 'presence', 'auth', 'nats']) {
      const c = this.procs[name];
      if (!c || c.exitInfo) continue;
      c.kill('SIGTERM');
      const info = await Promise.race([c.exited, sleep(5000).then(() => null)]);
      if (!info) {
        c.kill('SIGKILL');
        await c.exited;
      }
    }
    fs.rmSync(this.storeDir, { recursive: true, force: true });
  }
}

// startStack starts a stack for one test file; name names its log folder.
async function startStack(name) {
  const st = new Stack(name);
  process.stderr.write(`# ${name}: service logs in ${path.relative(process.cwd(), st.logDir)}\n`);
  try {
    await st.start();
  } catch (err) {
    await st.stop();
    throw new Error(`${err.message} (logs in ${st.logDir})`);
  }
  return st;
}

// uid returns a user id unique to this run.
function uid(prefix) {
  return `${prefix}-${crypto.randomBytes(4).toString('hex')}`;
}

module.exports = { startStack, mintToken, once, sleep, uid, waitUntil, Recorder, ISSUER, AUDIENCE };
