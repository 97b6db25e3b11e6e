import assert from 'node:assert/strict';
import { test } from 'node:test';
import { planFetch, wantedOf } from '../../src/protocols/imap/partial.js';

test('planFetch: partial content items go upstream whole; headers, flags and whole items untouched', () => {
  const same = ' 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.100> RFC822.SIZE BODY.PEEK[])';
  assert.equal(planFetch(same).rest, same, 'nothing partial of content');
  assert.deepEqual([...planFetch(same).plan.entries()], [['BODY[]', { whole: true, ranges: [] }]]);

  const tb = planFetch(' 5 (UID RFC822.SIZE BODY.PEEK[]<0.65536>)');
  assert.equal(tb.rest, ' 5 (UID RFC822.SIZE BODY.PEEK[])');
  assert.deepEqual(tb.plan.get('BODY[]'), { whole: false, ranges: [{ origin: 0, length: 65536 }] });

  // Several pieces of one section: one whole item; a plain piece keeps BODY (it sets \Seen).
  const many = planFetch(' 1 (body.peek[]<0.10> BODY[]<20.5> BODY.PEEK[2]<3.4> UID)');
  assert.equal(many.rest, ' 1 (BODY[] BODY.PEEK[2] UID)');
  assert.deepEqual(many.plan.get('BODY[]')?.ranges, [{ origin: 0, length: 10 }, { origin: 20, length: 5 }]);
  assert.deepEqual(many.plan.get('BODY[2]')?.ranges, [{ origin: 3, length: 4 }]);

  // The whole asked for as well: the pieces go, the whole stays; a bare item without a list.
  assert.equal(planFetch(' 1 (BODY.PEEK[]<0.10> BODY.PEEK[])').rest, ' 1 (BODY.PEEK[])');
  assert.equal(planFetch(' 1 BINARY.PEEK[1]<0.10>').rest, ' 1 BINARY.PEEK[1]');
  assert.equal(planFetch(' 1 BODY[1.TEXT]<5.5>').rest, ' 1 BODY[1.TEXT]');
  // A plain piece beside a PEEK whole: the plain whole item is added, so \Seen is still set.
  assert.equal(planFetch(' 1 (BODY[]<0.100> BODY.PEEK[])').rest, ' 1 (BODY[] BODY.PEEK[])');
  // Long numbers are pieces too (the server clamps them), never a whole item with text left over.
  const long = planFetch(' 1 (BODY.PEEK[]<0.1234567890123456> BODY.PEEK[]<0.100>)');
  assert.equal(long.rest, ' 1 (BODY.PEEK[])');
  assert.equal(long.plan.get('BODY[]')?.ranges.length, 2);
  // Not items: a name inside another, a header piece.
  assert.equal(planFetch(' 1 (XBODY[]<0.1>)').rest, ' 1 (XBODY[]<0.1>)');
  assert.equal(planFetch(' 1 (BODY[2.MIME]<0.1>)').plan.size, 0);
});

test('wantedOf: pieces and wholes of every FETCH in flight, by the name the server echoes', () => {
  const a = planFetch(' 1 (BODY.PEEK[]<0.10>)').plan;
  const b = planFetch(' 2 (BODY[])').plan;
  const c = planFetch(' 3 (BODY.PEEK[2]<0.10>)').plan;
  assert.deepEqual(wantedOf([a], 'BODY[]'), { whole: false, ranges: [{ origin: 0, length: 10 }] });
  assert.deepEqual(wantedOf([a, b], 'body[]'), { whole: true, ranges: [{ origin: 0, length: 10 }] });
  assert.equal(wantedOf([b], 'BODY[]'), null, 'no piece asked for: the item goes as it is');
  assert.equal(wantedOf([a, c], 'BODY[1]'), null);
  assert.deepEqual(wantedOf([c], 'BODY[2]')?.ranges, [{ origin: 0, length: 10 }]);
});
