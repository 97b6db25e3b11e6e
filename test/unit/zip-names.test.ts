import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { crc32 } from 'node:zlib';
import fc from 'fast-check';
import { listZipNames, zipNamesFromBuffer, zipNamesFromFile, type ZipNames } from '../../src/formats/zip-names.js';
import { eicarBytes } from '../../src/engines/clamd/testdb.js';
import { zipOneFile } from '../helpers/zip.js';

interface Entry {
  name: string | Buffer;
  data?: Buffer;
  utf8?: boolean;
  encrypted?: boolean;
  extra?: Buffer;
}

/**
 * A stored zip with several entries, built here so each test controls the parts the lister reads:
 * flags, extra fields, the comment, zip64 end records, a prefix before the archive.
 */
function makeZip(entries: Entry[], o: { comment?: Buffer; zip64?: boolean; prefix?: Buffer; trailer?: Buffer } = {}): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = typeof e.name === 'string' ? Buffer.from(e.name, 'utf8') : e.name;
    const data = e.data ?? Buffer.from('x');
    const extra = e.extra ?? Buffer.alloc(0);
    const flags = (e.utf8 ? 0x0800 : 0) | (e.encrypted ? 0x0001 : 0);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(flags, 6);
    local.writeUInt32LE(crc32(data), 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(name.length, 26);
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(20, 4);
    c.writeUInt16LE(20, 6);
    c.writeUInt16LE(flags, 8);
    c.writeUInt32LE(crc32(data), 16);
    c.writeUInt32LE(data.length, 20);
    c.writeUInt32LE(data.length, 24);
    c.writeUInt16LE(name.length, 28);
    c.writeUInt16LE(extra.length, 30);
    c.writeUInt32LE(offset, 42);
    const localPart = Buffer.concat([local, name, data]);
    locals.push(localPart);
    centrals.push(Buffer.concat([c, name, extra]));
    offset += localPart.length;
  }
  const cd = Buffer.concat(centrals);
  const comment = o.comment ?? Buffer.alloc(0);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(comment.length, 20);
  const tail: Buffer[] = [];
  if (o.zip64) {
    const rec = Buffer.alloc(56);
    rec.writeUInt32LE(0x06064b50, 0);
    rec.writeBigUInt64LE(44n, 4);
    rec.writeUInt16LE(45, 12);
    rec.writeUInt16LE(45, 14);
    rec.writeBigUInt64LE(BigInt(entries.length), 24);
    rec.writeBigUInt64LE(BigInt(entries.length), 32);
    rec.writeBigUInt64LE(BigInt(cd.length), 40);
    rec.writeBigUInt64LE(BigInt(offset), 48);
    const loc = Buffer.alloc(20);
    loc.writeUInt32LE(0x07064b50, 0);
    loc.writeBigUInt64LE(BigInt(offset + cd.length), 8);
    loc.writeUInt32LE(1, 16);
    tail.push(rec, loc);
    end.writeUInt16LE(0xffff, 8);
    end.writeUInt16LE(0xffff, 10);
    end.writeUInt32LE(0xffffffff, 12);
    end.writeUInt32LE(0xffffffff, 16);
  } else {
    end.writeUInt16LE(entries.length, 8);
    end.writeUInt16LE(entries.length, 10);
    end.writeUInt32LE(cd.length, 12);
    end.writeUInt32LE(offset, 16);
  }
  return Buffer.concat([o.prefix ?? Buffer.alloc(0), ...locals, cd, ...tail, end, comment, o.trailer ?? Buffer.alloc(0)]);
}

const names = (r: ZipNames): string[] => {
  assert.ok(r.ok, r.ok ? '' : `${r.error}: ${r.detail}`);
  return r.names;
};

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'avgate-zip-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('the one-file zip of the test helpers, from a buffer and from a file', async () => {
  const zip = zipOneFile('eicar.com', eicarBytes());
  assert.deepEqual(zipNamesFromBuffer(zip), { ok: true, names: ['eicar.com'], declaredEntries: 1, truncated: false, encrypted: false, zip64: false });
  const path = join(dir, 'one.zip');
  await writeFile(path, zipOneFile('secret.doc', Buffer.from('x'), { encrypted: true }));
  const r = await zipNamesFromFile(path);
  assert.deepEqual(r, { ok: true, names: ['secret.doc'], declaredEntries: 1, truncated: false, encrypted: true, zip64: false });
  assert.deepEqual(await listZipNames(path), r);
  assert.deepEqual(await listZipNames(zip), zipNamesFromBuffer(zip));
});

