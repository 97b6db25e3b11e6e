/**
 * The HTTP section's reference: Squid 5.7 in front of c-icap 0.5.10 (virus_scan + clamd_mod on
 * the benchmark's clamd) as its `respmod_precache` service, each in the foreground under its own
 * config in the section's temporary directory, on free loopback ports, stopped by pid
 * (tools/peers/process.ts). Squid's config is the tests' (tools/peers/squid.ts): no cache at all (`cache deny all`), so every download goes to the origin and
 * through ICAP, as avgate's do. A second Squid with the same config but no ICAP at all is the
 * plain-relay reference (startHttpPlainSquid).
 *
 * c-icap's settings for a fair and working comparison:
 * - every file type scanned and MaxObjectSize over the largest object (as bench/cicap.ts);
 * - `mode=streamed` with `SendPercentData 99` from the first byte: c-icap sends 99% of the body on
 *   as it arrives and holds the last 1% for the verdict (an infected object is cut off before its
 *   end). Checked here: c-icap's usual `mode=simple` holds the whole body back, and Squid 5.7 then
 *   stops sending a body over 64 KB to it (Squid bug 5352, docs/icap.md), so every download of
 *   100 KB and more hangs; `mode=streamed` alone still hangs from about 5 MB (0 body bytes reach
 *   the client). This is the one configuration of c-icap under which Squid 5.7 delivers 1 KB to
 *   100 MB; it does less work per download than holding the whole body back would.
 */
import { mkdir } from 'node:fs/promises';
import { ALL_FILE_TYPES, startCicap } from '../tools/peers/cicap.js';
import type { PeerProcess } from '../tools/peers/process.js';
import { startSquid } from '../tools/peers/squid.js';

export type CicapMode = 'simple' | 'streamed';

export interface BenchPeer extends PeerProcess {
  logTail(): string;
}

/**
 * c-icap for the HTTP section (service `/avscan`). `mode` defaults to streamed (see above; `simple`
 * reproduces the hang); `extra` lines are appended to c-icap.conf, for trying
 * other virus_scan settings by hand.
 */
export async function startHttpCicap(o: { dir: string; clamdSocket: string; mode?: CicapMode; threads?: number; extra?: readonly string[] }): Promise<BenchPeer> {
  await mkdir(o.dir, { recursive: true });
  return startCicap({
    dir: o.dir,
    clamdSocket: o.clamdSocket,
    mode: o.mode ?? 'streamed',
    threads: o.threads ?? 48,
    fileTypes: ALL_FILE_TYPES,
    maxObjectSize: '500M',
    extra: ['virus_scan.SendPercentData 99', 'virus_scan.StartSendPercentDataAfter 0', ...(o.extra ?? [])],
  });
}

/** Keep-alive on both sides of every bench Squid, the plain one too. */
const SQUID_KEEPALIVE = ['client_persistent_connections on', 'server_persistent_connections on'];

/** Squid in `o.dir` with c-icap's `/avscan` as its RESPMOD service (preview 1024, no cache; tools/peers/squid.ts). */
export async function startHttpSquid(o: { dir: string; icapPort: number }): Promise<BenchPeer> {
  await mkdir(o.dir, { recursive: true });
  return startSquid({
    dir: o.dir,
    icapUrl: `icap://127.0.0.1:${o.icapPort}/avscan`,
    preview: true,
    name: 'avgate-bench-squid',
    extra: [...SQUID_KEEPALIVE, 'icap_persistent_connections on'],
  });
}

/**
 * The plain-relay reference (mode `squid`): the same Squid build and config as startHttpSquid
 * (no cache, keep-alive, same origin) with ICAP off (`icap_enable off`, no service). It scans
 * nothing, so EICAR passes it; it shows what relaying every byte through a proxy process costs on
 * this machine, with nothing else done to the bytes.
 */
export async function startHttpPlainSquid(o: { dir: string }): Promise<BenchPeer> {
  await mkdir(o.dir, { recursive: true });
  return startSquid({ dir: o.dir, icapUrl: null, name: 'avgate-bench-squid-plain', extra: SQUID_KEEPALIVE });
}
