import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { access, constants, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { AvgateError } from '../../core/errors.js';
import type { Engine, EngineOption, EngineScanResult, ScanMeta } from '../types.js';
import { CLAMD_NET_DEFAULTS, ClamdEngineBase, errorResult, openFirst, parseClamdOptions, type ClamdNetSettings } from './net.js';
import { formatAddress, pathReplyVerdict } from './protocol.js';

interface FileSettings extends ClamdNetSettings {
  commDir: string | null;
}

/**
 * clamd-file: for a clamd that shares a directory with avgate rather than taking streams (or on
 * another machine with a shared mount). The object is written into `comm-dir`, clamd is asked to
 * `SCAN` that path, and the file is removed afterwards whatever happened.
 */
export class ClamdFileEngine extends ClamdEngineBase<FileSettings> implements Engine<null> {
  constructor() {
    super({ ...CLAMD_NET_DEFAULTS, commDir: null });
  }

  configure(options: readonly EngineOption[]): void {
    let commDir: string | null = null;
    for (const o of options) if (o.name === 'comm-dir') commDir = o.value;
    this.settings = { ...parseClamdOptions(options, CLAMD_NET_DEFAULTS), commDir: commDir ? resolve(commDir) : null };
  }

  info() {
    return {
      name: 'clamd-file',
      description: `ClamAV clamd by SCAN of files in ${this.settings.commDir ?? '(no comm-dir)'} via ${this.settings.addresses.map(formatAddress).join(', ') || '(no address)'}`,
    };
  }

  /** comm-dir must exist and be writable: avgate does not create it (its owner and mode are the admin's choice, shared with clamd). */
  async init(): Promise<void> {
    const dir = this.settings.commDir;
    if (!dir) throw new AvgateError('AVG_ERR_COMM_DIR', 'clamd-file: option "comm-dir" is required');
    if (this.settings.addresses.length === 0) throw new AvgateError('AVG_ERR_CONFIG', 'clamd-file: option "address" is required');
    let isDir: boolean;
    try {
      isDir = (await stat(dir)).isDirectory();
    } catch {
      throw new AvgateError('AVG_ERR_COMM_DIR', `clamd-file: comm-dir ${dir} does not exist (avgate does not create it)`);
    }
    if (!isDir) throw new AvgateError('AVG_ERR_COMM_DIR', `clamd-file: comm-dir ${dir} is not a directory`);
    try {
      await access(dir, constants.W_OK | constants.X_OK);
    } catch {
      throw new AvgateError('AVG_ERR_COMM_DIR', `clamd-file: comm-dir ${dir} is not writable by avgate`);
    }
  }

  async close(): Promise<void> {}

  // SCAN replies are short and clamd reads the file itself, so a connection per scan costs little.
  async openContext(): Promise<null> {
    return null;
  }

  async closeContext(): Promise<void> {}

  contextUsable(): boolean {
    return true;
  }

  async scan(_ctx: null, stream: Readable, meta: ScanMeta): Promise<EngineScanResult> {
    const dir = this.settings.commDir as string;
    // Random name: nothing about the object (its name may be hostile) reaches the path clamd sees.
    const path = join(dir, `avgate-${process.pid}-${randomBytes(12).toString('hex')}`);
    let bytes = 0;
    stream.on('data', (c: Buffer) => {
      bytes += c.length;
    });
    try {
      // 0644: clamd usually runs as another user and must be able to read it.
      await pipeline(stream, createWriteStream(path, { mode: 0o644, flags: 'wx' }), { signal: meta.signal });
    } catch (err) {
      await rm(path, { force: true });
      if (meta.signal.aborted) return errorResult(new AvgateError('AVG_ERR_ENGINE_TIMEOUT', 'scan timeout while writing to comm-dir'), bytes);
      return errorResult(new AvgateError('AVG_ERR_SOURCE', `writing to comm-dir failed: ${(err as Error).message}`), bytes);
    }
    try {
      const conn = await openFirst(this.settings, false, meta.signal);
      try {
        // The clamd connection speaks bytes as latin1 characters; the file system name is UTF-8.
        const wirePath = Buffer.from(path, 'utf8').toString('latin1');
        const reply = await conn.command(`SCAN ${wirePath}`, meta.signal);
        return { verdict: pathReplyVerdict(reply, wirePath, { encryptedAsSkipped: this.settings.encryptedAsSkipped }), bytes };
      } finally {
        conn.close();
      }
    } catch (err) {
      return errorResult(err, bytes);
    } finally {
      await rm(path, { force: true });
    }
  }
}

export function createClamdFileEngine(): Engine {
  return new ClamdFileEngine() as Engine;
}
