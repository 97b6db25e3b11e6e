import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';

/** SASL client pieces for the mail proxy tests (the login names the proxies must read). */

export const b64 = (s: string | Buffer): string => Buffer.from(s).toString('base64');
export const ALICE = { user: 'alice', password: 'secret-alice' };
export const BOB = { user: 'bob', password: 'secret-bob' };

/** RFC 2195: "user SP hex(HMAC-MD5(password, challenge))", base64. */
export function cramMd5(user: string, password: string, challengeB64: string): string {
  return b64(`${user} ${createHmac('md5', password).update(Buffer.from(challengeB64, 'base64')).digest('hex')}`);
}

/** RFC 1939 APOP digest: MD5 of the greeting's timestamp and the password. */
export function apopDigest(stamp: string, password: string): string {
  return createHash('md5').update(`${stamp}${password}`).digest('hex');
}

/** A SCRAM-SHA-1 client (RFC 5802), enough to log in to Dovecot. */
export function scramSha1(user: string, password: string): { initial: string; final(serverFirstB64: string): string } {
  const first = `n=${user},r=${randomBytes(12).toString('base64')}`;
  return {
    initial: b64(`n,,${first}`),
    final(serverFirstB64) {
      const serverFirst = Buffer.from(serverFirstB64, 'base64').toString();
      const f = new Map(serverFirst.split(',').map((kv) => [kv[0], kv.slice(2)]));
      const salted = pbkdf2Sync(password, Buffer.from(f.get('s') ?? '', 'base64'), Number(f.get('i')), 20, 'sha1');
      const clientKey = createHmac('sha1', salted).update('Client Key').digest();
      const noProof = `c=biws,r=${f.get('r')}`;
      const sig = createHmac('sha1', createHash('sha1').update(clientKey).digest()).update(`${first},${serverFirst},${noProof}`).digest();
      return b64(`${noProof},p=${Buffer.from(clientKey.map((b, i) => b ^ (sig[i] as number))).toString('base64')}`);
    },
  };
}
