/**
 * c-icap for the benchmark (launcher shared with the tests: tools/peers/cicap.ts), with settings
 * for a fair comparison:
 * - ScanFileTypes lists every group of c-icap's magic file: with the packaged list, a type the
 *   preview identifies and that is not listed (PDF, most media) is answered 204 without a scan,
 *   and the figures would measure skipping.
 * - MaxObjectSize 500M: the package's 5M would let the 1-5 MB part of the corpus through unscanned.
 * - One server process with enough threads for concurrency 16 on persistent connections.
 */
import { mkdir } from 'node:fs/promises';
import { ALL_FILE_TYPES, startCicap, type Cicap } from '../tools/peers/cicap.js';

export { rawOptions } from '../tools/peers/cicap.js';

export async function startBenchCicap(opts: { dir: string; clamdSocket: string; threads?: number }): Promise<Cicap> {
  await mkdir(opts.dir, { recursive: true });
  return startCicap({ dir: opts.dir, clamdSocket: opts.clamdSocket, fileTypes: ALL_FILE_TYPES, maxObjectSize: '500M', threads: opts.threads ?? 40 });
}
