'use strict';
// Test harness: runs a real Switchboard stack made of the binaries in bin/
// (built by `make build`), one process per service, on random ports.
//
//   bin/devstack   with no services: the NATS server (JetStream, temp store)
//   bin/auth       jwt verifier with a random secret
//   bin/presence, bin/timer (and bin/echo when asked for)
//   bin/gateway    on a random port (or several gateways on one NATS)
//
// startDevstack instead runs bin/devstack with its in-process services (for
// example the echo profile). Every process writes its output to
// .tmp/<test file>/<service>.log.

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
// Process names that run bin/gateway: gateway, gateway2, gateway3, ...
const isGateway = (name) => /^gateway\d*$/.test(name);
// The binary (and NATS user) of a process name: gateway2 runs bin/gateway.
const baseName = (name) => name.replace(/\d+$/, '');
// The binaries with an operations listener (/metrics, /healthz, /readyz).
const hasOps = (name) => ['gateway', 'auth', 'presence', 'timer'].includes(baseName(name));
const ISSUER = 'switchboard-e2e';
const AUDIENCE = 'switchboard';
const LOG_LEVEL = process.env.E2E_LOG_LEVEL || 'info';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// exitWithin resolves with the child's exit info, or null when it has not
// exited within ms (its timer does not keep the test process alive).
function exitWithin(child, ms) {
  let timer;
  const late = new Promise((r) => {
    timer = setTimeout(() => r(null), ms);
  });
  return Promise.race([child.exited, late]).finally(() => clearTimeout(timer));
}

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

