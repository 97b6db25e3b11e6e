import { randomBytes } from 'node:crypto';
import { basename } from 'node:path';
import { Readable } from 'node:stream';
import { crc32 } from 'node:zlib';
import { zipCentralAndEnd, zipLocalHeader, type ZipEntry } from '../formats/zip-write.js';
import type { QuarantineItem } from './types.js';

/**
 * CONTRACT (implemented by the quarantine work): the item's original bytes as a ZIP archive with
 * one entry (the item's file name, or `<id>.eml` for mail), encrypted with the traditional PKWARE
 * scheme under `password` (the malware-sharing convention: "infected"), streamed.
 *
 * Layout (APPNOTE 4.3): local file header, 12-byte encryption header, the stored (method 0)
 * encrypted bytes, central directory with one entry, end of central directory. No data
 * descriptor: the CRC-32 must be in the local header and decides the encryption header's check
 * byte, so the object is read twice — once for the CRC, once to encrypt — and never held whole.
 */
export function exportZip(item: QuarantineItem, password: string): Readable {
  return Readable.from(zipChunks(item, password));
}

/** Entry name: the item's file name without any directory part or control characters. */
export function zipEntryName(item: QuarantineItem): string {
  const r = item.record;
  const fromFile = r.fileName
    ? basename(r.fileName.replace(/\\/g, '/'))
        .replace(/[\p{Cc}]/gu, '_')
        .replace(/^\.+$/, '')
    : '';
  if (fromFile) return fromFile;
  return r.source === 'smtp' || r.source === 'lmtp' || r.source === 'pop3' || r.source === 'imap' ? `${r.id}.eml` : `${r.id}.bin`;
}

const MAX_STORED = 0xffffffff - 12;

async function* zipChunks(item: QuarantineItem, password: string): AsyncGenerator<Buffer> {
  let crc = 0;
  let size = 0;
  for await (const chunk of item.open() as AsyncIterable<Buffer>) {
    crc = crc32(chunk, crc);
    size += chunk.length;
  }
  if (size > MAX_STORED) throw new Error('object too large for a ZIP without ZIP64');

  const name = Buffer.from(zipEntryName(item), 'utf8');
  const utf8 = /[^\x20-\x7e]/.test(name.toString('latin1'));
  const flags = 0x0001 | (utf8 ? 0x0800 : 0);
  const { time, date } = dosDateTime(new Date(item.record.date));

  const entry: ZipEntry = { name, flags, crc, compressedSize: size + 12, size, time, date, unixMode: 0o100600 };
  yield zipLocalHeader(entry);

  const cipher = new ZipCrypto(Buffer.from(password, 'utf8'));
  const header = randomBytes(12);
  header[11] = crc >>> 24; // the check byte readers compare after decrypting the header
  yield cipher.encrypt(header);
  let second = 0;
  let crc2 = 0;
  for await (const chunk of item.open() as AsyncIterable<Buffer>) {
    second += chunk.length;
    crc2 = crc32(chunk, crc2);
    yield cipher.encrypt(chunk);
  }
  // The object is authenticated on each read; still, the header already promised these numbers.
  if (second !== size || crc2 !== crc) throw new Error('object changed between the two reads');

  yield zipCentralAndEnd(entry);
}

function dosDateTime(d: Date): { time: number; date: number } {
  const t = Number.isNaN(d.getTime()) ? new Date() : d;
  const year = Math.min(Math.max(t.getUTCFullYear(), 1980), 2107);
  return {
    time: (t.getUTCHours() << 11) | (t.getUTCMinutes() << 5) | (t.getUTCSeconds() >> 1),
    date: ((year - 1980) << 9) | ((t.getUTCMonth() + 1) << 5) | t.getUTCDate(),
  };
}

/** The CRC-32 table: ZipCrypto's key schedule steps with it byte by byte (the data's CRC is node:zlib's). */
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** The traditional PKWARE stream cipher (APPNOTE 6.1): three 32-bit keys updated per plaintext byte. */
export class ZipCrypto {
  private k0 = 0x12345678;
  private k1 = 0x23456789;
  private k2 = 0x34567890;

  constructor(password: Uint8Array) {
    for (const b of password) this.update(b);
  }

  encrypt(plain: Uint8Array): Buffer {
    const out = Buffer.allocUnsafe(plain.length);
    for (let i = 0; i < plain.length; i++) {
      const p = plain[i]!;
      out[i] = p ^ this.streamByte();
      this.update(p);
    }
    return out;
  }

  decrypt(cipher: Uint8Array): Buffer {
    const out = Buffer.allocUnsafe(cipher.length);
    for (let i = 0; i < cipher.length; i++) {
      const p = cipher[i]! ^ this.streamByte();
      out[i] = p;
      this.update(p);
    }
    return out;
  }

  private streamByte(): number {
    const t = (this.k2 | 2) & 0xffff;
    return (Math.imul(t, t ^ 1) >>> 8) & 0xff;
  }

  private update(b: number): void {
    this.k0 = (CRC_TABLE[(this.k0 ^ b) & 0xff]! ^ (this.k0 >>> 8)) >>> 0;
    this.k1 = (Math.imul((this.k1 + (this.k0 & 0xff)) >>> 0, 134775813) + 1) >>> 0;
    this.k2 = (CRC_TABLE[(this.k2 ^ (this.k1 >>> 24)) & 0xff]! ^ (this.k2 >>> 8)) >>> 0;
  }
}
