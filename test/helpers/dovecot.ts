import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freeLoopbackPort } from '../../src/core/net.js';
import { startDovecot, type Dovecot, type DovecotUser } from '../../tools/peers/dovecot.js';
import { selfSignedCert } from './tls.js';

export { dovecotAvailable } from '../../tools/peers/dovecot.js';

/**
 * A real Dovecot (POP3 + IMAP on loopback) in a fresh temporary directory that stop() removes.
 * `users` default to one user (`alice`); `deliver(user, raw)` drops a message into its maildir.
 */
export async function startTestDovecot(opts: { users?: readonly DovecotUser[]; extraConfig?: string } = {}): Promise<Dovecot> {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-dovecot-'));
  try {
    const d = await startDovecot({ dir, ...(opts.users ? { users: opts.users } : {}), ...(opts.extraConfig ? { extraConfig: opts.extraConfig } : {}) });
    return {
      ...d,
      async stop() {
        await d.stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * A test Dovecot with TLS: a self-signed certificate for localhost and 127.0.0.1 (PEM `cert`, to
 * trust as a proxy's tls-ca; made in `dir`), STARTTLS/STLS on the plain ports and an implicit-TLS
 * listener (`tlsPort`) for `protocol`.
 */
export async function startTlsDovecot(
  dir: string,
  protocol: 'pop3' | 'imap',
  opts: { users?: readonly DovecotUser[]; extraConfig?: string } = {},
): Promise<{ dovecot: Dovecot; tlsPort: number; cert: string }> {
  const { cert, key } = await selfSignedCert(dir, 'localhost');
  const tlsPort = await freeLoopbackPort();
  const dovecot = await startTestDovecot({
    ...(opts.users ? { users: opts.users } : {}),
    extraConfig: [
      'ssl = yes',
      `ssl_cert = <${cert}`,
      `ssl_key = <${key}`,
      `service ${protocol}-login {`,
      `  inet_listener ${protocol}s {`,
      '    address = 127.0.0.1',
      `    port = ${tlsPort}`,
      '  }',
      '}',
      opts.extraConfig ?? '',
    ].join('\n'),
  });
  return { dovecot, tlsPort, cert };
}
