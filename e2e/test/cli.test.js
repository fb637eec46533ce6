'use strict';
// The README's `nats` CLI lines, run with the real nats CLI (bin/nats,
// built by `make tools`) against `bin/devstack`, as a reader would run them
// next to `make run`.

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startDevstack, once } = require('../harness');

const ROOT = path.resolve(__dirname, '..', '..');
const NATS = path.join(ROOT, 'bin', 'nats');

// shellWords splits a README command line: words, and '...' quoted words.
function shellWords(line) {
  const out = [];
  const re = /'([^']*)'|(\S+)/g;
  let m;
  while ((m = re.exec(line))) out.push(m[1] !== undefined ? m[1] : m[2]);
  return out;
}

// readmeLines returns the lines of a Markdown file that start with `nats `.
function readmeLines(file) {
  const text = fs.readFileSync(path.join(ROOT, file), 'utf8');
  return [...text.matchAll(/^nats .*$/gm)].map((m) => m[0]);
}

describe('the nats CLI lines of the README', { timeout: 120000 }, () => {
  let ds;
  let home;
  const nats = (args) =>
    new Promise((resolve, reject) => {
      execFile(NATS, args, { env: { PATH: process.env.PATH, HOME: home, XDG_CONFIG_HOME: home, NATS_URL: ds.natsUrl }, timeout: 15000 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`nats ${args.join(' ')}: ${err.message}\n${stdout}${stderr}`));
        else resolve(stdout + stderr);
      });
    });
  const token = (user) =>
    new Promise((resolve, reject) => {
      execFile(path.join(ROOT, 'bin', 'devstack'), ['token', user], (err, stdout) => (err ? reject(err) : resolve(stdout.trim())));
    });

  before(async () => {
    assert.ok(fs.existsSync(NATS), `${NATS} is missing: run "make tools"`);
    home = fs.mkdtempSync(path.join(os.tmpdir(), 'sb-nats-cli-'));
    ds = await startDevstack('cli');
  });
  after(async () => {
    if (ds) await ds.stop();
    if (home) fs.rmSync(home, { recursive: true, force: true });
  });

  test('nats pub greets alice', async () => {
    const lines = readmeLines('README.md').filter((l) => l.startsWith('nats pub '));
    assert.ok(lines.length >= 1, 'the README has a nats pub line');
    const alice = ds.io('/', { transports: ['websocket'], auth: { token: await token('alice') } });
    await once(alice, 'connect', 10000);
    for (const line of lines) {
      const got = once(alice, 'greeting', 10000);
      await nats(shellWords(line).slice(1));
      assert.deepEqual(await got, ['hello'], line);
    }
    // The timer README's request line answers with alice's timers.
    for (const line of readmeLines('services/timer/README.md').filter((l) => l.startsWith('nats req '))) {
      const out = await nats(shellWords(line).slice(1));
      assert.match(out, /"timers":\[/, line);
    }
  });

  test('nats micro ls lists every service, the gateway with its connections', async () => {
    const out = await nats(['micro', 'ls']);
    for (const name of ['switchboard-auth', 'switchboard-presence', 'switchboard-timer', 'switchboard-gateway']) {
      assert.match(out, new RegExp(name), `${name} in:\n${out}`);
    }
    const alice = ds.io('/', { transports: ['websocket'], auth: { token: await token('alice') } });
    await once(alice, 'connect', 10000);
    const stats = await nats(['micro', 'stats', 'switchboard-gateway', '--json']);
    assert.match(stats, /"connections":\s*[1-9]/, stats);
    const timer = await nats(['micro', 'stats', 'switchboard-timer']);
    assert.match(timer, /switchboard-timer/, timer);
  });
});