test('many entries, directories, UTF-8 flag, CP437 names, the Info-ZIP Unicode path field', () => {
  const unicodeName = 'résumé.exe';
  const raw = Buffer.from('r\x82sum\x82.exe', 'latin1'); // CP437 é is 0x82
  const up = Buffer.alloc(9 + Buffer.byteLength(unicodeName));
  up.writeUInt16LE(0x7075, 0);
  up.writeUInt16LE(5 + Buffer.byteLength(unicodeName), 2);
  up.writeUInt8(1, 4);
  up.writeUInt32LE(crc32(raw), 5);
  up.write(unicodeName, 9, 'utf8');
  const zip = makeZip([
    { name: 'docs/' },
    { name: 'docs/readme.txt' },
    { name: 'Přehled.pdf', utf8: true },
    { name: Buffer.from([0x63, 0x61, 0x66, 0x82, 0x2e, 0x74, 0x78, 0x74]) }, // café.txt in CP437
    { name: raw, extra: up },
    { name: Buffer.from('bad\x82.txt', 'latin1'), extra: (() => { const b = Buffer.from(up); b.writeUInt32LE(0, 5); return b; })() },
  ]);
  assert.deepEqual(names(zipNamesFromBuffer(zip)), ['docs/', 'docs/readme.txt', 'Přehled.pdf', 'café.txt', unicodeName, 'badé.txt']);
});

test('an archive comment, bytes after the archive, a prefix before it (self-extractor)', () => {
  const entries = [{ name: 'a.exe' }, { name: 'b.txt' }];
  const withSig = Buffer.concat([Buffer.from('comment with a fake end record: '), Buffer.from([0x50, 0x4b, 0x05, 0x06]), Buffer.alloc(30, 0x20)]);
  assert.deepEqual(names(zipNamesFromBuffer(makeZip(entries, { comment: withSig }))), ['a.exe', 'b.txt']);
  assert.deepEqual(names(zipNamesFromBuffer(makeZip(entries, { comment: Buffer.alloc(65_535, 0x41) }))), ['a.exe', 'b.txt'], 'the longest comment');
  assert.deepEqual(names(zipNamesFromBuffer(makeZip(entries, { trailer: Buffer.from('appended junk') }))), ['a.exe', 'b.txt']);
  assert.deepEqual(names(zipNamesFromBuffer(makeZip(entries, { prefix: Buffer.alloc(5000, 0x4d) }))), ['a.exe', 'b.txt']);
  const r = zipNamesFromBuffer(makeZip(entries, { comment: Buffer.alloc(2000, 0x41) }), { maxComment: 1000 });
  assert.equal(r.ok ? 'ok' : r.error, 'not-zip', 'a comment beyond maxComment is not searched');
});

test('zip64 end records are followed, also after a prefix', async () => {
  const entries = Array.from({ length: 3 }, (_, i) => ({ name: `f${i}.bin` }));
  const r = zipNamesFromBuffer(makeZip(entries, { zip64: true }));
  assert.deepEqual(r, { ok: true, names: ['f0.bin', 'f1.bin', 'f2.bin'], declaredEntries: 3, truncated: false, encrypted: false, zip64: true });
  assert.deepEqual(names(zipNamesFromBuffer(makeZip(entries, { zip64: true, prefix: Buffer.alloc(777) }))), ['f0.bin', 'f1.bin', 'f2.bin']);
  const path = join(dir, 'z64.zip');
  await writeFile(path, makeZip(entries, { zip64: true }));
  assert.deepEqual(await zipNamesFromFile(path), r);
  // A locator that points nowhere.
  const broken = makeZip(entries, { zip64: true });
  const loc = broken.length - 22 - 20;
  broken.writeBigUInt64LE(0xffffffffffffn, loc + 8);
  const b = zipNamesFromBuffer(broken);
  assert.equal(b.ok ? 'ok' : b.error, 'bad-zip64');
});

