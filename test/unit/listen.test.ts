import assert from 'node:assert/strict';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { test } from 'node:test';
import { Listeners } from '../../src/core/listen.js';
import { AvgateError } from '../../src/core/errors.js';
import { freeLoopbackPort } from '../../src/core/net.js';

/**
 * The hand-over of listening sockets from one generation of front ends to the next (a reload)
 * rests on node's behaviour: server.listen(otherServer) takes the other's handle, and a server
 * without its handle still waits for its own connections on close(). These tests fail if a node
 * upgrade changes that.
 */

/** A server that greets each connection with its name and keeps it open. */
function greeter(name: string): Server & { accepted: Socket[] } {
  const accepted: Socket[] = [];
  const s = createServer((c) => {
    accepted.push(c);
    c.on('error', () => undefined);
    c.write(`${name}\n`);
  });
  return Object.assign(s, { accepted });
}

/** Connects and reads the greeting: the name of the server that accepted, or the error code. */
function hello(port: number): Promise<{ name: string; socket: Socket | null }> {
  return new Promise((resolve) => {
    const c = connect(port, '127.0.0.1');
    c.once('data', (d) => resolve({ name: String(d).trim(), socket: c }));
    c.once('error', (err: NodeJS.ErrnoException) => resolve({ name: err.code ?? 'error', socket: null }));
  });
}

const closed = (s: Server) => new Promise<void>((r) => s.close(() => r()));

test('a reload hands the port over: new connections go to the new server, the old one keeps its connection and its close() waits for it, the port never closes', async () => {
  const fixed = await freeLoopbackPort();
  const genA = new Listeners();
  const a = greeter('a');
  const a0 = greeter('a0');
  assert.equal(await genA.listen(a, '127.0.0.1', fixed, 'x'), fixed);
  const any = await genA.listen(a0, '127.0.0.1', 0, 'y');
  assert.ok(any > 0);
  const kept = await hello(fixed);
  assert.equal(kept.name, 'a');

  const genB = new Listeners(genA);
  const b = greeter('b');
  const b0 = greeter('b0');
  // Until takeOver the running generation still accepts, and the port of a port-0 front end is kept.
  assert.equal(await genB.listen(b, '127.0.0.1', fixed, 'x'), fixed);
  assert.equal(await genB.listen(b0, '127.0.0.1', 0, 'y'), any);
  const before = await hello(fixed);
  assert.equal(before.name, 'a');
  before.socket?.destroy();
  await genB.takeOver();
  assert.equal((await hello(fixed)).name, 'b');
  assert.equal((await hello(any)).name, 'b0');

  let aClosed = false;
  const aDone = closed(a).then(() => (aClosed = true));
  await closed(a0);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(aClosed, false, 'the old server waits for its connection');
  assert.equal((await hello(fixed)).name, 'b', 'closing the old server left the port open');
  assert.equal((await hello(any)).name, 'b0');
  kept.socket?.destroy();
  await aDone;
  assert.equal((await hello(fixed)).name, 'b');

  for (const s of [...b.accepted, ...b0.accepted, ...a.accepted, ...a0.accepted]) s.destroy();
  await Promise.all([closed(b), closed(b0)]);
  assert.equal((await hello(fixed)).name, 'ECONNREFUSED', 'the last close frees the port');
});

test('an address the new generation drops closes with the old server; a new address is bound at once', async () => {
  const [p1, p2] = [await freeLoopbackPort(), await freeLoopbackPort()];
  const genA = new Listeners();
  const a = greeter('a');
  await genA.listen(a, '127.0.0.1', p1, 'x');
  const genB = new Listeners(genA);
  const b = greeter('b');
  await genB.listen(b, '127.0.0.1', p2, 'x');
  assert.equal((await hello(p2)).name, 'b', 'bound before takeOver');
  await genB.takeOver();
  assert.equal((await hello(p1)).name, 'a', 'not taken over: still the old server');
  for (const s of a.accepted) s.destroy();
  await closed(a);
  assert.equal((await hello(p1)).name, 'ECONNREFUSED');
  for (const s of b.accepted) s.destroy();
  await closed(b);
});

test('two front ends on one address, and an address in use, are config errors naming the front end', async () => {
  const port = await freeLoopbackPort();
  const gen = new Listeners();
  const a = greeter('a');
  await gen.listen(a, '127.0.0.1', port, 'icap');
  await assert.rejects(gen.listen(greeter('b'), '127.0.0.1', port, 'smtp'), (err: unknown) => err instanceof AvgateError && /smtp listen 127\.0\.0\.1:\d+: another front end listens there/.test(err.message));
  const other = new Listeners();
  await assert.rejects(other.listen(greeter('c'), '127.0.0.1', port, 'http-proxy'), (err: unknown) => err instanceof AvgateError && err.code === 'AVG_ERR_CONFIG' && /http-proxy listen 127\.0\.0\.1:\d+: EADDRINUSE/.test(err.message));
  await closed(a);
});