// freePort returns a port nothing listens on, never one it returned before
// in this process (the system may hand a just-closed port out again before
// the process it was meant for binds it).
const portsGiven = new Set();
async function freePort() {
  for (;;) {
    const port = await new Promise((resolve, reject) => {
      const srv = net.createServer();
      srv.unref();
      srv.on('error', reject);
      srv.listen(0, '127.0.0.1', () => {
        const { port: p } = srv.address();
        srv.close(() => resolve(p));
      });
    });
    if (!portsGiven.has(port)) {
      portsGiven.add(port);
      return port;
    }
  }
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

// portOpen reports whether something accepts TCP connections on port.
function portOpen(port) {
  return new Promise((resolve) => {
    const c = net.connect(port, '127.0.0.1');
    c.on('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.on('error', () => resolve(false));
  });
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

// readBanner copies a devstack's stdout to logPath and resolves with the
// URLs of its banner: {nats, socketio} (socketio is null without a gateway).
function readBanner(child, logPath, timeoutMs = 20000) {
  const logFile = fs.createWriteStream(logPath, { flags: 'a' });
  let out = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`devstack printed no banner; see ${logPath}`)), timeoutMs);
    child.stdout.on('data', (chunk) => {
      logFile.write(chunk);
      out += chunk.toString();
      const n = /^nats: (nats:\/\/\S+)$/m.exec(out);
      const g = /^socket\.io: (\S+)/m.exec(out);
      if (n && g) {
        clearTimeout(timer);
        resolve({ nats: n[1], socketio: g[1].startsWith('http') ? g[1] : null });
      }
    });
    child.exited.then((info) => {
      clearTimeout(timer);
      reject(new Error(`devstack exited ${JSON.stringify(info)}; see ${logPath}`));
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
  // opts.services: the processes to run besides NATS (default auth,
  // presence, timer, gateway); gateway2, gateway3... are more gateways on
  // the same NATS, echo is bin/echo. opts.gatewayEnv: extra settings of
  // every gateway.
  // opts.natsConfig: run bin/nats-server with this configuration file (the
  // shipped one, with a user per service) instead of the devstack's
  // embedded server without authorization.
  // opts.natsNodes: 3 runs a three-node cluster of bin/nats-server with
  // the shipped cluster configuration (natsConfig's folder), buckets and
  // streams with three replicas. opts.env: extra settings by binary name
  // ({presence: {...}}). opts.proxy: a round-robin reverse proxy in front
  // of the gateways becomes the stack's URL.
  constructor(name, { services = SERVICES, gatewayEnv = {}, natsConfig = null, natsNodes = 1, env = {}, proxy = false } = {}) {
    this.name = name;
    this.services = services;
    this.gatewayEnv = gatewayEnv;
    this.natsConfig = natsConfig;
    this.natsNodes = natsNodes;
    this.extraEnv = env;
    this.useProxy = proxy;
    this.specs = {};
    this.unexpected = [];
    // One password per NATS user of the configuration.
    this.passwords = Object.fromEntries(['admin', 'gateway', 'auth', 'presence', 'timer', 'app'].map((u) => [u, `p${crypto.randomBytes(18).toString('hex')}`]));
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
    this.gatewayPorts = {};
    for (const s of this.services.filter(isGateway)) this.gatewayPorts[s] = await freePort();
    this.gatewayPort = this.gatewayPorts.gateway;
    // Each service process serves /metrics, /healthz and /readyz here.
    this.opsPorts = {};
    for (const s of this.services.filter(hasOps)) this.opsPorts[s] = await freePort();
    this.url = `http://127.0.0.1:${this.gatewayPort}`;

    await this.startNATS();
    await Promise.all(this.services.map((s) => this.spawnService(s)));
    for (const port of Object.values(this.gatewayPorts)) {
      await waitUntil('the gateway HTTP port', () => this.checkAlive() && httpAnswers(port), 20000);
    }
    if (this.useProxy) {
      this.proxy = await startProxy(Object.values(this.gatewayPorts));
      this.url = `http://127.0.0.1:${this.proxy.port}`;
    }
    await this.waitReady();
  }

  // gatewayURL is the Socket.IO URL of one gateway process.
  gatewayURL(name = 'gateway') {
    return `http://127.0.0.1:${this.gatewayPorts[name]}`;
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
    this.specs[name] = { bin, args, env };
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
    if (this.natsNodes > 1) {
      await this.startNATSCluster();
    } else if (this.natsConfig) {
      const port = await freePort();
      const env = Object.fromEntries(Object.entries(this.passwords).map(([u, p]) => [`${u.toUpperCase()}_PASSWORD`, p]));
      // The configuration as shipped, with the store in the test's folder.
      const conf = path.join(this.logDir, 'nats-server.conf');
      fs.writeFileSync(conf, fs.readFileSync(this.natsConfig, 'utf8').replace(/store_dir:.*$/m, `store_dir: ${JSON.stringify(this.storeDir)}`));
      this.spawnChild('nats', 'nats-server', ['-c', conf, '-a', '127.0.0.1', '-p', String(port), '-m', String(await freePort())], env);
      this.natsUrl = `nats://127.0.0.1:${port}`;
      await waitUntil('nats-server', () => this.checkAlive() && portOpen(port), 20000);
      // The admin user provisions the bucket and streams, as an operator
      // does; the services' users may not create them.
    }
    if (this.natsConfig) {
      for (const svc of ['presence', 'timer']) {
        const child = this.spawnChild(`provision-${svc}`, svc, ['-provision=true'], {
          ...this.replicaEnv(svc),
          SB_NATS_URL: this.natsUrl,
          SB_NATS_USER: 'admin',
          SB_NATS_PASSWORD: this.passwords.admin,
          SB_NATS_INBOX_PREFIX: '_INBOX_admin',
        });
        child.expectedExit = true;
        const info = await child.exited;
        if (info.code !== 0) throw new Error(`provision ${svc} failed: ${fs.readFileSync(this.log(`provision-${svc}`), 'utf8')}`);
      }
      return;
    }
    const child = this.spawnChild('nats', 'devstack', [], {
      SB_SERVICES: '',
      SB_NATS_SERVER_LISTEN: '127.0.0.1:0',
      SB_NATS_SERVER_STORE_DIR: this.storeDir,
    });
    this.natsUrl = (await readBanner(child, this.log('nats'))).nats;
  }

  // startNATSCluster runs nats1..nats3 from the shipped cluster
  // configuration, each with its own store, and waits until JetStream is
  // healthy on all three.
  async startNATSCluster() {
    const dir = path.dirname(this.natsConfig);
    const env = Object.fromEntries(Object.entries(this.passwords).map(([u, p]) => [`${u.toUpperCase()}_PASSWORD`, p]));
    env.ROUTE_PASSWORD = `r${crypto.randomBytes(12).toString('hex')}`;
    this.natsPorts = {};
    this.monitorPorts = {};
    const routePorts = [];
    for (let i = 1; i <= this.natsNodes; i++) {
      this.natsPorts[`nats${i}`] = await freePort();
      this.monitorPorts[`nats${i}`] = await freePort();
      routePorts.push(await freePort());
      env[`NATS_ROUTE_${i}`] = `nats-route://route:${env.ROUTE_PASSWORD}@127.0.0.1:${routePorts[i - 1]}`;
    }
    for (let i = 1; i <= this.natsNodes; i++) {
      const name = `nats${i}`;
      const nodeDir = path.join(this.logDir, name);
      fs.mkdirSync(nodeDir, { recursive: true });
      for (const f of ['nats-server.conf', 'cluster.conf']) {
        const text = fs.readFileSync(path.join(dir, f), 'utf8').replace(/store_dir:.*$/m, `store_dir: ${JSON.stringify(path.join(this.storeDir, name))}`);
        fs.writeFileSync(path.join(nodeDir, f), text);
      }
      this.spawnChild(
        name,
        'nats-server',
        ['-c', path.join(nodeDir, 'cluster.conf'), '-a', '127.0.0.1', '-p', String(this.natsPorts[name]), '-m', String(this.monitorPorts[name]), '--cluster', `nats://127.0.0.1:${routePorts[i - 1]}`],
        { ...env, NATS_SERVER_NAME: name },
      );
    }
    this.natsUrl = Object.values(this.natsPorts).map((p) => `nats://127.0.0.1:${p}`).join(',');
    for (const name of Object.keys(this.natsPorts)) await this.waitNATSNode(name);
  }

  // waitNATSNode waits until a cluster node reports JetStream healthy.
  async waitNATSNode(name, timeoutMs = 30000) {
    await waitUntil(`${name} healthy`, async () => {
      this.checkAlive();
      const res = await fetch(`http://127.0.0.1:${this.monitorPorts[name]}/healthz`);
      return res.status === 200;
    }, timeoutMs, 200);
  }

  // streamLeader names the cluster node leading a stream's replicas.
  async streamLeader(stream) {
    for (const [name, port] of Object.entries(this.monitorPorts || {})) {
      try {
        const res = await fetch(`http://127.0.0.1:${port}/jsz?accounts=true&streams=true`);
        const jsz = await res.json();
        for (const acc of jsz.account_details || []) {
          for (const st of acc.stream_detail || []) {
            if (st.name === stream && st.cluster && st.cluster.leader) return st.cluster.leader;
          }
        }
      } catch {
        // that node is down: ask another
      }
    }
    return null;
  }

  // replicaEnv sets the replicas of a service's bucket and streams.
  replicaEnv(base) {
    if (this.natsNodes <= 1 || !['presence', 'timer'].includes(base)) return {};
    return { [`SB_${base.toUpperCase()}_REPLICAS`]: String(this.natsNodes) };
  }

  // natsUser is the NATS user a process connects as.
  natsUser(name) {
    const base = baseName(name);
    return ['gateway', 'auth', 'presence', 'timer'].includes(base) ? base : 'app';
  }

  // appNatsUrl is the URL backend services (the app user) connect with.
  get appNatsUrl() {
    return this.natsConfig ? this.natsUrl.replace('nats://', `nats://app:${this.passwords.app}@`) : this.natsUrl;
  }

  // health runs `<binary> health` for a service process, as a container
  // healthcheck does, and resolves with its exit code.
  health(name) {
    const bin = baseName(name);
    return new Promise((resolve) => {
      execFile(binary(bin), ['health'], { env: childEnv({ SB_OPS_LISTEN: `127.0.0.1:${this.opsPorts[name]}` }), timeout: 10000 }, (err) => {
        resolve(err ? (typeof err.code === 'number' ? err.code : -1) : 0);
      });
    });
  }

  // opsURL is the base URL of a service process's operations listener.
  opsURL(name) {
    return `http://127.0.0.1:${this.opsPorts[name]}`;
  }

  serviceEnv(name) {
    const env = { SB_NATS_URL: this.natsUrl };
    // Services with an operations listener get their own port (or none).
    if (hasOps(name)) {
      env.SB_OPS_LISTEN = this.opsPorts && this.opsPorts[name] ? `127.0.0.1:${this.opsPorts[name]}` : '';
    }
    if (this.natsConfig) {
      const user = this.natsUser(name);
      env.SB_NATS_USER = user;
      env.SB_NATS_PASSWORD = this.passwords[user];
    }
    Object.assign(env, this.replicaEnv(baseName(name)), this.extraEnv[baseName(name)] || {});
    switch (baseName(name)) {
      case 'timer':
        return { ...env, SB_TIMER_INSTANCE: name };
      case 'auth':
        return {
          ...env,
          SB_AUTH_VERIFIER: 'jwt',
          SB_AUTH_JWT_SECRET: this.secret,
          SB_AUTH_JWT_ISSUER: ISSUER,
          SB_AUTH_JWT_AUDIENCE: AUDIENCE,
        };
      default:
        if (isGateway(name)) {
          return {
            ...env,
            SB_GATEWAY_LISTEN: `127.0.0.1:${this.gatewayPorts[name]}`,
            SB_GATEWAY_ALLOWED_ORIGINS: 'http://localhost:*,http://127.0.0.1:*',
            // Every test client shares one address.
            SB_GATEWAY_MAX_ENGINES_PER_IP: '50000',
            SB_GATEWAY_HANDSHAKE_RATE: '10000',
            SB_GATEWAY_HANDSHAKE_BURST: '10000',
            ...this.gatewayEnv,
          };
        }
        return env;
    }
  }

  spawnService(name) {
    return this.watch(name, this.spawnChild(name, baseName(name), [], this.serviceEnv(name)));
  }

  // watch records an exit nobody asked for.
  watch(name, child) {
    child.exited.then((info) => {
      if (!this.stopping && !child.expectedExit) {
        this.unexpected.push({ name, info, at: Date.now() });
        process.stderr.write(`# ${name} exited unexpectedly ${JSON.stringify(info)}; see ${this.log(name)}\n`);
      }
    });
    return child;
  }

  // kill ends a process with SIGKILL (a crash, as far as it can tell).
  async kill(name) {
    const c = this.procs[name];
    if (!c || c.exitInfo) return;
    c.expectedExit = true;
    c.kill('SIGKILL');
    await c.exited;
  }

  // respawn starts a killed process again, with its first arguments.
  respawn(name) {
    const spec = this.specs[name];
    return this.watch(name, this.spawnChild(name, spec.bin, spec.args, spec.env));
  }

  // waitReady waits until a probe client completes a CONNECT (auth and
  // presence answer) on every gateway, and the timer service answers
  // timerList (the echo service message-with-ack) when it runs.
  async waitReady(timeoutMs = 20000) {
    for (const gw of Object.keys(this.gatewayPorts)) {
      await waitUntil(
        `auth, presence and ${this.services.filter((s) => s === 'timer' || s === 'echo').join(', ') || 'no other service'} via ${gw}`,
        async () => {
          this.checkAlive();
          const s = this.rawIO({ token: this.token(`probe-${crypto.randomUUID()}`) }, {}, this.gatewayURL(gw));
          try {
            await new Promise((resolve, reject) => {
              s.once('connect', resolve);
              s.once('connect_error', reject);
              setTimeout(() => reject(new Error('probe connect timeout')), 3000);
            });
            if (this.services.includes('timer')) {
              const ack = await s.timeout(2000).emitWithAck('timerList');
              if (!ack || ack.status === 'error') return false;
            }
            if (this.services.includes('echo')) {
              const ack = await s.timeout(2000).emitWithAck('message-with-ack', 'ready');
              if (ack !== 'ready') return false;
            }
            return true;
          } finally {
            s.disconnect();
          }
        },
        timeoutMs,
        200,
      );
    }
  }

  // restart stops one service with SIGTERM and starts it again. It resolves
  // once the new process runs; pass wait=true to also wait for readiness.
  async restart(name, { wait = true } = {}) {
    const old = this.procs[name];
    old.expectedExit = true;
    old.kill('SIGTERM');
    const info = await exitWithin(old, 10000);
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
  rawIO(auth, opts = {}, url = this.url) {
    const s = io(url, {
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
  async client(auth, opts = {}, url = this.url) {
    const s = this.rawIO(auth, opts, url);
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
      execFile(binary('devstack'), ['notify', '-nats', this.appNatsUrl, ...args], { env: childEnv({}), timeout: 10000 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`devstack notify ${args.join(' ')}: ${err.message} ${stderr}`));
        else resolve(stdout);
      });
    });
  }

  async stop() {
    this.stopping = true;
    for (const s of this.sockets) s.disconnect();
    this.sockets.clear();
    if (this.proxy) this.proxy.close();
    const names = Object.keys(this.procs);
    const rank = (n) => (isGateway(n) ? 0 : /^nats\d*$/.test(n) ? 2 : 1);
    const order = names.sort((a, b) => rank(a) - rank(b));
    for (const name of order) {
      const c = this.procs[name];
      if (!c || c.exitInfo) continue;
      c.kill('SIGTERM');
      const info = await exitWithin(c, 5000);
      if (!info) {
        c.kill('SIGKILL');
        await c.exited;
      }
    }
    fs.rmSync(this.storeDir, { recursive: true, force: true });
  }
}

// startProxy runs a plain reverse proxy on loopback in front of ports: each
// HTTP request and each WebSocket upgrade goes to the next port in turn (no
// affinity); a port that refuses the connection is skipped.
async function startProxy(ports) {
  let next = 0;
  const pick = () => ports[next++ % ports.length];
  const dial = (tries, cb) => {
    const port = pick();
    const c = net.connect(port, '127.0.0.1');
    c.once('connect', () => cb(null, c, port));
    c.once('error', (err) => (tries > 1 ? dial(tries - 1, cb) : cb(err)));
  };
  const server = http.createServer((req, res) => {
    const attempt = (tries) => {
      const port = pick();
      const up = http.request({ host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers }, (ures) => {
        res.writeHead(ures.statusCode, ures.headers);
        ures.pipe(res);
      });
      up.on('error', (err) => {
        if (tries > 1 && !res.headersSent && err.code === 'ECONNREFUSED') return attempt(tries - 1);
        if (!res.headersSent) res.writeHead(502);
        res.end();
      });
      req.pipe(up);
    };
    attempt(ports.length);
  });
  server.on('upgrade', (req, socket, head) => {
    socket.on('error', () => socket.destroy());
    dial(ports.length, (err, up) => {
      if (err) {
        socket.destroy();
        return;
      }
      let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) raw += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(`${raw}\r\n`);
      if (head && head.length) up.write(head);
      up.on('error', () => socket.destroy());
      socket.on('close', () => up.destroy());
      up.on('close', () => socket.destroy());
      up.pipe(socket);
      socket.pipe(up);
    });
  });
  const sockets = new Set();
  server.on('connection', (c) => {
    sockets.add(c);
    c.on('close', () => sockets.delete(c));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: server.address().port,
    close() {
      server.close();
      for (const c of sockets) c.destroy();
    },
  };
}

// startStack starts a stack for one test file; name names its log folder;
// opts are the Stack's (services, gatewayEnv).
async function startStack(name, opts = {}) {
  const st = new Stack(name, opts);
  process.stderr.write(`# ${name}: service logs in ${path.relative(process.cwd(), st.logDir)}\n`);
  try {
    await st.start();
  } catch (err) {
    await st.stop();
    throw new Error(`${err.message} (logs in ${st.logDir})`);
  }
  return st;
}

// Devstack is one bin/devstack process running its services in-process.
class Devstack {
  constructor(name) {
    this.name = name;
    this.logDir = path.join(TMP, name);
    this.sockets = new Set();
  }

  async start(args, env) {
    fs.rmSync(this.logDir, { recursive: true, force: true });
    fs.mkdirSync(this.logDir, { recursive: true });
    this.storeDir = fs.mkdtempSync(path.join(this.logDir, 'nats-'));
    const logPath = path.join(this.logDir, 'devstack.log');
    const fd = fs.openSync(logPath, 'a');
    const child = spawn(binary('devstack'), args, {
      env: childEnv({
        SB_NATS_SERVER_LISTEN: '127.0.0.1:0',
        SB_NATS_SERVER_STORE_DIR: this.storeDir,
        SB_GATEWAY_LISTEN: '127.0.0.1:0',
        SB_OPS_LISTEN: '',
        ...env,
      }),
      stdio: ['ignore', 'pipe', fd],
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
    this.proc = child;
    const banner = await readBanner(child, logPath);
    if (!banner.socketio) throw new Error(`devstack runs no gateway; see ${logPath}`);
    this.natsUrl = banner.nats;
    // The banner names localhost; the gateway listens on 127.0.0.1.
    this.url = banner.socketio.replace('//localhost:', '//127.0.0.1:');
  }

  // io creates a socket.io-client socket for url + nsp (no reconnection
  // unless asked) that stop closes.
  io(nsp = '/', opts = {}) {
    const s = io(this.url + (nsp === '/' ? '' : nsp), { forceNew: true, reconnection: false, timeout: 5000, ...opts });
    this.sockets.add(s);
    return s;
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

  alive() {
    return this.proc && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async stop() {
    for (const s of this.sockets) s.disconnect();
    this.sockets.clear();
    const c = this.proc;
    if (c && !c.exitInfo) {
      c.kill('SIGTERM');
      const info = await exitWithin(c, 10000);
      if (!info) {
        c.kill('SIGKILL');
        await c.exited;
      }
    }
    if (this.storeDir) fs.rmSync(this.storeDir, { recursive: true, force: true });
  }
}

// startDevstack runs `bin/devstack args...` with NATS and the gateway on
// random ports (env adds settings) and resolves once it printed its banner.
async function startDevstack(name, args = [], env = {}) {
  const ds = new Devstack(name);
  process.stderr.write(`# ${name}: devstack log in ${path.relative(process.cwd(), ds.logDir)}\n`);
  try {
    await ds.start(args, env);
  } catch (err) {
    await ds.stop();
    throw new Error(`${err.message} (logs in ${ds.logDir})`);
  }
  return ds;
}

// uid returns a user id unique to this run.
function uid(prefix) {
  return `${prefix}-${crypto.randomBytes(4).toString('hex')}`;
}

module.exports = { startProxy, startStack, startDevstack, mintToken, once, sleep, uid, waitUntil, Recorder, ISSUER, AUDIENCE };