test('bounds: max entries and max directory bytes give truncated listings', () => {
  const zip = makeZip(Array.from({ length: 50 }, (_, i) => ({ name: `n${String(i).padStart(2, '0')}.txt` })));
  const r = zipNamesFromBuffer(zip, { maxEntries: 10 });
  assert.ok(r.ok);
  assert.equal(r.names.length, 10);
  assert.equal(r.declaredEntries, 50);
  assert.equal(r.truncated, true);
  const r2 = zipNamesFromBuffer(zip, { maxCentralDirectory: 200 });
  assert.ok(r2.ok && r2.truncated && r2.names.length === 3, JSON.stringify(r2));
  const full = zipNamesFromBuffer(zip);
  assert.ok(full.ok && !full.truncated && full.names.length === 50);
});

test('garbage and damage give error markers, never exceptions', async () => {
  const err = (r: ZipNames): string => (r.ok ? 'ok' : r.error);
  assert.equal(err(zipNamesFromBuffer(Buffer.alloc(0))), 'not-zip');
  assert.equal(err(zipNamesFromBuffer(Buffer.from('PK\x05\x06'))), 'not-zip');
  assert.equal(err(zipNamesFromBuffer(Buffer.from('just some text that is not an archive at all'))), 'not-zip');
  const zip = makeZip([{ name: 'a' }, { name: 'b' }]);
  const multi = Buffer.from(zip);
  multi.writeUInt16LE(1, multi.length - 22 + 4);
  assert.equal(err(zipNamesFromBuffer(multi)), 'multi-disk');
  const badOffset = Buffer.from(zip);
  badOffset.writeUInt32LE(0x7fffffff, badOffset.length - 22 + 12); // directory size larger than the file
  assert.equal(err(zipNamesFromBuffer(badOffset)), 'bad-central-directory');
  const smashed = Buffer.from(zip);
  const cdStart = smashed.readUInt32LE(smashed.length - 22 + 16);
  smashed.fill(0, cdStart, cdStart + 4);
  assert.equal(err(zipNamesFromBuffer(smashed)), 'bad-central-directory');
  // A broken second entry: the first name is kept, the listing says it is incomplete.
  const second = Buffer.from(zip);
  const secondAt = cdStart + 46 + 1;
  second.fill(0, secondAt, secondAt + 4);
  const r = zipNamesFromBuffer(second);
  assert.ok(r.ok && r.truncated && r.names.join() === 'a', JSON.stringify(r));
  assert.equal(err(await zipNamesFromFile(join(dir, 'does-not-exist.zip'))), 'io');
  assert.equal(err(await zipNamesFromFile(dir)), 'io', 'a directory');
});

test('fuzz: random bytes and random damage to a real archive never throw', () => {
  const plain = makeZip([{ name: 'a.exe' }, { name: 'dir/b.txt', utf8: true }, { name: 'c' }], { comment: Buffer.from('hi') });
  const z64 = makeZip([{ name: 'a.exe' }, { name: 'c', encrypted: true }], { zip64: true });
  // Every error is one the parser chose (its bounds checks), not an exception caught at the top.
  const chosen = (r: ZipNames): boolean => r.ok || !r.detail.startsWith('unexpected:');
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
      const r = zipNamesFromBuffer(Buffer.from(bytes));
      assert.ok(chosen(r), JSON.stringify(r));
    }),
    { numRuns: 500 },
  );
  for (const zip of [plain, z64]) {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(zip.length - 1), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }), fc.nat(zip.length), (edits, cut) => {
        const b = Buffer.from(zip);
        for (const [i, v] of edits) b[i] = v;
        const r = zipNamesFromBuffer(b.subarray(0, cut));
        assert.ok(chosen(r), JSON.stringify(r));
        if (r.ok) assert.ok(r.names.length <= 10_000);
      }),
      { numRuns: 1000 },
    );
  }
});
