import { crc32 } from 'node:zlib';
import { zipCentralAndEnd, zipLocalHeader, type ZipEntry } from '../../src/formats/zip-write.js';

/**
 * Builds a one-file ZIP archive (stored, no compression) in memory. With `encrypted`, the
 * general-purpose flag says the entry is encrypted, which is all clamd's AlertEncrypted looks at.
 */
export function zipOneFile(name: string, data: Buffer, options: { encrypted?: boolean } = {}): Buffer {
  const entry: ZipEntry = { name: Buffer.from(name, 'utf8'), flags: options.encrypted ? 0x0001 : 0, crc: crc32(data), compressedSize: data.length, size: data.length };
  return Buffer.concat([zipLocalHeader(entry), data, zipCentralAndEnd(entry)]);
}
