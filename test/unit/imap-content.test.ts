import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { encodeNotice, sniffPart } from '../../src/protocols/imap/content.js';
import { loginUser, plainAuthUser } from '../../src/protocols/imap/session.js';
import { capabilitiesOf, filterCapabilities } from '../../src/protocols/imap/wire.js';

describe('imap proxy helpers', () => {
  test('capability lists lose what the proxy cannot carry', () => {
    const line = (s: string) => filterCapabilities(Buffer.from(s)).toString();
    assert.equal(line('* CAPABILITY IMAP4rev1 STARTTLS COMPRESS=DEFLATE CATENATE LITERAL+ IDLE'), '* CAPABILITY IMAP4rev1 LITERAL+ IDLE');
    assert.equal(line('* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] ready'), '* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready');
    assert.equal(line('a1 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] Logged in'), 'a1 OK [CAPABILITY IMAP4rev1] Logged in');
    // A preview is message text the server cuts out, never scanned.
    assert.equal(line('* CAPABILITY IMAP4rev1 BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE'), '* CAPABILITY IMAP4rev1 BINARY MOVE STATUS=SIZE');
    assert.equal(filterCapabilities(Buffer.from('* OK [CAPABILITY IMAP4rev1 STARTTLS] hi'), { dropCode: true }).toString(), '* OK hi');
    assert.equal(filterCapabilities(Buffer.from('* CAPABILITY IMAP4rev1 APPENDLIMIT=900000000'), { appendLimit: 1000 }).toString(), '* CAPABILITY IMAP4rev1 APPENDLIMIT=1000');
    assert.equal(filterCapabilities(Buffer.from('* CAPABILITY APPENDLIMIT=10'), { appendLimit: 1000 }).toString(), '* CAPABILITY APPENDLIMIT=10');
    const other = Buffer.from('* 3 EXISTS');
    assert.equal(filterCapabilities(other), other, 'other lines untouched (same buffer)');
    assert.deepEqual(capabilitiesOf(Buffer.from('t1 OK [CAPABILITY IMAP4rev1 literal+] x')), new Set(['IMAP4REV1', 'LITERAL+']));
    assert.equal(capabilitiesOf(Buffer.from('* OK ready')), null);
  });

  test('a headerless part: encoding guessed from its first bytes', () => {
    const b64 = Buffer.from(`${Buffer.alloc(200, 7).toString('base64').replace(/.{76}/g, '$&\r\n')}\r\n`);
    assert.deepEqual(sniffPart(b64, false), { encoding: 'base64' });
    assert.deepEqual(sniffPart(Buffer.from('preamble\r\n--b-1\r\nContent-Type: text/plain\r\n\r\nx\r\n--b-1--\r\n'), false), { encoding: 'multipart', boundary: 'b-1' });
    assert.deepEqual(sniffPart(Buffer.from('caf=C3=A9 soft=\r\nbreak'), false), { encoding: 'quoted-printable' });
    assert.deepEqual(sniffPart(Buffer.from('plain text\r\n-- \r\nsignature\r\n'), false), { encoding: '8bit' }, 'a signature separator is no boundary');
    assert.deepEqual(sniffPart(Buffer.from([0, 1, 2, 3]), true), { encoding: 'binary' });
  });

  test('the notice in the part encoding', () => {
    const n = encodeNotice('replaced\nline two', 'base64');
    assert.equal(Buffer.from(n.toString(), 'base64').toString(), 'replaced\r\nline two');
    assert.ok(n.toString().split('\r\n').every((l) => l.length <= 76));
    assert.equal(encodeNotice('a\nb', '8bit').toString(), 'a\r\nb');
  });

  test('login names for the ACLs', () => {
    assert.equal(loginUser(' alice secret'), 'alice');
    assert.equal(loginUser(' "bob \\"x\\"" "pw"'), 'bob "x"');
    assert.equal(loginUser(' {5}'), null);
    assert.equal(plainAuthUser(Buffer.from('\0carol\0pw').toString('base64')), 'carol');
    assert.equal(plainAuthUser('not base64!'), null);
    assert.equal(plainAuthUser(Buffer.from('just one').toString('base64')), null);
  });
});
