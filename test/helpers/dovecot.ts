import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDovecot, type Dovecot, type DovecotUser } from '../../tools/peers/dovecot.js';

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
