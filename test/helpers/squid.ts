import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startSquid } from '../../tools/peers/squid.js';

export interface TestSquid {
  port: number;
  /** http://127.0.0.1:PORT — for `curl -x`. */
  proxyUrl: string;
  dir: string;
  pid: number;
  /** The last part of Squid's cache.log (for failure messages). */
  logTail(chars?: number): string;
  stop(): Promise<void>;
}

/**
 * A real Squid in the foreground (`squid -N -f CONF`) with its own config, pid file and log in a
 * fresh directory, listening on a free loopback port, using `icapUrl` as its RESPMOD service
 * (`bypass=0`: an ICAP failure is an error for the client, never an unscanned object).
 * Resolves once Squid accepts connections.
 */
export async function startTestSquid(opts: {
  /** The RESPMOD service; null = a plain relaying Squid (no ICAP). */
  icapUrl: string | null;
  preview?: boolean;
  /** More squid.conf lines, after the ones above. */
  extraConfig?: readonly string[];
  /** squid.conf lines before the default access rules (e.g. proxy authentication). */
  access?: readonly string[];
  startTimeoutMs?: number;
}): Promise<TestSquid> {
  const dir = await mkdtemp(join(tmpdir(), 'avgate-squid-'));
  try {
    const squid = await startSquid({
      dir,
      icapUrl: opts.icapUrl,
      preview: opts.preview ?? true,
      name: 'avgate-test-squid',
      extra: ['memory_pools off', ...(opts.extraConfig ?? [])],
      ...(opts.access ? { access: opts.access } : {}),
      ...(opts.startTimeoutMs ? { startTimeoutMs: opts.startTimeoutMs } : {}),
    });
    return {
      ...squid,
      proxyUrl: `http://127.0.0.1:${squid.port}`,
      dir,
      async stop() {
        await squid.stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
