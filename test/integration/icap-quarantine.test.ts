import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import type { Quarantine } from '../../src/quarantine/types.js';
import { startTestIcap, type TestIcap } from '../helpers/avgate-icap.js';
import { startTestClamd, type TestClamd } from '../helpers/clamd.js';
import { buildRequest, icapExchange } from '../helpers/icap-client.js';

async function streamBytes(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

describe('ICAP service option quarantine: blocked objects are kept', () => {
  let clamd: TestClamd;
  let icap: TestIcap;
  let q: Quarantine;
  before(async () => {
    clamd = await startTestClamd();
    icap = await startTestIcap({
      clamd,
      icapYaml: ['services:', '  avscan:', '    quarantine: [found]', '  plain:', '    aliases: []'].join('\n'),
    });
    q = icap.quarantine;
  });
  after(async () => {
    await icap?.stop();
    await clamd?.stop();
  });

  test('EICAR by RESPMOD: blocked, and the exact body is in the quarantine with the URL and the virus name', async () => {
    const body = Buffer.concat([eicarBytes(), randomBytes(100)]);
    const url = 'http://origin.test/downloads/evil%20file.com?x=1';
    const { responses } = await icapExchange(icap.port, [buildRequest(icap.port, body, { allow204: true, url }).first]);
    assert.equal(responses[0]?.head.status, 200);
    const [item] = await q.list({ source: 'icap' });
    assert.ok(item, 'one icap item');
    assert.equal(item.url, url);
    assert.equal(item.fileName, 'evil file.com');
    assert.equal(item.group, 'avscan');
    assert.equal(item.action, 'block');
    assert.deepEqual(item.statuses, ['found']);
    assert.match(item.virusNames[0] ?? '', /EICAR/);
    assert.equal(item.size, body.length);
    const got = await q.get(item.id);
    assert.ok(got);
    assert.ok((await streamBytes(got.open())).equals(body), 'the stored bytes are the blocked body');
  });

  test('clean bodies, and services without the option, keep nothing', async () => {
    const before = await q.count();
    const clean = await icapExchange(icap.port, [buildRequest(icap.port, randomBytes(5000), { allow204: true }).first]);
    assert.equal(clean.responses[0]?.head.status, 204);
    const other = await icapExchange(icap.port, [buildRequest(icap.port, eicarBytes(), { allow204: true, service: 'plain' }).first]);
    assert.equal(other.responses[0]?.head.status, 200, 'blocked by the other service');
    assert.equal(await q.count(), before);
  });
});
